"""One-to-many description: look at an 8×8 digit, then write its English name letter by letter.

    v            = Encoder(image rows r_1 … r_8)                 (a Recurrent layer's last output)
    s_0          = tanh(W_c v + b_c)                             (the decoder's initial state)
    y_1 … y_T    = Decoder(s_0, ^ y_1 … y_{T−1}),  ending with $  ("seven$")

Training is teacher-forced cross-entropy per character; quality is the fraction of
held-out images whose greedy caption is exactly the digit's name. The images and their
train/validation/test split are `rnnkit classify digits`'s.
"""

import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sequences import DIGIT_PIXELS, READINGS, load_digits_sequences, read_unlabelled
from ..files import atomic_write_bytes
from ..metrics import exact_match
from ..models import ConditionedGenerator, last_output
from ..recurrent import Recurrent
from ..train.trainer import TrainConfig
from .classify import (add_training_flags, epoch_batch, load_trained, standardize, standardized_splits,
                       train_config_from, train_run)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
START, END = "^", "$"
ALPHABET = START + END + "".join(sorted(set("".join(WORDS))))
IGNORE = -100  # target id of the steps after a caption's end: no loss there


@dataclass
class CaptionConfig:
    cell: str = "gru"
    encoder_size: int = 128
    bidirectional_encoder: bool = True
    hidden_size: int = 128        # decoder
    embedding_size: int = 16      # decoder's character embedding
    batch_size: int = 64
    max_length: int = 8           # characters a caption may have, $ included

    @classmethod
    def from_dict(cls, values: dict) -> "CaptionConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def default_train_config() -> TrainConfig:
    """Training defaults, chosen on the validation split (benchmarks/RESULTS.md, section sequence-a)."""
    return TrainConfig(learning_rate=3e-3, max_steps=600, eval_every=50)


def encode(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text]


def decode(ids) -> str:
    """The caption written by `ids`: the characters before the first $."""
    text = "".join(ALPHABET[i] for i in ids)
    return text.split(END)[0]


