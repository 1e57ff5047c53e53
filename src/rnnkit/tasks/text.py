"""Character-level language modelling: learn p(next character | every character so far).

The corpus is one long stream, cut into `batch_size` parallel streams and read in chunks of
`bptt` characters; the recurrent state is carried from chunk to chunk (truncated BPTT), so
the model sees context longer than a chunk. Quality is bits per character on held-out text:

    bpc = (1/N) Σ_t −log₂ p(c_{t+1} | c_1 … c_t)   (= mean cross-entropy in nats / ln 2)
"""

import functools
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.text import StreamBatches, Vocabulary, load_corpus, split_text
from ..models import SequenceModel
from ..train.checkpoint import load_checkpoint
from ..train.trainer import TrainConfig

# Characters written per call of the model's writing loop: one draw of noise and one call per
# chunk, and how much streamed output (`generate`'s on_text) arrives at once.
WRITE_CHUNK = 256


@dataclass
class TextConfig:
    corpus: str = "pydoc"
    cell: str = "lstm"
    embedding_size: int = 64
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.35         # on the embedding and before the output layer
    weight_dropout: float = 0.0   # DropConnect on the recurrent weights (one mask per chunk)
    locked_dropout: bool = False  # one dropout mask per stream and chunk, not per character
    tie_weights: bool = False
    batch_size: int = 32          # parallel streams (the global batch when distributed)
    bptt: int = 100               # characters per chunk: the truncation length of BPTT
    eval_streams: int = 16
    sample_length: int = 300      # characters written into samples.txt at each evaluation
    sample_temperature: float = 0.8

    @classmethod
    def from_dict(cls, values: dict) -> "TextConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def default_train_config() -> TrainConfig:
    """Training defaults for the text model, chosen on the pydoc validation split at a fixed
    8-minute budget on one CPU thread (benchmarks/RESULTS.md has the runs behind them)."""
    return TrainConfig(learning_rate=6e-3, warmup_steps=100, precision="auto")


def build_model(config: TextConfig, vocab_size: int) -> SequenceModel:
    return SequenceModel(config.embedding_size, vocab_size, config.hidden_size, cell=config.cell,
                         vocab_size=vocab_size, dropout=config.dropout, tie_weights=config.tie_weights,
                         num_layers=config.num_layers, weight_dropout=config.weight_dropout,
                         locked_dropout=config.locked_dropout)


