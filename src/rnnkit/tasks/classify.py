"""Many-to-one sequence classification: read a whole sequence, then name its class.

    h_1 … h_T = Recurrent(z_1 … z_T),   z_t = (x_t − μ) / σ   (per feature, training-split statistics)
    p(class | x) = softmax(W · h_T + b)

`rnnkit classify digits` reads scikit-learn's bundled 8×8 digits a row at a time (8 steps ×
8 features) or, with `--pixels`, a pixel at a time (64 steps × 1); `rnnkit classify --csv
FILE` reads any CSV of sequences + labels (format in `rnnkit.data.sequences`). Quality is
accuracy on the held-out test split, with a confusion-matrix figure.

This module also holds what the other labelled-sequence tasks (caption, memory) share:
the training flags, the run (folder, Trainer, best checkpoint) and loading a trained run.
"""

import io
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.sequences import (DIGIT_PIXELS, READINGS, LabelledSequences, load_digits_sequences, pad,
                              read_labelled_csv, read_unlabelled, split_indices)
from ..files import atomic_write_bytes, write_json
from ..metrics import accuracy, confusion_matrix
from ..models import SequenceClassifier
from ..train.checkpoint import load_checkpoint
from ..train.trainer import TrainConfig, Trainer


@dataclass
class ClassifyConfig:
    data: str = "digits"          # "digits" or the path of a CSV of sequences + labels
    reading: str = "rows"         # digits: rows (8 steps × 8) or pixels (64 steps × 1)
    features: int = 1             # CSV: values per step
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True    # on digits rows: 97.8%/97.4% test vs 94.8%/95.5% one-way (seeds 0, 1)
    pooling: str = "last"         # last | mean | max over the steps
    batch_size: int = 64

    @classmethod
    def from_dict(cls, values: dict) -> "ClassifyConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def features_per_step(self) -> int:
        return READINGS[self.reading] if self.data == "digits" else self.features


def default_train_config() -> TrainConfig:
    """Training defaults: a step budget (same seed ⇒ same numbers), chosen on the digits'
    validation split (benchmarks/RESULTS.md, section sequence-a)."""
    return TrainConfig(learning_rate=3e-3, max_steps=600, eval_every=50)


# ----------------------------------------------------------------------------- shared by the tasks

def standardize(values: torch.Tensor, lengths: torch.Tensor, mean: list, std: list) -> torch.Tensor:
    """(x − μ) / σ per feature, padded steps kept at zero."""
    valid = (torch.arange(values.shape[1]) < lengths[:, None])[..., None]
    return ((values - torch.tensor(mean)) / torch.tensor(std)) * valid


def feature_statistics(data: LabelledSequences) -> tuple[list, list]:
    """Per-feature mean and standard deviation over the valid steps (σ = 1 for a constant feature)."""
    valid = torch.arange(data.values.shape[1]) < data.lengths[:, None]
    steps = data.values[valid]
    std = steps.std(0, unbiased=False)
    return steps.mean(0).tolist(), torch.where(std > 0, std, torch.ones_like(std)).tolist()


def standardized_splits(data: LabelledSequences) -> tuple[list[LabelledSequences], list, list]:
    """The fixed train / validation / test split, standardised by the training split's (mean, std)."""
    splits = [data.subset(index) for index in split_indices(len(data.labels))]
    mean, std = feature_statistics(splits[0])
    return [replace(s, values=standardize(s.values, s.lengths, mean, std)) for s in splits], mean, std


