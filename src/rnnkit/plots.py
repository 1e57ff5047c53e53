"""Figures of a training run: learning curves, gradient flow through time, generic line plots.

Figures are drawn on matplotlib.figure.Figure objects directly and never through pyplot, so
there is no global figure state and no GUI backend (safe on headless machines and in
threads); PNGs are rendered by Agg into memory and then written atomically.
"""

import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from rnnkit.files import atomic_write_bytes, read_csv_columns

FIGSIZE = (8, 4.5)  # inches
DPI = 110
TRAINING_CURVES_PNG = "training_curves.png"  # the names write_report puts first
GRADIENT_FLOW_PNG = "gradient_flow.png"
MAX_FLOW_LINES = 8  # more training steps than this in one line plot are unreadable
MAX_MARKED_POINTS = 30  # lines with at most this many points also get a marker per point
ARROWS = {"0": "→", "forward": "→", "fwd": "→", "1": "←", "backward": "←", "bwd": "←", "reverse": "←"}


def _new_figure(width, height):
    # Constrained layout is tight layout that also leaves room for colour bars and suptitles.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, out_png):
    """Render fig to PNG bytes in memory, then write them atomically; return out_png as a Path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write_bytes(out_png, buffer.getvalue())


# -----------------------------------------------------------------------------
# training curves


def _number(cell):
    """A CSV cell as a float; NaN for an empty cell (no evaluation on that row) or non-numbers."""
    try:
        return float(cell)
    except ValueError:
        return float("nan")


def read_metrics(metrics_csv):
    """Return metrics.csv as {column name: float array}, NaN where a cell is empty."""
    columns = read_csv_columns(metrics_csv)
    return {name: np.array([_number(cell) for cell in cells]) for name, cells in columns.items()}


def _plot_train_and_val(ax, metrics, name, ylabel):
    """Draw train_<name> as a line and val_<name> as markers on a line (evaluation is sparse)."""
    step = metrics["step"]
    for split, style in (("train", {}), ("val", {"marker": "o", "markersize": 4})):
        values = metrics.get(f"{split}_{name}", np.array([]))
        logged = np.isfinite(values)
        if not logged.any():
            continue
        if logged.sum() == 1:
            style = {**style, "marker": "o"}  # a lone point draws no line
        ax.plot(step[logged], values[logged], label=split, linewidth=1.2, **style)
    ax.set(xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()


def plot_training_curves(metrics_csv, out_png):
    """Draw loss against step, plus bits per character and learning rate when present.

    The bpc panel appears when metrics.csv has train_bpc or val_bpc; the learning-rate panel
    when the learning rate changes. The title names the best val loss. Returns out_png.
    """
    metrics = read_metrics(metrics_csv)
    step = metrics["step"]
    show_bpc = "train_bpc" in metrics or "val_bpc" in metrics
    lr = metrics.get("lr", np.array([]))
    lr = lr[np.isfinite(lr)]
    show_lr = lr.size > 1 and lr.min() < lr.max()

    fig = _new_figure(FIGSIZE[0], FIGSIZE[1] + (1.3 if show_lr else 0))
    grid = fig.add_gridspec(2 if show_lr else 1, 2 if show_bpc else 1, height_ratios=[3, 1] if show_lr else None)
    ax_loss = fig.add_subplot(grid[0, 0])
    _plot_train_and_val(ax_loss, metrics, "loss", "loss (nats / token)")
    if show_bpc:
        _plot_train_and_val(fig.add_subplot(grid[0, 1], sharex=ax_loss), metrics, "bpc", "bits per character")
    if show_lr:
        ax_lr = fig.add_subplot(grid[1, :], sharex=ax_loss)
        ax_lr.plot(step, metrics["lr"], linewidth=1.2, color="tab:green")
        ax_lr.set(xlabel="step", ylabel="learning rate")
        ax_lr.grid(alpha=0.3)

    val_loss = metrics.get("val_loss", np.array([]))
    if np.isfinite(val_loss).any():
        best = np.nanargmin(val_loss)
        val_bpc = metrics.get("val_bpc", np.full_like(val_loss, np.nan))[best]
        bpc = f" ({val_bpc:.3f} bpc)" if np.isfinite(val_bpc) else ""
        title = f"best val loss {val_loss[best]:.4f}{bpc} at step {step[best]:.0f}"
    else:
        title = "no validation yet"
    fig.suptitle(f"{Path(metrics_csv).resolve().parent.name}: {title}")
    return _save(fig, out_png)


# -----------------------------------------------------------------------------
# gradient flow


def _arrow(direction):
    """"→" for a forward direction label, "←" for a backward one, any other label as it is."""
    return ARROWS.get(direction.lower(), direction)


def _direction_key(direction):
    """Sort forward before backward, then any other direction label by name."""
    arrow = _arrow(direction)
    return (0 if arrow == "→" else 1 if arrow == "←" else 2), direction


def plot_gradient_flow(gradient_flow_csv, out_png):
    """Draw how ‖∂L/∂h_t‖ spreads back through time, from gradient_flow.csv; return out_png.

    Top: a heat map for the last recorded training step, one row per (layer, direction), one
    column per time step t, colour = log10 of the gradient norm. Bottom: the mean over layers
    of that log10 norm against t, one line per recorded training step (at most
    MAX_FLOW_LINES, evenly spread) and direction, so one sees the flow change with training.
    Zero norms have no logarithm and are left blank.
    """
    columns = read_csv_columns(gradient_flow_csv)
    step = np.array(columns["step"], dtype=float).astype(int)  # "500" and "500.0" alike
    layer = np.array(columns["layer"], dtype=float).astype(int)
    direction = columns["direction"]
    t = np.array(columns["t"], dtype=float).astype(int)
    norm = np.array(columns["grad_norm"], dtype=float)
    log_norm = np.log10(np.where(norm > 0, norm, np.nan))

    rows = sorted(set(zip(layer.tolist(), direction)), key=lambda row: (row[0], _direction_key(row[1])))
    row_index = {row: i for i, row in enumerate(rows)}
    row_of = np.array([row_index[row] for row in zip(layer.tolist(), direction)])
    t_first, t_last = t.min(), t.max()

    def log_norms_at(training_step):
        """The (row, t) matrix of log10 norms recorded at one training step, NaN where absent."""
        matrix = np.full((len(rows), t_last - t_first + 1), np.nan)
        at = step == training_step
        matrix[row_of[at], t[at] - t_first] = log_norm[at]
        return matrix

    fig = _new_figure(FIGSIZE[0], 6.5)
    ax_heat, ax_mean = fig.subplots(2, 1, height_ratios=[max(len(rows), 2), 3])
    last_step = step.max()
    image = ax_heat.imshow(
        log_norms_at(last_step),
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(t_first - 0.5, t_last + 0.5, len(rows) - 0.5, -0.5),
    )
    ax_heat.set_yticks(range(len(rows)), [f"layer {l} {_arrow(d)}" for l, d in rows])
    ax_heat.set(xlabel="time step t", title=f"gradient norm per layer and time step at training step {last_step}")
    fig.colorbar(image, ax=ax_heat, label=r"$\log_{10}\,\|\partial L/\partial h_t\|$")

    steps = np.unique(step)
    shown = steps[np.unique(np.linspace(0, len(steps) - 1, min(len(steps), MAX_FLOW_LINES)).round().astype(int))]
    colours = matplotlib.colormaps["plasma"](np.linspace(0, 0.85, len(shown)))  # skip the faint yellow end
    t_axis = np.arange(t_first, t_last + 1)
    # Directions get their own lines: forward and backward flows decay in opposite senses of t,
    # so one mean over both would flatten exactly what the plot is meant to show.
    directions = sorted({d for _, d in rows}, key=_direction_key)
    direction_of_row = np.array([d for _, d in rows])
    for training_step, colour in zip(shown, colours):
        log_norms = log_norms_at(training_step)
        for d, linestyle in zip(directions, ["-", "--", ":", "-."]):
            # A masked mean skips blank cells without warning about all-blank columns.
            mean = np.ma.masked_invalid(log_norms[direction_of_row == d]).mean(axis=0).filled(np.nan)
            label = f"step {training_step}" + (f" {_arrow(d)}" if len(directions) > 1 else "")
            ax_mean.plot(t_axis, mean, color=colour, linestyle=linestyle, linewidth=1.4, label=label)
    ax_mean.set(
        xlim=ax_heat.get_xlim(),
        xlabel="time step t",
        ylabel=r"mean $\log_{10}\,\|\partial L/\partial h_t\|$",
        title="mean over layers, by training step",
    )
    ax_mean.grid(alpha=0.3)
    ax_mean.legend(fontsize="small", ncol=len(directions))
    return _save(fig, out_png)


# -----------------------------------------------------------------------------
# generic helpers


def plot_lines(series, out_png, *, title, xlabel, ylabel, logy=False):
    """Draw one line per label of series = {label: (xs, ys)}; return out_png.

    Lines with few points (benchmark sweeps) get a marker on each point.
    """
    fig = _new_figure(*FIGSIZE)
    ax = fig.add_subplot()
    for label, (xs, ys) in series.items():
        marker = "o" if len(xs) <= MAX_MARKED_POINTS else None
        ax.plot(xs, ys, label=label, marker=marker, markersize=4, linewidth=1.4)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both" if logy else "major")
    if series:
        ax.legend()
    return _save(fig, out_png)


def plot_run(run_dir):
    """Draw the standard figures of a run folder from whichever CSVs it holds; return their paths."""
    run_dir = Path(run_dir)
    figures = []
    if (run_dir / "metrics.csv").exists():
        figures.append(plot_training_curves(run_dir / "metrics.csv", run_dir / TRAINING_CURVES_PNG))
    if (run_dir / "gradient_flow.csv").exists():
        figures.append(plot_gradient_flow(run_dir / "gradient_flow.csv", run_dir / GRADIENT_FLOW_PNG))
    return figures
