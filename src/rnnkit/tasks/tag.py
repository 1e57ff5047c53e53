"""Tagging: label every character of Python source with its token type, as Python's own
`tokenize` module reads it.

The data is CPython's standard library: each module is tokenized, and every character gets
the type of the token it lies in (NAME, OP, NUMBER, STRING, COMMENT, NEWLINE, NL, INDENT),
or "whitespace" when it lies in none (spaces between tokens, a dedented line's indentation,
line continuations). Whole modules are held out for validation and test. The model
(`rnnkit.models.SequenceModel`) learns on windows of characters cut at random from the
training modules, and is scored on each held-out module read whole, as one sequence:

    h_t      = Recurrent(x_1 … x_T)_t       (both directions unless --unidirectional)
    p(tag_t) = softmax(W h_t + b),    loss = mean cross-entropy per character

Reading the future helps: whether the spaces that open a line are an INDENT depends on
what follows them, and the "r" of r"…" is STRING only because a quote comes next. Quality
is the per-character accuracy on the held-out modules.
"""

import io
import random
import sysconfig
import tokenize
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.text import Vocabulary
from ..metrics import accuracy, confusion_matrix
from ..models import SequenceModel
from ..train.checkpoint import load_checkpoint
from ..train.trainer import TrainConfig

TAGS = ("whitespace", "NAME", "OP", "NUMBER", "STRING", "COMMENT", "NEWLINE", "NL", "INDENT")
TAG_LETTERS = "_NO9S#$n>"    # one letter per tag, to print a tag under each character
# Python 3.12 splits f-strings into these tokens (with NAME/OP inside the braces); earlier
# versions, and this task on every version, call the quoted text STRING.
STRING_PARTS = {"FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"}
CONFUSION_PNG = "confusion.png"
MODULE_CHARS = 20_000  # a module contributes its first lines up to this many characters: many modules, none dominant


@dataclass
class TagConfig:
    max_chars: int = 1_000_000       # standard-library source to tokenize (modules drawn at random)
    cell: str = "lstm"
    bidirectional: bool = True
    embedding_size: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    batch_size: int = 32
    window: int = 200                # characters per training sequence

    @classmethod
    def from_dict(cls, values: dict) -> "TagConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def default_train_config() -> TrainConfig:
    return TrainConfig(learning_rate=1e-2, max_steps=1000, eval_every=250)


def token_tags(source: str) -> np.ndarray:
    """The tag id (index into TAGS) of every character of `source`; ValueError if it does
    not tokenize."""
    line_starts = np.cumsum([0] + [len(line) + 1 for line in source.split("\n")])
    tags = np.zeros(len(source), dtype=np.int64)  # whitespace unless a token covers it
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            name = tokenize.tok_name[token.type]
            name = "STRING" if name in STRING_PARTS else name
            if name in TAGS:
                start = line_starts[token.start[0] - 1] + token.start[1]
                tags[start:line_starts[token.end[0] - 1] + token.end[1]] = TAGS.index(name)
            elif token.string:
                raise ValueError(f"token {name} {token.string!r} at line {token.start[0]}")
    except (tokenize.TokenError, SyntaxError) as error:
        raise ValueError(f"the source does not tokenize: {error}") from None
    return tags


