"""Generated parallel text for translation: human-written dates → ISO 8601, numbers ↔ English words.

Every data set is a function `pair(rng) -> (key, source, target)` drawing one example from a
`random.Random`; `key` names what the example is about (the date, the number), so a held-out
set of keys can be kept out of training: the model is tested on dates and numbers it has never
seen in any spelling. Numbers below 100 are never held out: their words ("seven",
"forty") are the vocabulary every larger number is built from, so no model could spell one it
never saw. The source and target alphabets are fixed by the generators (not by a
sample), so a saved model knows exactly which characters it can read.
"""

import datetime
import random

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DAY, LAST_DAY = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# Each separator fixes one field order, so no spelling is ambiguous: "03.04.2021" is day first
# (European), "4/3/2021" month first (US), "2021/04/03" year first.
DATE_FORMATS = (
    lambda d, month, weekday: f"{d.day} {month} {d.year}",                     # 3 March 2021
    lambda d, month, weekday: f"{d.day:02d} {month[:3]} {d.year}",             # 03 Mar 2021
    lambda d, month, weekday: f"{month} {d.day}, {d.year}",                    # March 3, 2021
    lambda d, month, weekday: f"{month[:3]} {d.day} {d.year}",                 # Mar 3 2021
    lambda d, month, weekday: f"{weekday}, {month} {d.day}, {d.year}",         # Wednesday, March 3, 2021
    lambda d, month, weekday: f"{weekday[:3]} {d.day} {month[:3]} {d.year}",   # Wed 3 Mar 2021
    lambda d, month, weekday: f"{_ordinal(d.day)} of {month} {d.year}",        # 3rd of March 2021
    lambda d, month, weekday: f"{month} {_ordinal(d.day)}, {d.year}",          # March 3rd, 2021
    lambda d, month, weekday: f"{d.day:02d}.{d.month:02d}.{d.year}",           # 03.03.2021
    lambda d, month, weekday: f"{d.month}/{d.day}/{d.year}",                   # 3/3/2021
    lambda d, month, weekday: f"{d.year}/{d.month:02d}/{d.day:02d}",           # 2021/03/03
    lambda d, month, weekday: f"{d.day:02d}-{month[:3].upper()}-{d.year}",     # 03-MAR-2021
    lambda d, month, weekday: f"{d.day} {month.lower()} {d.year}",             # 3 march 2021
    lambda d, month, weekday: f"{month.upper()} {d.day}, {d.year}",            # MARCH 3, 2021
)


def write_date(date: datetime.date, style: int) -> str:
    """`date` in human spelling number `style` (0 … len(DATE_FORMATS) − 1)."""
    return DATE_FORMATS[style](date, MONTHS[date.month - 1], WEEKDAYS[date.weekday()])


def date_pair(rng: random.Random) -> tuple[datetime.date, str, str]:
    """A uniformly drawn day in 1900–2099 in a uniformly drawn spelling, and its ISO 8601 form."""
    date = FIRST_DAY + datetime.timedelta(days=rng.randrange((LAST_DAY - FIRST_DAY).days + 1))
    return date, write_date(date, rng.randrange(len(DATE_FORMATS))), date.isoformat()


ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
SCALES = ((1_000_000, "million"), (1_000, "thousand"))


def number_words(n: int) -> str:
    """American English without "and": 342105 → "three hundred forty-two thousand one hundred five"."""
    if not 0 <= n < 1_000_000_000:
        raise ValueError(f"number_words covers 0 … 999,999,999, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        return f"{ONES[n // 100]} hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for scale, name in SCALES:
        if n >= scale:
            rest = n % scale
            return f"{number_words(n // scale)} {name}" + ("" if rest == 0 else " " + number_words(rest))


def number_pair(rng: random.Random, max_digits: int, to_words: bool) -> tuple[int, str, str]:
    """A number with a uniformly drawn count of digits (1 … max_digits), so small numbers are as
    common as large ones, as (n, digits, words) or (n, words, digits)."""
    digits = rng.randint(1, max_digits)
    n = rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits)
    written = (str(n), number_words(n))
    return (n, *written) if to_words else (n, *written[::-1])


class ParallelData:
    """One generated data set: `pair(rng) -> (key, source, target)` and both alphabets.

    `held_out(count, seed)` draws `count` examples with distinct keys that `can_hold_out`;
    `training_pair(rng, excluded)` draws examples whose key is not in `excluded` (the held-out keys).
    """

    def __init__(self, name: str, max_digits: int = 6):
        if name == "dates":
            self.pair = date_pair
            self.can_hold_out = lambda date: True
            # Every spelling of every day of a leap year uses every character any date can.
            year = [datetime.date(2000, 1, 1) + datetime.timedelta(days=i) for i in range(366)]
            self.source_chars = "".join(write_date(d, s) for d in year for s in range(len(DATE_FORMATS)))
            self.target_chars = "0123456789-"
        elif name in ("numbers-to-words", "words-to-numbers"):
            if not 1 <= max_digits <= 9:
                raise ValueError(f"max_digits must be in 1 … 9, got {max_digits}")
            to_words = name == "numbers-to-words"
            self.pair = lambda rng: number_pair(rng, max_digits, to_words)
            self.can_hold_out = lambda n: n >= 100
            words = " ".join([*ONES, *TENS, "hundred", "thousand", "million", "-"])
            self.source_chars, self.target_chars = ("0123456789", words) if to_words else (words, "0123456789")
        else:
            raise ValueError(f"data set must be dates, numbers-to-words or words-to-numbers, got {name!r}")
        self.source_chars = "".join(sorted(set(self.source_chars)))
        self.target_chars = "".join(sorted(set(self.target_chars)))

    def held_out(self, count: int, seed: int) -> list[tuple]:
        rng, examples, keys = random.Random(seed), [], set()
        for _ in range(100 * count):
            key, source, target = self.pair(rng)
            if key not in keys and self.can_hold_out(key):
                keys.add(key)
                examples.append((key, source, target))
                if len(examples) == count:
                    return examples
        raise ValueError(f"could not draw {count} distinct held-out examples: the data set is too small")

    def training_pair(self, rng: random.Random, excluded: set) -> tuple:
        while True:
            example = self.pair(rng)
            if example[0] not in excluded:
                return example