def stream_loss(model, ids: torch.Tensor, streams: int, bptt: int) -> float:
    """Mean cross-entropy (nats per character) of `model` over `ids`, read as `streams`
    parallel streams with the state carried across chunks."""
    batches = StreamBatches(ids, min(streams, max(1, len(ids) // 2)), bptt)
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for inputs, targets in batches:
            logits, state = model(inputs, state)
            total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    return total / count


class TextTask:
    """The character language model as a task for `rnnkit.train.Trainer`."""

    metric_names = ("bpc",)

    def __init__(self, config: TextConfig, rank: int = 0, world_size: int = 1):
        self.config = config
        text = load_corpus(config.corpus)
        self.vocab = Vocabulary.from_text(text)
        train, self.val_ids, self.test_ids = split_text(self.vocab.encode(text), (0.9, 0.05, 0.05))
        self.batches = StreamBatches(train, config.batch_size, config.bptt, shard=(rank, world_size))
        self.model = build_model(config, len(self.vocab))

    def batches_per_epoch(self) -> int:
        return len(self.batches)

    def train_batch(self, epoch: int, index: int):
        return self.batches.chunk(index)

    def batch_tokens(self, batch) -> int:
        return batch[1].numel()

    def train_loss(self, model, batch, carry):
        inputs, targets = batch
        logits, carry = model(inputs, carry)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), carry

    def metrics(self, loss: float) -> dict:
        return {"bpc": loss / math.log(2)}

    def evaluate(self, model) -> dict:
        loss = stream_loss(model, self.val_ids, self.config.eval_streams, self.config.bptt)
        return {"loss": loss, **self.metrics(loss)}

    def test_metrics(self, model) -> dict:
        loss = stream_loss(model, self.test_ids, self.config.eval_streams, self.config.bptt)
        return {"loss": loss, **self.metrics(loss)}

    def gradient_flow_loss(self, model):
        inputs, targets = StreamBatches(self.val_ids, 4, self.config.bptt).chunk(0)
        logits, _ = model(inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def after_evaluate(self, model, run_dir: Path, step: int) -> None:
        sample = generate(model, self.vocab, length=self.config.sample_length,
                          temperature=self.config.sample_temperature, seed=step)[0]
        with open(Path(run_dir) / "samples.txt", "a", encoding="utf-8") as file:
            file.write(f"=== step {step} ===\n{sample}\n")


def _start_ids(vocab: Vocabulary, prime: str) -> torch.Tensor:
    """The prime's ids; an empty prime starts after a newline (or the first character)."""
    if prime:
        return vocab.encode(prime)
    return vocab.encode("\n") if "\n" in vocab.ids else torch.tensor([0])


def _check_finite(logits: torch.Tensor) -> None:
    """Sampling and beam search would quietly pick the first NaN: say why instead."""
    if not torch.isfinite(logits).all():
        raise ValueError("the model's outputs are not finite (NaN or inf): its weights are broken")


def exponential_noise(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) draws as −log U, U ~ Uniform[0, 1) from torch's generator: the same law as torch's
    `exponential_`, which takes 4× as long (582 against 138 µs for 256 × 103 draws, 1 thread).
    The log is NumPy's: torch's runs MKL's vector math in a parallel loop, whose threads, once
    woken, took the second core from the writing loop's helper thread (12k against 21k chars/s
    at 2 threads)."""
    uniform = torch.rand(*shape, generator=generator)
    values = uniform.numpy()
    with np.errstate(divide="ignore"):  # U = 0 (one draw in 2^24): E = inf, that character loses
        np.negative(np.log(values, out=values), out=values)
    return uniform


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, V) logits → (batch, 1) ids drawn from softmax(logits / temperature), optionally
    restricted to the `top_k` most likely or to the smallest set whose mass reaches `top_p`.

    Drawn as argmax_i p_i / E_i over `noise` E, (batch, V) draws of Exp(1) (the exponential race,
    the Gumbel-max trick in other clothes: i wins with probability p_i / Σ p exactly); E comes
    from torch's global generator when not given. The compiled writing loop
    (`SequenceModel.writer`) draws the same way, so the same noise gives the same characters."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k is not None:
        kth = probs.topk(min(top_k, probs.shape[-1]), dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    if top_p is not None:
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(-1) - ordered  # mass of the strictly more likely ones
        probs = probs.scatter(-1, order, ordered.masked_fill(before >= top_p, 0.0))
    noise = exponential_noise(*probs.shape).to(probs) if noise is None else noise
    return probs.div_(noise).argmax(-1, keepdim=True)


def _write_by_steps(step, logits, state, noise, length: int, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, greedy: bool = False):
    """`SequenceModel.writer`'s loop, a draw and a step call per token, for the models it does not
    cover."""
    tokens = []
    for t in range(length):
        token = logits.argmax(-1) if greedy else sample(logits, temperature, top_k, top_p, noise[t])[:, 0]
        tokens.append(token)
        logits, state = step(token, state)
    return torch.stack(tokens, 1), logits, state


@torch.no_grad()
def generate(model, vocab: Vocabulary, prime: str = "", length: int = 300, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             num_samples: int = 1, seed: int | None = None, on_text=None, half_weights: bool = False) -> list[str]:
    """Write `num_samples` continuations of `prime`, `length` characters each (prime excluded).

    The prime is read once; after that every character costs one step, because the
    recurrent state is carried (nothing is re-read). Sampling draws from
    softmax(logits / temperature), optionally restricted to the `top_k` most likely
    characters or to the smallest set whose probability reaches `top_p` (nucleus);
    `greedy` takes the argmax. `on_text(text)` receives sample 0's text as it is written,
    WRITE_CHUNK characters at a time (streaming output). `half_weights`: the compiled writing
    loop reads float16 copies of the weight matrices (`SequenceModel.writer`): faster, and the
    probabilities move in about the 5th significant digit.
    """
    if length < 1 or num_samples < 1:
        raise ValueError(f"length and num_samples must be >= 1, got {length}, {num_samples}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy for argmax), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    model.eval()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    start = _start_ids(vocab, prime)
    logits, state = model(start.expand(num_samples, -1))
    logits = logits[:, -1]
    _check_finite(logits)
    write = model.writer(half_weights) or functools.partial(_write_by_steps, model.step)
    written = []
    for done in range(0, length, WRITE_CHUNK):
        count = min(WRITE_CHUNK, length - done)
        noise = None if greedy else exponential_noise(count, num_samples, logits.shape[-1], generator=generator)
        tokens, logits, state = write(logits, state, noise, count, temperature, top_k, top_p, greedy)
        written.append(tokens)
        if on_text is not None:
            on_text(vocab.decode(tokens[0]))
    tokens = torch.cat(written, dim=1)
    return [vocab.decode(row) for row in tokens]


@torch.no_grad()
def beam_search(model, vocab: Vocabulary, prime: str = "", length: int = 300, beam_width: int = 5) -> str:
    """The continuation of `prime` with the highest total log-probability found by keeping
    the `beam_width` best partial continuations at every step."""
    if beam_width < 1 or length < 1:
        raise ValueError(f"beam_width and length must be >= 1, got {beam_width}, {length}")
    model.eval()
    logits, state = model(_start_ids(vocab, prime)[None])
    logits = logits[:, -1]
    _check_finite(logits)
    step = model.stepper()
    scores = torch.zeros(1)
    tokens = torch.zeros(1, 0, dtype=torch.long)
    for _ in range(length):
        log_probs = torch.log_softmax(logits, dim=-1)                   # (beams, V)
        candidates = (scores[:, None] + log_probs).flatten()
        scores, best = candidates.topk(min(beam_width, candidates.numel()))
        beam, token = best // log_probs.shape[1], best % log_probs.shape[1]
        tokens = torch.cat([tokens[beam], token[:, None]], dim=1)
        state = tuple(s.index_select(1, beam) for s in state) if isinstance(state, tuple) else state.index_select(1, beam)
        logits, state = step(token, state)
    return vocab.decode(tokens[0])


def load_run(run_dir: Path, checkpoint: str = "best.pt") -> tuple[SequenceModel, Vocabulary, TextConfig]:
    """The trained model of a text run folder (best checkpoint, else the last one)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist")
    path = run_dir / checkpoint
    if not path.exists():
        path = run_dir / "last.pt"
    payload = load_checkpoint(path)
    run_config = payload.get("config", {})
    if run_config.get("task") != "text":
        raise ValueError(f"{path} is not a text-model checkpoint (task {run_config.get('task')!r})")
    config = TextConfig.from_dict(run_config["text"])
    vocab = Vocabulary.from_json(run_config["vocab"])
    model = build_model(config, len(vocab))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path} does not match its config: {str(error).splitlines()[0]}") from None
    model.eval()
    return model, vocab, config


def export_modules(run_dir: Path) -> tuple[dict, dict]:
    """For `rnnkit export`: the language model (one step or many, state in and out) and what a
    consumer needs to drive it: the vocabulary and where generation without a prime starts."""
    from ..export import sequence_model

    model, vocab, config = load_run(run_dir)
    start = "\n" if "\n" in vocab.ids else vocab.chars[0]
    return {"model": sequence_model(model)}, {"vocab": vocab.chars, "start": start, "config": asdict(config)}


def train_text_model(text_config: TextConfig, train_config: TrainConfig, runs_dir="runs", name: str | None = None,
                     resume: Path | None = None, quiet: bool = False, tensorboard: bool = False):
    """Train (or, with `resume`, continue) a text run and write its report; returns
    (run_dir, summary, task) with the task's model holding the best checkpoint's weights.
    Distributed when started by torchrun: rank 0 owns the run folder, and the other ranks
    return (run_dir, None, task)."""
    import os

    from ..files import write_json
    from ..runs import finish_run, new_run_dir
    from ..train.trainer import Trainer, check_precision

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    train_config.validate()
    torch.manual_seed(train_config.seed)
    task = TextTask(text_config, rank, world_size)
    check_precision(train_config.precision, next(task.model.parameters()).device.type)
    run_config = {"task": "text", "text": asdict(text_config), "train": asdict(train_config),
                  "vocab": task.vocab.to_json()}
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = new_run_dir(runs_dir, name, "text") if rank == 0 else None
        if world_size > 1:  # every process needs the folder rank 0 created (its name has a time)
            names = [str(run_dir)]
            torch.distributed.broadcast_object_list(names, src=0)
            run_dir = Path(names[0])
    if rank == 0:
        write_json(run_dir / "config.json", run_config)
    trainer = Trainer(task, train_config, run_dir, run_config, quiet=quiet, tensorboard=tensorboard)
    if resume is not None:
        trainer.resume(run_dir / "last.pt")
    summary = trainer.fit()
    if rank != 0:
        return run_dir, None, task
    best = run_dir / "best.pt"  # absent when no evaluation was finite
    task.model.load_state_dict(load_checkpoint(best if best.exists() else run_dir / "last.pt")["model"])
    test = task.test_metrics(task.model)
    summary.update({"test_loss": test["loss"], "test_bpc": test["bpc"],
                    "best_val_bpc": summary["best_val_loss"] / math.log(2)})
    finish_run(run_dir, summary)
    return run_dir, summary, task


class TextModel:
    """A character language model and its vocabulary: the Python face of `rnnkit train text`,
    `rnnkit generate` and `rnnkit eval`.

        model = TextModel.train(corpus="pydoc", minutes=3)     # writes runs/text-<time>/
        print(model.generate("The ", length=200, temperature=0.8))
        model.bits_per_character("Some held-out text.")
        model = TextModel.load("runs/text-20261122-101500")
    """

    def __init__(self, model: SequenceModel, vocab: Vocabulary, config: TextConfig, run_dir: Path | None = None):
        self.model, self.vocab, self.config, self.run_dir = model, vocab, config, run_dir
        self.summary: dict | None = None

    @classmethod
    def train(cls, corpus: str = "pydoc", *, minutes: float | None = None, runs_dir="runs", name: str | None = None,
              quiet: bool = True, **options) -> "TextModel":
        """Train on `corpus` (pydoc, stdlib, or a UTF-8 file/folder). `options` are fields of
        TextConfig (hidden_size, cell, num_layers, …) and of TrainConfig (learning_rate,
        max_steps, …); without max_steps or minutes the budget is 3 minutes."""
        text_fields = {f.name for f in fields(TextConfig)} - {"corpus"}
        train_fields = {f.name for f in fields(TrainConfig)}
        unknown = set(options) - text_fields - train_fields
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; TextConfig takes {sorted(text_fields)}, "
                             f"TrainConfig takes {sorted(train_fields)}")
        text_config = TextConfig(corpus=corpus, **{k: v for k, v in options.items() if k in text_fields})
        train_config = default_train_config()
        for key, value in options.items():
            if key in train_fields:
                setattr(train_config, key, value)
        if minutes is not None:
            train_config.max_seconds = minutes * 60
        elif train_config.max_steps is None and train_config.max_seconds is None:
            train_config.max_seconds = 180.0
        run_dir, summary, task = train_text_model(text_config, train_config, runs_dir, name, quiet=quiet)
        trained = cls(task.model.eval(), task.vocab, text_config, run_dir)
        trained.summary = summary
        return trained

    @classmethod
    def load(cls, run_dir, checkpoint: str = "best.pt") -> "TextModel":
        """The model of a text run folder (its best checkpoint, else the last)."""
        model, vocab, config = load_run(Path(run_dir), checkpoint)
        return cls(model, vocab, config, Path(run_dir))

    def generate(self, prime: str = "", length: int = 300, **sampling) -> str:
        """One continuation of `prime`; `sampling` as in rnnkit.tasks.text.generate
        (temperature, top_k, top_p, greedy, seed)."""
        self._check_known(prime)
        return generate(self.model, self.vocab, prime, length, **sampling)[0]

    def beam_search(self, prime: str = "", length: int = 100, beam_width: int = 5) -> str:
        self._check_known(prime)
        return beam_search(self.model, self.vocab, prime, length, beam_width)

    def bits_per_character(self, text: str) -> float:
        """Mean −log₂ p(next character) over `text`, every character predicted from all before it."""
        self._check_known(text)
        ids = self.vocab.encode(text)
        if len(ids) < 2:
            raise ValueError("bits_per_character needs at least 2 characters")
        return stream_loss(self.model, ids, self.config.eval_streams, self.config.bptt) / math.log(2)

    def _check_known(self, text: str) -> None:
        unknown = self.vocab.unknown_chars(text)
        if unknown:
            raise ValueError(f"characters the model never saw: {', '.join(map(repr, unknown))}")