def caption_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs "^word" (padded with $) and targets "word$" (padded with IGNORE), one row per digit."""
    width = max(map(len, WORDS)) + 1
    inputs = torch.full((len(WORDS), width), ALPHABET.index(END))
    targets = torch.full((len(WORDS), width), IGNORE)
    for digit, word in enumerate(WORDS):
        ids = encode(START + word + END)
        inputs[digit, :len(ids) - 1] = torch.tensor(ids[:-1])
        targets[digit, :len(ids) - 1] = torch.tensor(ids[1:])
    return inputs, targets


class ImageCaptioner(nn.Module):
    """A recurrent image encoder whose summary conditions a character decoder.

        h_1 … h_8 = Recurrent(r_1 … r_8)            (rows of the standardised image)
        v         = [h→_8 ; h←_1]                   (both directions' final outputs)
        captions  = ConditionedGenerator(v)         (s_0 = tanh(W_c v + b_c), then y_t fed back)

    forward(images, tokens) -> logits (batch, time, len(ALPHABET)), teacher-forced;
    caption(images) -> list of strings, greedy.
    """

    def __init__(self, config: CaptionConfig):
        super().__init__()
        self.max_length = config.max_length
        self.encoder = Recurrent(config.cell, READINGS["rows"], config.encoder_size,
                                 bidirectional=config.bidirectional_encoder)
        self.generator = ConditionedGenerator(self.encoder.output_size, len(ALPHABET), config.hidden_size,
                                              cell=config.cell, embedding_size=config.embedding_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(images)
        return last_output(state, self.encoder.num_directions)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encode(images), tokens)

    @torch.no_grad()
    def caption(self, images: torch.Tensor) -> list[str]:
        tokens = self.generator.generate(self.encode(images), ALPHABET.index(START), self.max_length,
                                         ALPHABET.index(END))
        return [decode(row.tolist()) for row in tokens]


class CaptionTask:
    """Digit captioning as a task for `rnnkit.train.Trainer` (loss: cross-entropy per character)."""

    metric_names = ("exact_match",)

    def __init__(self, config: CaptionConfig, seed: int = 0):
        self.config, self.seed = config, seed
        (self.train, self.val, self.test), self.mean, self.std = standardized_splits(load_digits_sequences("rows"))
        self.inputs, self.targets = caption_tokens()
        self.model = ImageCaptioner(config)

    def data_config(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train.labels) / self.config.batch_size)

    def train_batch(self, epoch: int, index: int):
        return self.train.subset(epoch_batch(len(self.train.labels), self.config.batch_size, self.seed, epoch, index))

    def batch_tokens(self, batch) -> int:
        return int((self.targets[batch.labels] != IGNORE).sum())

    def loss(self, model, batch) -> torch.Tensor:
        logits = model(batch.values, self.inputs[batch.labels])
        return F.cross_entropy(logits.flatten(0, 1), self.targets[batch.labels].flatten(), ignore_index=IGNORE)

    def train_loss(self, model, batch, carry):
        return self.loss(model, batch), None

    def metrics(self, loss: float) -> dict:
        return {}  # exact match needs generated captions: it is measured in evaluate

    def evaluate(self, model, split=None) -> dict:
        split = self.val if split is None else split
        captions = model.caption(split.values)
        return {"loss": self.loss(model, split).item(),
                "exact_match": exact_match(captions, [WORDS[d] for d in split.labels])}

    def after_evaluate(self, model, run_dir: Path, step: int) -> None:
        pass  # nothing to write beside the metrics

    def gradient_flow_loss(self, model):
        return self.loss(model, self.val.subset(torch.arange(16)))


def plot_captions(images, captions: list[str], truths: list[str], out_png: Path) -> Path:
    """A grid of images titled with their captions; a wrong caption in red, with the truth."""
    from matplotlib.figure import Figure

    columns = 8
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(columns * 1.2, rows * 1.45), dpi=110, layout="constrained")
    for i, (image, caption, truth) in enumerate(zip(images, captions, truths)):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(image, cmap="gray_r")
        axes.set_axis_off()
        wrong = caption != truth
        axes.set_title(f"{caption}" + (f"\n({truth})" if wrong else ""), fontsize=9,
                       color="tab:red" if wrong else "black")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(out_png, buffer.getvalue())


def run_caption(args) -> None:
    from ..runs import finish_run

    config = CaptionConfig(cell=args.cell, encoder_size=args.encoder_size, hidden_size=args.hidden_size,
                           embedding_size=args.embedding_size, batch_size=args.batch_size)
    train_config = train_config_from(args, default_train_config())
    torch.manual_seed(train_config.seed)
    task = CaptionTask(config, train_config.seed)
    run_config = {"task": "caption", "caption": asdict(config), "train": asdict(train_config), **task.data_config()}
    run_dir, summary = train_run(task, train_config, run_config, args, "caption")
    with torch.no_grad():
        test = task.evaluate(task.model, task.test)
        captions = task.model.caption(task.test.values)
    truths = [WORDS[d] for d in task.test.labels]
    # The wrong captions first, so the figure shows the errors whatever their number.
    order = sorted(range(len(truths)), key=lambda i: captions[i] == truths[i])[:32]
    raw = task.test.values * torch.tensor(task.std) + torch.tensor(task.mean)
    plot_captions(raw[order].numpy(), [captions[i] for i in order], [truths[i] for i in order],
                  run_dir / "test_captions.png")
    summary.update({"test_loss": test["loss"], "test_exact_match": test["exact_match"],
                    "test_images": len(truths)})
    report = finish_run(run_dir, summary)
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['stop_reason']})")
    print(f"test exact captions {test['exact_match']:.4f} on {len(truths)} images (best checkpoint)")
    print(f"report: {report}")


def predict_command(run_dir: Path, inputs: list[str], file: str | None) -> None:
    """Print the caption of each 8×8 image given as 64 comma-separated pixel values (0…16), one per line."""
    run_config, state = load_trained(run_dir, "caption")
    sequences = read_unlabelled(inputs, file, READINGS["rows"])
    for i, sequence in enumerate(sequences):
        if sequence.numel() != DIGIT_PIXELS:
            raise ValueError(f"image {i + 1} has {sequence.numel()} values; an 8×8 image has {DIGIT_PIXELS}")
    model = ImageCaptioner(CaptionConfig.from_dict(run_config["caption"]))
    model.load_state_dict(state)
    model.eval()
    images = torch.stack(sequences)
    lengths = torch.full((len(images),), images.shape[1])
    for caption in model.caption(standardize(images, lengths, run_config["mean"], run_config["std"])):
        print(caption)


def export_modules(run_dir: Path) -> tuple[dict, dict]:
    """For `rnnkit export`: "encoder" (standardised image rows) -> condition, "bridge"
    (condition) -> the decoder's initial state, "decoder" one character at a time; plus the
    alphabet, its start and end characters and the standardisation."""
    from ..export import conditioned_generator, graph

    run_config, state = load_trained(run_dir, "caption")
    model = ImageCaptioner(CaptionConfig.from_dict(run_config["caption"]))
    model.load_state_dict(state)
    model.eval()
    images = torch.randn(2, DIGIT_PIXELS // READINGS["rows"], READINGS["rows"])
    encoder = graph(model, "encode", {"images": images}, ["condition"],
                    {"images": {0: "batch"}, "condition": {0: "batch"}})
    return {"encoder": encoder, **conditioned_generator(model.generator)}, {
        "alphabet": ALPHABET, "start": START, "end": END, "mean": run_config["mean"], "std": run_config["std"],
        "max_length": model.max_length}


def add_commands(commands) -> None:
    from ..cells import CELLS
    from ..cli import positive_int

    defaults = CaptionConfig()
    parser = commands.add_parser("caption", help="train an image-to-words model (one-to-many); writes a run folder")
    parser.add_argument("source", choices=["digits"], help="digits: scikit-learn's bundled 8×8 digits")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=sorted(CELLS), default=defaults.cell)
    model.add_argument("--encoder-size", type=positive_int, default=defaults.encoder_size)
    model.add_argument("--hidden-size", type=positive_int, default=defaults.hidden_size, help="decoder size")
    model.add_argument("--embedding-size", type=positive_int, default=defaults.embedding_size)
    model.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    add_training_flags(parser, default_train_config(), "caption")
    parser.set_defaults(handler=run_caption)
