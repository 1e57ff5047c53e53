"""Long-range memory, measured: delayed recall for growing delays T, Elman vs LSTM vs GRU.

A sequence has T steps of K+1 inputs. Step 1 shows the symbol s ∈ {0 … K−1} (one-hot);
steps 2 … T show random distractor symbols from the same alphabet; the last step also
raises a query flag (input K). After reading all T steps the network must name s:

    x_1 = onehot(s),  x_t = onehot(d_t) for t = 2 … T,  x_T[K] = 1,   target = s

Chance is 1/K. The answer depends on an input T − 1 steps back, so learning it needs
the gradient ∂L/∂h_1 = ∂L/∂h_T · Π_t ∂h_t/∂h_{t−1} to survive T − 1 Jacobians. For Elman
each factor is W_hhᵀ diag(1 − h_t²) and the product shrinks geometrically (the vanishing
gradient); LSTM and GRU carry their state additively through a keep gate (forget gate f,
update gate z), whose bias starts at `keep_gate_bias` so the product starts near 1.

For every (cell, T) the shared Trainer trains a fresh `SequenceClassifier` on fresh
batches; the run reports test accuracy and the gradient's reach ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖
at initialisation and after training (`rnnkit.train.diagnostics.gradient_flow_rows`).
"""

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import atomic_write_text, write_json
from ..metrics import accuracy
from ..models import SequenceClassifier
from ..train.checkpoint import load_checkpoint
from ..train.diagnostics import gradient_flow_rows
from ..train.trainer import TrainConfig, Trainer
from .classify import add_training_flags, train_config_from

KEEP_GATE = {"lstm": 1, "gru": 1}  # gate block of the keep gate in PyTorch's order: f in (i, f, g, o), z in (r, z, n)
VAL_SEED, TEST_SEED = 1_000_001, 1_000_002  # fixed: every cell and delay is measured on the same sequences


@dataclass
class MemoryConfig:
    delays: list[int] = field(default_factory=lambda: [5, 10, 20, 30, 40])
    cells: list[str] = field(default_factory=lambda: ["elman", "lstm", "gru"])
    symbols: int = 8              # K: chance accuracy is 1/K
    hidden_size: int = 64
    keep_gate_bias: float = 2.0   # LSTM forget / GRU update gate bias at initialisation
    batch_size: int = 64
    val_size: int = 512
    test_size: int = 1000


def default_train_config() -> TrainConfig:
    """Per (cell, delay): 500 steps, enough for every cell at T = 10 (benchmarks/RESULTS.md, sequence-a)."""
    return TrainConfig(learning_rate=3e-3, max_steps=500, eval_every=100, gradient_flow=False)


def recall_batch(count: int, delay: int, symbols: int, generator: torch.Generator):
    """(inputs (count, delay, symbols + 1), targets (count,)) of the delayed-recall task."""
    targets = torch.randint(symbols, (count,), generator=generator)
    shown = torch.randint(symbols, (count, delay), generator=generator)
    shown[:, 0] = targets
    inputs = F.one_hot(shown, symbols + 1).float()
    inputs[:, -1, symbols] = 1.0
    return inputs, targets


class MemoryTask:
    """Delayed recall at one delay as a task for `rnnkit.train.Trainer`; every batch is fresh."""

    metric_names = ("accuracy",)

    def __init__(self, config: MemoryConfig, cell: str, delay: int, seed: int = 0):
        self.config, self.delay, self.seed = config, delay, seed
        self.val, self.test = (recall_batch(count, delay, config.symbols, torch.Generator().manual_seed(data_seed))
                               for count, data_seed in ((config.val_size, VAL_SEED),
                                                        (config.test_size, TEST_SEED)))
        self.model = SequenceClassifier(config.symbols + 1, config.symbols, config.hidden_size, cell=cell)
        if cell in KEEP_GATE:
            size = config.hidden_size
            with torch.no_grad():
                self.model.recurrent.cells[0].bias_ih[KEEP_GATE[cell] * size:(KEEP_GATE[cell] + 1) * size] += \
                    config.keep_gate_bias

    def batches_per_epoch(self) -> int:
        return 100  # the data never repeats; an epoch only numbers the batches

    def train_batch(self, epoch: int, index: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 100 + index)
        return recall_batch(self.config.batch_size, self.delay, self.config.symbols, generator)

    def batch_tokens(self, batch) -> int:
        return batch[0].shape[0] * batch[0].shape[1]

    def train_loss(self, model, batch, carry):
        inputs, targets = batch
        return F.cross_entropy(model(inputs), targets), None

    def metrics(self, loss: float) -> dict:
        return {}  # accuracy needs the predictions: it is measured in evaluate

    def evaluate(self, model, split=None) -> dict:
        inputs, targets = self.val if split is None else split
        logits = model(inputs)
        return {"loss": F.cross_entropy(logits, targets).item(),
                "accuracy": accuracy(logits.argmax(-1).numpy(), targets.numpy())}

    def after_evaluate(self, model, run_dir: Path, step: int) -> None:
        pass  # nothing to write beside the metrics

    def gradient_flow_loss(self, model):
        inputs, targets = self.val
        return F.cross_entropy(model(inputs[:64]), targets[:64])

    def gradient_reach(self) -> float:
        """‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ on 64 validation sequences: how much gradient reaches the symbol."""
        norms = {row["t"]: row["grad_norm"]
                 for row in gradient_flow_rows(self.model, lambda: self.gradient_flow_loss(self.model))}
        return norms[0] / norms[self.delay - 1]


