"""Translation with an encoder–decoder: human dates → ISO 8601, numbers ↔ English words.

The data is generated (`rnnkit.data.parallel`): every training batch is fresh, and the
validation and test sets hold dates or numbers that training never sees in any spelling.
The model (`rnnkit.models.Seq2Seq`) reads the source characters, then writes the target one
character at a time, trained with teacher forcing on the mean cross-entropy per target
character (end token included). Quality is measured on the decoded outputs:

    exact match = fraction of outputs identical to the reference
    BLEU        = corpus BLEU-4 over characters (dates, digits) or words (number words)
"""

import io
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..data.parallel import ParallelData
from ..data.text import Vocabulary
from ..metrics import bleu, exact_match
from ..models import Seq2Seq
from ..train.checkpoint import load_checkpoint
from ..train.trainer import TrainConfig

START, END = "\x02", "\x03"  # control characters never written by the generators
IGNORE = -100                # F.cross_entropy's ignore_index: target padding
ATTENTION_PNG = "attention.png"


@dataclass
class TranslateConfig:
    data: str = "dates"              # dates | numbers-to-words | words-to-numbers
    max_digits: int = 6              # numbers: 0 … 999,999
    cell: str = "gru"
    attention: str = "additive"      # additive | dot | none
    embedding_size: int = 32
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional_encoder: bool = True
    batch_size: int = 64
    val_size: int = 500              # held-out examples scored at every evaluation
    test_size: int = 1000            # held-out examples scored once, with the best checkpoint
    beam_width: int = 5              # the test set is decoded greedily and with this beam
    max_output_length: int = 100     # characters a decoder may write before it is stopped

    @classmethod
    def from_dict(cls, values: dict) -> "TranslateConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def default_train_config() -> TrainConfig:
    return TrainConfig(learning_rate=3e-3, max_steps=600, eval_every=200, gradient_flow=False)


class Translator:
    """A Seq2Seq model with the vocabularies that turn strings into its ids and back."""

    def __init__(self, config: TranslateConfig, data: ParallelData):
        self.config = config
        self.source_vocab = Vocabulary(data.source_chars)
        self.target_vocab = Vocabulary(START + END + data.target_chars)
        self.model = Seq2Seq(len(self.source_vocab), len(self.target_vocab), config.hidden_size, cell=config.cell,
                             embedding_size=config.embedding_size, num_layers=config.num_layers,
                             bidirectional_encoder=config.bidirectional_encoder,
                             attention=None if config.attention == "none" else config.attention)

    def encode_sources(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(padded source ids, lengths); a ValueError names any input the model cannot read."""
        for text in texts:
            if not text:
                raise ValueError("an input is empty: there is nothing to translate")
            unknown = self.source_vocab.unknown_chars(text)
            if unknown:
                raise ValueError(f"input {text!r} has characters outside the vocabulary: "
                                 f"{', '.join(map(repr, unknown))} (the model reads {self.source_vocab.chars!r})")
            if self.config.data == "numbers-to-words" and len(text) > self.config.max_digits:
                raise ValueError(f"input {text!r} has more than {self.config.max_digits} digits, "
                                 "the most this model was trained on (--max-digits)")
        ids = [self.source_vocab.encode(text) for text in texts]
        return pad_sequence(ids, batch_first=True), torch.tensor([len(i) for i in ids])

    def encode_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder inputs <start> y_1 … y_T, targets y_1 … y_T <end>), padded with IGNORE."""
        targets = pad_sequence([self.target_vocab.encode(text + END) for text in texts],
                               batch_first=True, padding_value=IGNORE)
        start = torch.full((len(texts), 1), self.target_vocab.ids[START])
        return torch.cat([start, targets[:, :-1].clamp(min=0)], dim=1), targets

    def batch(self, examples: list[tuple]) -> tuple[torch.Tensor, ...]:
        source, lengths = self.encode_sources([source for _, source, _ in examples])
        return (source, lengths, *self.encode_targets([target for _, _, target in examples]))

    def decode(self, ids: torch.Tensor) -> str:
        return self.target_vocab.decode(ids).split(END)[0]

    @torch.no_grad()
    def translate(self, texts: list[str], beam_width: int = 1) -> list[str]:
        self.model.eval()
        source, lengths = self.encode_sources(texts)
        written = self.model.generate(source, self.target_vocab.ids[START], self.config.max_output_length,
                                      self.target_vocab.ids[END], source_lengths=lengths, beam_width=beam_width)
        return [self.decode(row) for row in written]

    def loss(self, model, batch) -> torch.Tensor:
        source, lengths, decoder_input, targets = batch
        logits = model(source, decoder_input, source_lengths=lengths)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)

    def scores(self, examples: list[tuple], beam_width: int = 1) -> tuple[dict, list[str]]:
        """Exact match and BLEU of the decoded `examples`, and the outputs."""
        outputs = self.translate([source for _, source, _ in examples], beam_width)
        references = [target for _, _, target in examples]
        tokens = str.split if " " in self.target_vocab.chars else list
        return {"exact_match": exact_match(outputs, references),
                "bleu": bleu([tokens(o) for o in outputs], [tokens(r) for r in references])}, outputs