def stdlib_modules(max_chars: int) -> list[tuple[str, np.ndarray]]:
    """(text, tags) of standard-library modules in a fixed random order, until max_chars; each
    module tokenized whole, then cut after its last line within MODULE_CHARS."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    random.Random(0).shuffle(paths)
    modules, total = [], 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            tags = token_tags(text)
        except (UnicodeDecodeError, ValueError):
            continue  # a latin-1 module or one tokenize rejects: there are plenty of others
        cut = text.rfind("\n", 0, MODULE_CHARS) + 1 if len(text) > MODULE_CHARS else len(text)
        modules.append((text[:cut], tags[:cut]))
        total += cut
        if total >= max_chars:
            break
    return modules


class TagTask:
    """Per-character tagging as a task for `rnnkit.train.Trainer`."""

    metric_names = ("accuracy",)

    def __init__(self, config: TagConfig, seed: int = 0):
        self.config, self.seed = config, seed
        modules = stdlib_modules(config.max_chars)
        if len(modules) < 3:
            raise ValueError(f"max_chars={config.max_chars} gives {len(modules)} modules; "
                             "tagging needs at least 3 (train, validation, test)")
        self.vocab = Vocabulary.from_text("".join(text for text, _ in modules))
        # Every 20th module is validation, the next one test: held-out modules, spread over the sample.
        parts = {"train": [], "val": [], "test": []}
        for index, module in enumerate(modules):
            parts["val" if index % 20 == 1 else "test" if index % 20 == 2 else "train"].append(module)
        self.train_ids = self.vocab.encode("".join(text for text, _ in parts["train"]))
        self.train_tags = torch.from_numpy(np.concatenate([tags for _, tags in parts["train"]]))
        self.held_out = {name: [(self.vocab.encode(text), torch.from_numpy(tags)) for text, tags in parts[name]]
                         for name in ("val", "test")}
        self.model = build_model(config, len(self.vocab))

    def batches_per_epoch(self) -> int:
        return max(1, len(self.train_ids) // (self.config.batch_size * self.config.window))

    def train_batch(self, epoch: int, index: int):
        """`batch_size` windows starting at random characters (seeded by epoch and index)."""
        # A tuple of ints hashes the same in every process (only str hashing is salted).
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, index)) % 2 ** 62)
        starts = torch.randint(0, len(self.train_ids) - self.config.window, (self.config.batch_size,),
                               generator=generator)
        rows = starts[:, None] + torch.arange(self.config.window)
        return self.train_ids[rows], self.train_tags[rows]

    def batch_tokens(self, batch) -> int:
        return batch[1].numel()

    def train_loss(self, model, batch, carry):
        ids, tags = batch
        return F.cross_entropy(model(ids)[0].flatten(0, 1), tags.flatten()), None

    def metrics(self, loss: float) -> dict:
        return {}  # accuracy needs the predictions: validation only

    def predictions(self, model, part: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(predicted tags, true tags, mean loss per character) over the part's modules, each
        read whole."""
        predicted, total = [], 0.0
        with torch.no_grad():
            for ids, tags in self.held_out[part]:
                logits = model(ids[None])[0][0]
                total += F.cross_entropy(logits, tags, reduction="sum").item()
                predicted.append(logits.argmax(-1))
        target = torch.cat([tags for _, tags in self.held_out[part]])
        return torch.cat(predicted).numpy(), target.numpy(), total / len(target)

    def evaluate(self, model) -> dict:
        predicted, target, loss = self.predictions(model, "val")
        return {"loss": loss, "accuracy": accuracy(predicted, target)}

    def after_evaluate(self, model, run_dir: Path, step: int) -> None:
        pass

    def gradient_flow_loss(self, model):
        ids, tags = (part[:self.config.window] for part in self.held_out["val"][0])
        return F.cross_entropy(model(ids[None])[0][0], tags)


def build_model(config: TagConfig, vocab_size: int) -> SequenceModel:
    return SequenceModel(config.embedding_size, len(TAGS), config.hidden_size, cell=config.cell,
                         vocab_size=vocab_size, num_layers=config.num_layers, bidirectional=config.bidirectional)


def plot_confusion(counts: np.ndarray, out_png: Path) -> Path:
    """Row-normalised confusion matrix: the fraction of each true tag given each predicted tag."""
    from matplotlib.figure import Figure

    from ..files import atomic_write_bytes

    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(7, 6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), rate in np.ndenumerate(rates):
        if counts[i, j]:
            ax.text(j, i, f"{rate:.3f}"[1:] if rate < 1 else "1", ha="center", va="center", fontsize=7,
                    color="white" if rate > 0.5 else "black")
    ax.set_xticks(range(len(TAGS)), TAGS, rotation=45, ha="right")
    ax.set_yticks(range(len(TAGS)), [f"{tag} ({n})" for tag, n in zip(TAGS, counts.sum(1))])
    ax.set(xlabel="predicted tag", ylabel="true tag (characters)", title="test characters by true and predicted tag")
    fig.colorbar(image, ax=ax, label="fraction of the true tag")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(out_png, buffer.getvalue())


def tag_text(model, vocab: Vocabulary, text: str) -> str:
    """One tag letter (TAG_LETTERS) per character of `text`."""
    if not text:
        raise ValueError("an input is empty: there is nothing to tag")
    unknown = vocab.unknown_chars(text)
    if unknown:
        raise ValueError(f"input has characters outside the vocabulary: {', '.join(map(repr, unknown[:10]))}")
    with torch.no_grad():
        predicted = model(vocab.encode(text)[None])[0][0].argmax(-1)
    return "".join(TAG_LETTERS[i] for i in predicted)


def show_tags(text: str, letters: str) -> str:
    """Each line of `text`, then its tags under it (the newline's tag at the line's end)."""
    shown, start = [], 0
    for line in text.split("\n"):
        end = start + len(line) + (start + len(line) < len(text))
        shown += [line, letters[start:end]]
        start = end
    return "\n".join(shown[:-2] if text.endswith("\n") else shown)


def load_tagger(run_dir: Path) -> tuple[SequenceModel, Vocabulary]:
    run_dir = Path(run_dir)
    path = run_dir / "best.pt"
    payload = load_checkpoint(path if path.exists() else run_dir / "last.pt")
    run_config = payload.get("config", {})
    if run_config.get("task") != "tag":
        raise ValueError(f"{run_dir} is not a tag run (task {run_config.get('task')!r})")
    vocab = Vocabulary.from_json(run_config["vocab"])
    model = build_model(TagConfig.from_dict(run_config["tag"]), len(vocab))
    model.load_state_dict(payload["model"])
    return model.eval(), vocab