def epoch_batch(count: int, batch_size: int, seed: int, epoch: int, index: int) -> torch.Tensor:
    """Indices of batch `index` of `epoch`: a permutation seeded by (seed, epoch), so resuming sees the same data."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[index * batch_size:(index + 1) * batch_size]


def add_training_flags(parser, defaults: TrainConfig, prefix: str) -> None:
    from ..cli import positive_float, positive_int

    loop = parser.add_argument_group("training")
    loop.add_argument("--lr", type=positive_float, default=defaults.learning_rate)
    loop.add_argument("--max-steps", type=positive_int, default=defaults.max_steps)
    loop.add_argument("--minutes", type=positive_float, default=None,
                      help="a training-time budget instead of --max-steps (not reproducible)")
    loop.add_argument("--eval-every", type=positive_int, default=defaults.eval_every)
    loop.add_argument("--patience", type=positive_int, default=defaults.patience,
                      help="stop after this many evaluations without a better validation loss")
    loop.add_argument("--seed", type=int, default=defaults.seed)
    run = parser.add_argument_group("run folder")
    run.add_argument("--runs-dir", default="runs")
    run.add_argument("--name", default=None, help=f"run folder name (default: {prefix}-<date>-<time>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def train_config_from(args, defaults: TrainConfig) -> TrainConfig:
    budget = dict(max_steps=None, max_seconds=args.minutes * 60) if args.minutes else dict(max_steps=args.max_steps)
    config = replace(defaults, learning_rate=args.lr, eval_every=args.eval_every, patience=args.patience,
                     seed=args.seed, **budget)
    config.validate()
    return config


def train_run(task, train_config: TrainConfig, run_config: dict, args, prefix: str) -> tuple[Path, dict]:
    """Train `task.model` in a new run folder; leave the model at its best validation loss."""
    from ..runs import new_run_dir

    run_dir = new_run_dir(args.runs_dir, args.name, prefix)
    write_json(run_dir / "config.json", run_config)
    summary = Trainer(task, train_config, run_dir, run_config, quiet=args.quiet).fit()
    task.model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    task.model.eval()
    return run_dir, summary


def load_trained(run_dir: Path, task: str) -> tuple[dict, dict]:
    """(run config, model state) of a trained run folder of `task` (its best checkpoint)."""
    run_dir = Path(run_dir)
    run_config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    if run_config.get("task") != task:
        raise ValueError(f"{run_dir} is not a {task} run (task {run_config.get('task')!r})")
    return run_config, load_checkpoint(run_dir / "best.pt")["model"]


def plot_confusion_matrix(counts, classes: list[str], out_png: Path, title: str) -> Path:
    """A heat map of counts[true, predicted], each cell labelled with its count."""
    from matplotlib.figure import Figure

    size = min(3 + 0.45 * len(classes), 12)
    figure = Figure(figsize=(size, size * 0.85), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues")
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes)
    axes.set_yticks(ticks, classes)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    if len(classes) <= 30:  # more cells than this cannot hold a readable number
        for (true, predicted), count in zip(((i, j) for i in ticks for j in ticks), counts.flatten()):
            if count:
                dark = count > counts.max() / 2
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if dark else "black")
    figure.colorbar(image, ax=axes, shrink=0.8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(out_png, buffer.getvalue())


# ----------------------------------------------------------------------------- the task

def build_model(config: ClassifyConfig, num_classes: int) -> SequenceClassifier:
    return SequenceClassifier(config.features_per_step, num_classes, config.hidden_size, cell=config.cell,
                              pooling=config.pooling, num_layers=config.num_layers,
                              bidirectional=config.bidirectional)


def load_data(config: ClassifyConfig) -> LabelledSequences:
    if config.data == "digits":
        return load_digits_sequences(config.reading)
    return read_labelled_csv(config.data, config.features)


class ClassifyTask:
    """Sequence classification as a task for `rnnkit.train.Trainer` (loss: mean cross-entropy)."""

    metric_names = ("accuracy",)

    def __init__(self, config: ClassifyConfig, seed: int = 0):
        self.config, self.seed = config, seed
        data = load_data(config)
        self.classes = data.classes
        (self.train, self.val, self.test), self.mean, self.std = standardized_splits(data)
        self.model = build_model(config, len(self.classes))

    def data_config(self) -> dict:
        """What predicting needs besides the model: class names and the standardisation."""
        return {"classes": self.classes, "mean": self.mean, "std": self.std}

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train.labels) / self.config.batch_size)

    def train_batch(self, epoch: int, index: int) -> LabelledSequences:
        return self.train.subset(epoch_batch(len(self.train.labels), self.config.batch_size, self.seed, epoch, index))

    def batch_tokens(self, batch: LabelledSequences) -> int:
        return int(batch.lengths.sum())

    def train_loss(self, model, batch: LabelledSequences, carry):
        return F.cross_entropy(model(batch.values, batch.lengths), batch.labels), None

    def metrics(self, loss: float) -> dict:
        return {}  # accuracy needs the predictions, not the loss: it is measured in evaluate

    def evaluate(self, model, split: LabelledSequences | None = None) -> dict:
        split = self.val if split is None else split
        logits = model(split.values, split.lengths)
        return {"loss": F.cross_entropy(logits, split.labels).item(),
                "accuracy": accuracy(logits.argmax(-1).numpy(), split.labels.numpy())}

    def after_evaluate(self, model, run_dir: Path, step: int) -> None:
        pass  # nothing to write beside the metrics

    def gradient_flow_loss(self, model):
        batch = self.val.subset(torch.arange(min(16, len(self.val.labels))))
        return F.cross_entropy(model(batch.values, batch.lengths), batch.labels)


def run_classify(args) -> None:
    from ..runs import finish_run

    if args.source and args.csv:
        raise ValueError("give `digits` or --csv FILE, not both")
    if args.pixels and args.csv:
        raise ValueError("--pixels reads the digits a pixel at a time; a --csv file sets its steps with --features")
    config = ClassifyConfig(data=args.csv or "digits", reading="pixels" if args.pixels else "rows",
                            features=args.features, cell=args.cell, hidden_size=args.hidden_size,
                            num_layers=args.layers, bidirectional=args.bidirectional, pooling=args.pooling,
                            batch_size=args.batch_size)
    train_config = train_config_from(args, default_train_config())
    torch.manual_seed(train_config.seed)
    task = ClassifyTask(config, train_config.seed)
    run_config = {"task": "classify", "classify": asdict(config), "train": asdict(train_config), **task.data_config()}
    run_dir, summary = train_run(task, train_config, run_config, args, "classify")
    with torch.no_grad():
        test = task.evaluate(task.model, task.test)
        predicted = task.model(task.test.values, task.test.lengths).argmax(-1)
    counts = confusion_matrix(predicted.numpy(), task.test.labels.numpy(), len(task.classes))
    plot_confusion_matrix(counts, task.classes, run_dir / "confusion_matrix.png",
                          f"test accuracy {test['accuracy']:.2%} ({len(task.test.labels)} sequences)")
    summary.update({"test_loss": test["loss"], "test_accuracy": test["accuracy"],
                    "test_sequences": len(task.test.labels)})
    report = finish_run(run_dir, summary)
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['stop_reason']})")
    print(f"test accuracy {test['accuracy']:.4f} on {len(task.test.labels)} sequences (best checkpoint)")
    print(f"report: {report}")


def predict_command(run_dir: Path, inputs: list[str], file: str | None) -> None:
    """Print the predicted class and its probability for each sequence, one per line."""
    run_config, state = load_trained(run_dir, "classify")
    config = ClassifyConfig.from_dict(run_config["classify"])
    sequences = read_unlabelled(inputs, file, config.features_per_step)
    if config.data == "digits":
        expected = DIGIT_PIXELS // config.features_per_step
        for i, sequence in enumerate(sequences):
            if len(sequence) != expected:
                raise ValueError(f"sequence {i + 1} has {sequence.numel()} values; a digit image has {DIGIT_PIXELS}")
    model = build_model(config, len(run_config["classes"]))
    model.load_state_dict(state)
    model.eval()
    values, lengths = pad(sequences)
    with torch.no_grad():
        probabilities = torch.softmax(model(standardize(values, lengths, run_config["mean"], run_config["std"]),
                                            lengths), dim=-1)
    for p in probabilities:
        print(f"{run_config['classes'][p.argmax()]}\t{p.max():.3f}")


def export_modules(run_dir: Path) -> tuple[dict, dict]:
    """For `rnnkit export`: the classifier, (x, lengths) -> logits, and what a consumer needs to
    feed it: the class names and the per-feature mean and std that standardise the input."""
    from ..export import classifier

    run_config, state = load_trained(run_dir, "classify")
    config = ClassifyConfig.from_dict(run_config["classify"])
    model = build_model(config, len(run_config["classes"]))
    model.load_state_dict(state)
    return {"classifier": classifier(model.eval())}, {
        "classes": run_config["classes"], "mean": run_config["mean"], "std": run_config["std"],
        "config": asdict(config)}


def add_commands(commands) -> None:
    import argparse

    from ..cells import CELLS
    from ..cli import positive_int
    from ..models import POOLINGS

    defaults = ClassifyConfig()
    parser = commands.add_parser("classify", help="train a sequence classifier (many-to-one); writes a run folder")
    parser.add_argument("source", nargs="?", choices=["digits"], default=None,
                        help="digits: scikit-learn's bundled 8×8 digits (the default without --csv)")
    data = parser.add_argument_group("data")
    data.add_argument("--csv", metavar="FILE", default=None,
                      help="a CSV of sequences + labels: label,v1,v2,… per row, --features values per step")
    data.add_argument("--features", type=positive_int, default=defaults.features, help="CSV values per step")
    data.add_argument("--pixels", action="store_true",
                      help="digits: read a pixel per step (64 × 1), not a row (8 × 8)")
    data.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=sorted(CELLS), default=defaults.cell)
    model.add_argument("--hidden-size", type=positive_int, default=defaults.hidden_size)
    model.add_argument("--layers", type=positive_int, default=defaults.num_layers)
    model.add_argument("--bidirectional", action=argparse.BooleanOptionalAction,
                       default=defaults.bidirectional)
    model.add_argument("--pooling", choices=POOLINGS, default=defaults.pooling)
    add_training_flags(parser, default_train_config(), "classify")
    parser.set_defaults(handler=run_classify)