class TranslateTask:
    """Translation as a task for `rnnkit.train.Trainer`: generated batches, held-out scoring."""

    metric_names = ("exact_match", "bleu")

    def __init__(self, config: TranslateConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.data = ParallelData(config.data, config.max_digits)
        self.translator = Translator(config, self.data)
        self.model = self.translator.model
        # Fixed seeds: every run, whatever its --seed, is scored on the same held-out examples.
        self.val = self.data.held_out(config.val_size, seed=1)
        self.test = self.data.held_out(config.test_size, seed=2)
        self.held_out_keys = {key for key, _, _ in self.val + self.test}

    def batches_per_epoch(self) -> int:
        return 1000  # the data never runs out: an epoch is a bookkeeping unit

    def train_batch(self, epoch: int, index: int):
        rng = random.Random(f"{self.seed}-{epoch}-{index}")
        return self.translator.batch([self.data.training_pair(rng, self.held_out_keys)
                                      for _ in range(self.config.batch_size)])

    def batch_tokens(self, batch) -> int:
        return int((batch[3] != IGNORE).sum())

    def train_loss(self, model, batch, carry):
        return self.translator.loss(model, batch), None

    def metrics(self, loss: float) -> dict:
        return {}  # exact match and BLEU need decoding: validation only

    def evaluate(self, model) -> dict:
        loss = self.translator.loss(model, self.translator.batch(self.val)).item()
        return {"loss": loss, **self.translator.scores(self.val)[0]}

    def after_evaluate(self, model, run_dir: Path, step: int) -> None:
        pass


def plot_attention(translator: Translator, sources: list[str], out_png: Path) -> Path:
    """One heat map per source: attention weight a_tj of output character t on source character j."""
    from matplotlib.figure import Figure

    from ..files import atomic_write_bytes

    outputs = translator.translate(sources)
    source, lengths = translator.encode_sources(sources)
    decoder_input, _ = translator.encode_targets(outputs)
    weights = translator.model.attention_weights(source, decoder_input, lengths)
    fig = Figure(figsize=(4.5 * len(sources), 4.5), dpi=110, layout="constrained")
    for index, (text, output, ax) in enumerate(zip(sources, outputs, fig.subplots(1, len(sources), squeeze=False)[0])):
        read, written = [c if c != " " else "␣" for c in text], [*output.replace(" ", "␣"), "<end>"]
        image = ax.imshow(weights[index, :len(written), :len(text)].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(read)), read, fontsize=7)
        ax.set_yticks(range(len(written)), written, fontsize=7)
        ax.set(xlabel="source character", ylabel="output character", title=f"{text!r} → {output!r}")
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label="attention weight")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(out_png, buffer.getvalue())


def load_translator(run_dir: Path) -> Translator:
    run_dir = Path(run_dir)
    path = run_dir / "best.pt"
    payload = load_checkpoint(path if path.exists() else run_dir / "last.pt")
    run_config = payload.get("config", {})
    if run_config.get("task") != "translate":
        raise ValueError(f"{run_dir} is not a translate run (task {run_config.get('task')!r})")
    config = TranslateConfig.from_dict(run_config["translate"])
    translator = Translator(config, ParallelData(config.data, config.max_digits))
    translator.model.load_state_dict(payload["model"])
    translator.model.eval()
    return translator


def predict_command(run_dir: Path, inputs: list[str], file: str | None) -> None:
    """Print the translation of each input (or of each line of `file`), one per line."""
    if file is not None:
        try:
            inputs = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--file {file} cannot be read as UTF-8 text: {error}") from None
    if not inputs:
        raise ValueError("give inputs to translate, or --file")
    translator = load_translator(run_dir)
    for output in translator.translate(inputs, translator.config.beam_width):
        print(output)