def compare(config: MemoryConfig, train_config: TrainConfig, run_dir: Path, quiet: bool = False) -> list[dict]:
    """Train every (cell, delay) in its own sub-folder of `run_dir`; one result row each."""
    results = []
    for cell in config.cells:
        for delay in config.delays:
            torch.manual_seed(train_config.seed)
            task = MemoryTask(config, cell, delay, train_config.seed)
            reach_at_start = task.gradient_reach()
            sub_dir = run_dir / f"{cell}-T{delay}"
            sub_dir.mkdir()
            summary = Trainer(task, train_config, sub_dir, {"task": "memory", "cell": cell, "delay": delay},
                              quiet=True).fit()
            task.model.load_state_dict(load_checkpoint(sub_dir / "best.pt")["model"])
            task.model.eval()
            with torch.no_grad():
                test = task.evaluate(task.model, task.test)
            results.append({"cell": cell, "delay": delay, "test_accuracy": test["accuracy"],
                            "gradient_reach_init": reach_at_start, "gradient_reach_trained": task.gradient_reach(),
                            "steps": summary["steps"], "seconds": summary["seconds"]})
            if not quiet:
                row = results[-1]
                print(f"{cell:>6} T={delay:<4} test accuracy {row['test_accuracy']:.3f}   gradient reach "
                      f"{row['gradient_reach_init']:.2e} at init, {row['gradient_reach_trained']:.2e} trained "
                      f"({row['seconds']:.0f} s)", flush=True)
    return results


def write_results(results: list[dict], config: MemoryConfig, run_dir: Path) -> None:
    """results.csv and the two figures: accuracy and gradient reach against the delay."""
    from ..plots import plot_lines

    text = io.StringIO()
    writer = csv.DictWriter(text, list(results[0]))
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(run_dir / "results.csv", text.getvalue())
    by_cell = {cell: [row for row in results if row["cell"] == cell] for cell in config.cells}
    curves = {name: {cell: ([r["delay"] for r in rows], [r[column] for r in rows]) for cell, rows in by_cell.items()}
              for name, column in (("accuracy", "test_accuracy"), ("reach", "gradient_reach_init"))}
    curves["accuracy"][f"chance (1/{config.symbols})"] = (config.delays, [1 / config.symbols] * len(config.delays))
    plot_lines(curves["accuracy"], run_dir / "accuracy_vs_delay.png", title="Delayed recall: test accuracy",
               xlabel="T (the symbol comes T − 1 steps before the question)", ylabel="test accuracy")
    plot_lines(curves["reach"], run_dir / "gradient_reach_vs_delay.png", logy=True,
               title="Gradient reaching the symbol's step at initialisation",
               xlabel="delay T", ylabel="‖∂L/∂h_1‖ / ‖∂L/∂h_T‖")


def run_compare_memory(args) -> None:
    from ..runs import finish_run, new_run_dir

    config = MemoryConfig(delays=args.delays, cells=args.cells, symbols=args.symbols,
                          hidden_size=args.hidden_size, keep_gate_bias=args.keep_gate_bias)
    train_config = train_config_from(args, default_train_config())
    run_dir = new_run_dir(args.runs_dir, args.name, "memory")
    write_json(run_dir / "config.json", {"task": "memory", "memory": asdict(config), "train": asdict(train_config)})
    results = compare(config, train_config, run_dir, args.quiet)
    write_results(results, config, run_dir)
    report = finish_run(run_dir, {f"{r['cell']}_T{r['delay']}_test_accuracy": r["test_accuracy"] for r in results})
    print(f"report: {report}")


def add_commands(commands) -> None:
    from ..cells import CELLS
    from ..cli import positive_int

    def comma_list(kind, choices=None):
        def parse(text: str) -> list:
            values = [kind(item) for item in text.split(",") if item]
            if not values or (choices and set(values) - set(choices)):
                raise ValueError
            return values
        parse.__name__ = "comma-separated list"  # argparse names the type in its error line
        return parse

    defaults = MemoryConfig()
    parser = commands.add_parser("compare", help="compare recurrent cells on a task; writes a run folder")
    parser.add_argument("task", choices=["memory"], help="memory: delayed recall for a range of delays T")
    experiment = parser.add_argument_group("experiment")
    experiment.add_argument("--delays", type=comma_list(positive_int), default=defaults.delays,
                            help="delays T, comma-separated (default %(default)s)")
    experiment.add_argument("--cells", type=comma_list(str, CELLS), default=defaults.cells,
                            help=f"cells, comma-separated, from {', '.join(sorted(CELLS))}")
    experiment.add_argument("--symbols", type=positive_int, default=defaults.symbols)
    experiment.add_argument("--hidden-size", type=positive_int, default=defaults.hidden_size)
    experiment.add_argument("--keep-gate-bias", type=float, default=defaults.keep_gate_bias,
                            help="initial LSTM forget / GRU update gate bias (0: PyTorch's init)")
    add_training_flags(parser, default_train_config(), "memory")
    parser.set_defaults(handler=run_compare_memory)
