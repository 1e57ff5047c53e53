"""Training diagnostics: how gradients travel back through time, and how fast weights move.

- Gradient flow: ‖∂L/∂h_t‖ for every step t, layer and direction of every `Recurrent` in a
  model — the total gradient reaching the step's output h_t, through the recurrence and
  from the loss terms at later steps. It is read from `Recurrent.step_hook`, which hands
  over each step's output; `torch.autograd.grad(loss, [h_t …])` then differentiates with
  respect to those tensors alone, so no parameter's `.grad` is touched.
- Update-to-weight ratio: ‖θ_after − θ_before‖ / ‖θ_before‖ over all parameters for one
  optimizer step; around 1e-3 is healthy, much smaller means the model barely learns,
  much larger that it is thrashing.
- The vanishing/exploding gradient experiment behind `rnnkit diagnose`: the gradient of a
  loss on the last step, followed back k steps, for Elman, LSTM and GRU layers.
"""

import csv
import io
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from ..files import atomic_write_bytes, atomic_write_text
from ..recurrent import Recurrent

GRADIENT_FLOW_COLUMNS = ("step", "layer", "direction", "t", "grad_norm")


# ----------------------------------------------------------------------------- gradient flow

class StepCapture:
    """The step outputs h_t recorded during one forward pass, in the order they ran.

    Layers are numbered across all the model's `Recurrent`s in `model.modules()` order: a
    Seq2Seq with 2-layer encoder and decoder has layers 0, 1 (encoder) and 2, 3 (decoder).
    A layer run several times in one pass (a decoder fed token by token) gives rows for
    every run, each with t counted from 0.
    """

    def __init__(self):
        self.steps = []  # (layer, direction, t, h_t)

    def recorder(self, first_layer: int):
        def record(layer, direction, t, output):
            if output.requires_grad:  # a step run under no_grad (greedy decoding) has no gradient
                self.steps.append((first_layer + layer, direction, t, output))
        return record

    def gradient_norms(self, loss: torch.Tensor) -> list[dict]:
        """One row {layer, direction, t, grad_norm} per step: ‖∂L/∂h_t‖₂ over batch and features.

        Frees the graph, like `loss.backward()`, but writes no parameter's `.grad`. Padded
        steps have rows too; the sequences padded there add 0 to the norm.
        """
        grads = torch.autograd.grad(loss, [h for *_, h in self.steps], materialize_grads=True)
        return [{"layer": layer, "direction": direction, "t": t, "grad_norm": grad.norm().item()}
                for (layer, direction, t, _), grad in zip(self.steps, grads)]


@contextmanager
def capture_steps(model: nn.Module):
    """Record every step output of every `Recurrent` in `model` while the block runs.

    Setting `step_hook` makes each layer take its per-step loop instead of the fused
    kernel: same function, slower. The hooks are removed on exit, also on an exception.

        with capture_steps(model) as steps:
            loss = loss_fn()
        rows = steps.gradient_norms(loss)
    """
    capture = StepCapture()
    recurrents = [module for module in model.modules() if isinstance(module, Recurrent)]
    first_layer = 0
    for recurrent in recurrents:
        recurrent.step_hook = capture.recorder(first_layer)
        first_layer += recurrent.num_layers
    try:
        yield capture
    finally:
        for recurrent in recurrents:
            recurrent.step_hook = None


def gradient_flow_rows(model: nn.Module, loss_fn) -> list[dict]:
    """Run `loss = loss_fn()` and return ‖∂L/∂h_t‖ per (layer, direction, t), as `StepCapture` rows.

    It costs a forward and a backward pass of its own through the slow per-step loop, so
    call it now and then (at evaluation time), not inside every training step. It leaves
    the parameters' `.grad` as it found them, so it is safe anywhere outside the
    optimizer's backward-then-step.
    """
    with capture_steps(model) as steps:
        loss = loss_fn()
    return steps.gradient_norms(loss)


def append_gradient_flow_csv(path: Path, step: int, rows: list[dict]) -> None:
    """Append `rows` (from `gradient_flow_rows`) under training step `step`; header if the file is new."""
    path = Path(path)
    is_new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=GRADIENT_FLOW_COLUMNS)
        if is_new:
            writer.writeheader()
        writer.writerows({"step": step, **row} for row in rows)


# ----------------------------------------------------------------------------- update ratio

def update_ratio(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """‖θ_after − θ_before‖₂ / ‖θ_before‖₂, each norm over all parameters together."""
    update = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a - b) for b, a in zip(before, after)]))
    weight = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b) for b in before]))
    return (update / weight).item()


class UpdateRatio:
    """The update-to-weight ratio of one optimizer step:

        ratio = UpdateRatio(model.parameters())
        ratio.before_step(); optimizer.step(); value = ratio.after_step()

    `before_step` keeps a copy of the parameters (one model's worth of memory), so call the
    pair only on the steps you log.
    """

    def __init__(self, params):
        self.params = list(params)
        self.before = None

    def before_step(self) -> None:
        self.before = [p.detach().clone() for p in self.params]

    def after_step(self) -> float:
        ratio = update_ratio(self.before, [p.detach() for p in self.params])
        self.before = None
        return ratio


# ----------------------------------------------------------------------------- vanishing / exploding

# label: (cell, factor on the default recurrent weights, clip norm of each step's gradient,
#         bias added to the gate that keeps the old state: LSTM's forget gate f, GRU's update gate z)
DECAY_CONFIGURATIONS = {
    "Elman (tanh, default init)": ("elman", 1.0, None, 0.0),
    "Elman, recurrent weights ×4 (no clipping)": ("elman", 4.0, None, 0.0),
    "Elman, same weights, gradient clipped at norm 1 per step": ("elman", 4.0, 1.0, 0.0),
    "LSTM (default init)": ("lstm", 1.0, None, 0.0),
    "LSTM, forget-gate bias +3": ("lstm", 1.0, None, 3.0),
    "GRU (default init)": ("gru", 1.0, None, 0.0),
    "GRU, update-gate bias +3": ("gru", 1.0, None, 3.0),
}