def run_translate(args) -> None:
    from ..files import atomic_write_text, write_json
    from ..runs import finish_run, new_run_dir
    from ..train.trainer import Trainer
    from .classify import train_config_from

    data = args.data if args.data == "dates" else {"to-words": "numbers-to-words",
                                                   "to-digits": "words-to-numbers"}[args.direction]
    config = TranslateConfig(data=data, max_digits=args.max_digits, cell=args.cell, attention=args.attention,
                             embedding_size=args.embedding_size, hidden_size=args.hidden_size,
                             num_layers=args.layers, bidirectional_encoder=not args.unidirectional_encoder,
                             batch_size=args.batch_size, val_size=args.val_size, test_size=args.test_size,
                             beam_width=args.beam_width)
    train_config = train_config_from(args, default_train_config())
    torch.manual_seed(args.seed)
    task = TranslateTask(config, seed=args.seed)
    run_dir = new_run_dir(args.runs_dir, args.name, f"translate-{args.data}")
    run_config = {"task": "translate", "translate": asdict(config), "train": asdict(train_config)}
    write_json(run_dir / "config.json", run_config)
    summary = Trainer(task, train_config, run_dir, run_config, quiet=args.quiet).fit()

    translator = task.translator
    translator.model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    greedy, outputs = translator.scores(task.test)
    beam, _ = translator.scores(task.test, config.beam_width)
    summary.update({f"test_{name}_greedy": value for name, value in greedy.items()})
    summary.update({f"test_{name}_beam{config.beam_width}": value for name, value in beam.items()})
    examples = "\n".join(f"{source}  →  {output}" + ("" if output == target else f"   (expected {target})")
                         for (_, source, target), output in zip(task.test[:20], outputs))
    atomic_write_text(run_dir / "samples.txt", f"=== test examples ===\n{examples}\n")
    if translator.model.decoder.attention is not None:
        plot_attention(translator, [source for _, source, _ in task.test[:3]], run_dir / ATTENTION_PNG)
    report = finish_run(run_dir, summary)
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['stop_reason']})")
    print(f"test ({len(task.test)} held-out): exact match {greedy['exact_match']:.2%} greedy, "
          f"{beam['exact_match']:.2%} beam {config.beam_width};  BLEU {greedy['bleu']:.4f} greedy, "
          f"{beam['bleu']:.4f} beam {config.beam_width}")
    print(f"report: {report}")


def export_modules(run_dir: Path) -> tuple[dict, dict]:
    """For `rnnkit export`: "encoder" (source, source_lengths) -> the decoder's initial state
    (and the memory it attends to), "decoder" one character at a time; plus both
    vocabularies, the start and end characters and the longest output."""
    from ..export import seq2seq

    translator = load_translator(run_dir)
    return seq2seq(translator.model), {
        "source_vocab": translator.source_vocab.chars, "target_vocab": translator.target_vocab.chars,
        "start": START, "end": END, "max_output_length": translator.config.max_output_length}


def add_commands(commands) -> None:
    from ..cells import CELLS
    from ..cli import positive_int
    from .classify import add_training_flags

    config, train = TranslateConfig(), default_train_config()
    parser = commands.add_parser("translate", help="train an encoder-decoder on generated parallel text")
    parser.add_argument("data", choices=["dates", "numbers"],
                        help="dates: human spellings -> ISO 8601; numbers: digits <-> English words")
    parser.add_argument("--direction", choices=["to-words", "to-digits"], default="to-words",
                        help="numbers: digits -> words, or words -> digits")
    parser.add_argument("--max-digits", type=positive_int, default=config.max_digits, help="numbers: up to 9")
    parser.add_argument("--cell", choices=sorted(CELLS), default=config.cell)
    parser.add_argument("--attention", choices=["additive", "dot", "none"], default=config.attention)
    parser.add_argument("--embedding-size", type=positive_int, default=config.embedding_size)
    parser.add_argument("--hidden-size", type=positive_int, default=config.hidden_size)
    parser.add_argument("--layers", type=positive_int, default=config.num_layers)
    parser.add_argument("--unidirectional-encoder", action="store_true")
    parser.add_argument("--batch-size", type=positive_int, default=config.batch_size)
    parser.add_argument("--val-size", type=positive_int, default=config.val_size, help="held-out examples")
    parser.add_argument("--test-size", type=positive_int, default=config.test_size, help="held-out examples")
    parser.add_argument("--beam-width", type=positive_int, default=config.beam_width,
                        help="beam for the test set (also decoded greedily) and for `rnnkit predict`")
    add_training_flags(parser, train, "translate-<data>")
    parser.set_defaults(handler=run_translate)