def predict_command(run_dir: Path, inputs: list[str], file: str | None) -> None:
    """Print each input (or the whole of `file`, read as one text) line by line, each line
    followed by its tags: _ whitespace, N NAME, O OP, 9 NUMBER, S STRING, # COMMENT,
    $ NEWLINE, n NL, > INDENT."""
    if file is not None:
        try:
            inputs = [Path(file).read_text(encoding="utf-8")]
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--file {file} cannot be read as UTF-8 text: {error}") from None
    if not inputs:
        raise ValueError("give source lines to tag, or --file")
    model, vocab = load_tagger(run_dir)
    for text in inputs:
        print(show_tags(text, tag_text(model, vocab, text)))


def run_tag(args) -> None:
    from ..files import atomic_write_text, write_json
    from ..runs import finish_run, new_run_dir
    from ..train.trainer import Trainer
    from .classify import train_config_from

    config = TagConfig(max_chars=args.max_chars, cell=args.cell, bidirectional=not args.unidirectional,
                       embedding_size=args.embedding_size, hidden_size=args.hidden_size, num_layers=args.layers,
                       batch_size=args.batch_size, window=args.window)
    train_config = train_config_from(args, default_train_config())
    torch.manual_seed(args.seed)
    task = TagTask(config, seed=args.seed)
    run_dir = new_run_dir(args.runs_dir, args.name, "tag-pytokens")
    run_config = {"task": "tag", "tag": asdict(config), "train": asdict(train_config), "vocab": task.vocab.to_json()}
    write_json(run_dir / "config.json", run_config)
    summary = Trainer(task, train_config, run_dir, run_config, quiet=args.quiet).fit()

    task.model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    predicted, target, loss = task.predictions(task.model, "test")
    counts = confusion_matrix(predicted, target, len(TAGS))
    summary.update({"test_loss": loss, "test_accuracy": accuracy(predicted, target), "test_characters": len(target),
                    **{f"test_accuracy_{tag}": counts[i, i] / max(counts[i].sum(), 1) for i, tag in enumerate(TAGS)}})
    plot_confusion(counts, run_dir / CONFUSION_PNG)
    sample = task.vocab.decode(task.held_out["test"][0][0][:600])
    legend = " ".join(f"{letter} {tag}" for letter, tag in zip(TAG_LETTERS, TAGS))
    tagged = show_tags(sample, tag_text(task.model, task.vocab, sample))
    atomic_write_text(run_dir / "samples.txt", f"=== test text, tags under each line ({legend}) ===\n{tagged}\n")
    report = finish_run(run_dir, summary)
    direction = "unidirectional" if args.unidirectional else "bidirectional"
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['stop_reason']})")
    print(f"test per-character accuracy ({direction} {config.cell}, {len(target)} characters of held-out modules): "
          f"{summary['test_accuracy']:.2%}")
    print(f"report: {report}")


def export_modules(run_dir: Path) -> tuple[dict, dict]:
    """For `rnnkit export`: the tagger, (x, state…) -> (tag logits, state…); the vocabulary,
    the tag names and the letters `rnnkit predict` prints for them."""
    from ..export import sequence_model

    model, vocab = load_tagger(run_dir)
    return {"tagger": sequence_model(model)}, {"vocab": vocab.chars, "tags": list(TAGS), "tag_letters": TAG_LETTERS}


def add_commands(commands) -> None:
    from ..cells import CELLS
    from ..cli import positive_int
    from .classify import add_training_flags

    config, train = TagConfig(), default_train_config()
    parser = commands.add_parser("tag", help="train a per-character tagger (Python token types)")
    parser.add_argument("data", choices=["pytokens"],
                        help="pytokens: CPython standard-library source, tagged by the tokenize module")
    parser.add_argument("--max-chars", type=positive_int, default=config.max_chars, help="source characters to use")
    parser.add_argument("--unidirectional", action="store_true", help="read left to right only (for comparison)")
    parser.add_argument("--cell", choices=sorted(CELLS), default=config.cell)
    parser.add_argument("--embedding-size", type=positive_int, default=config.embedding_size)
    parser.add_argument("--hidden-size", type=positive_int, default=config.hidden_size)
    parser.add_argument("--layers", type=positive_int, default=config.num_layers)
    parser.add_argument("--batch-size", type=positive_int, default=config.batch_size)
    parser.add_argument("--window", type=positive_int, default=config.window, help="characters per sequence")
    add_training_flags(parser, train, "tag-pytokens")
    parser.set_defaults(handler=run_tag)