def _backward_norms(layer: Recurrent, x: torch.Tensor, projection: torch.Tensor,
                    max_norm: float | None) -> list[float]:
    """‖∂L/∂h_{T−1−k}‖ for k = 0 … T−1, where L = Σ_batch projection · h_{T−1}.

    A tensor hook on each h_t sees the gradient arriving there; with `max_norm` it rescales
    it to norm ≤ max_norm before it travels on (Pascanu et al. 2013, applied to every
    backward message), and the norm recorded is the one passed on.
    """
    norms = {}

    def watch(layer_index, direction, t, output):
        def clip_and_record(grad):
            if max_norm is not None:
                grad = grad * (max_norm / grad.norm()).clamp(max=1.0)
            norms[t] = grad.norm().item()
            return grad
        output.register_hook(clip_and_record)

    layer.step_hook = watch
    try:
        outputs, _ = layer(x)
    finally:
        layer.step_hook = None
    (outputs[:, -1] @ projection).sum().backward()  # the throwaway layer's .grad is never read
    return [norms[t] for t in reversed(range(x.shape[1]))]


def gradient_decay_experiment(steps: int = 100, hidden_size: int = 64, batch: int = 16,
                              seed: int = 0) -> dict[str, list[float]]:
    """{label: [‖∂L/∂h_{T−1−k}‖ for k = 0 … T−1]} for each of `DECAY_CONFIGURATIONS`.

    Each is a fresh 1-layer `Recurrent` (input size = hidden size) reading the same random
    sequence x ~ N(0, 1) of `steps` steps; the loss depends on the last output only,

        L = Σ_b v · h_T[b],   ‖v‖ = 1/√batch,   so ‖∂L/∂h_T‖ = 1 and every curve starts at 1.

    Going back one step multiplies the gradient by the step's Jacobian ∂h_t/∂h_{t−1}; for
    Elman that is W_hhᵀ diag(1 − h_t²), whose norm is below 1 with the default init (the
    gradient vanishes geometrically) and above 1 once W_hh is scaled ×4 (it explodes).
    LSTM and GRU carry their state additively (c_t = f ⊙ c_{t−1} + …, h_t = z ⊙ h_{t−1} + …):
    with the keep-gate biased open, the Jacobian stays near the identity and the gradient
    survives; at PyTorch's default init the gate sits near ½ and the gradient still fades.
    The three Elman layers are built from the same seed, so they share weights up to the
    scale. Runs in float64 so vanishing curves reach 1e-30 instead of underflowing to 0,
    and leaves the global random state as it was.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, hidden_size, generator=generator, dtype=torch.float64)
    projection = torch.randn(hidden_size, generator=generator, dtype=torch.float64)
    projection /= projection.norm() * math.sqrt(batch)
    results = {}
    with torch.random.fork_rng(devices=[]):
        for label, (cell, recurrent_scale, max_norm, keep_bias) in DECAY_CONFIGURATIONS.items():
            torch.manual_seed(seed)
            layer = Recurrent(cell, hidden_size, hidden_size).double()
            with torch.no_grad():
                layer.cells[0].weight_hh.mul_(recurrent_scale)
                if keep_bias:  # the second gate block in PyTorch's order: f in (i, f, g, o), z in (r, z, n)
                    layer.cells[0].bias_ih[hidden_size:2 * hidden_size] += keep_bias
            results[label] = _backward_norms(layer, x, projection, max_norm)
    return results


def plot_gradient_decay(results: dict[str, list[float]], out_png: Path) -> None:
    """All curves on one log-scale figure, x = steps back k, written atomically as a PNG."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, norms in results.items():
        axes.plot(range(len(norms)), norms, label=label)
    axes.set_yscale("log")
    axes.set_xlabel("steps back k")
    axes.set_ylabel("‖∂L/∂h$_{T−k}$‖")
    axes.set_title("Gradient of a loss on the last step, followed back through time")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(out_png, buffer.getvalue())


def write_gradient_decay_csv(results: dict[str, list[float]], path: Path) -> None:
    """Columns k and one per label, a row per k, written atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["k", *results])
    writer.writerows([k, *norms] for k, norms in enumerate(zip(*results.values())))
    atomic_write_text(path, text.getvalue())


def run_diagnose(out_dir: Path, steps: int = 100, seed: int = 0) -> dict[str, dict[str, float]]:
    """Run the experiment, write gradient_decay.png and gradient_decay.csv into `out_dir`.

    Returns {label: {"first": norm at k=0, "last": norm at k=T−1, "ratio": last / first}}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = gradient_decay_experiment(steps=steps, seed=seed)
    plot_gradient_decay(results, out_dir / "gradient_decay.png")
    write_gradient_decay_csv(results, out_dir / "gradient_decay.csv")
    return {label: {"first": norms[0], "last": norms[-1], "ratio": norms[-1] / norms[0]}
            for label, norms in results.items()}


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """`run_diagnose`'s summary as a text table, one curve per line."""
    width = max(len("curve"), *map(len, summary))
    lines = [f"{'curve':<{width}}  {'k=0':>9}  {'k=T-1':>9}  {'ratio':>9}"]
    lines += [f"{label:<{width}}  {row['first']:>9.3g}  {row['last']:>9.3g}  {row['ratio']:>9.3g}"
              for label, row in summary.items()]
    return "\n".join(lines)
