"""Run folders: `runs/<name>/` holds config.json, metrics.csv, checkpoints, figures, report.html."""

import time
from pathlib import Path

from .files import write_json


def new_run_dir(runs_dir: Path, name: str | None, prefix: str) -> Path:
    """Create a fresh run folder; an existing one is never reused (nothing in it is lost)."""
    name = name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"run name must be a plain folder name, got {name!r}")
    run_dir = Path(runs_dir) / name
    if run_dir.exists():
        raise ValueError(f"run folder {run_dir} already exists: choose another --name, or --resume it")
    run_dir.mkdir(parents=True)
    return run_dir


def finish_run(run_dir: Path, summary: dict) -> Path:
    """Write summary.json, the figures and report.html; return the report's path."""
    from .plots import plot_run
    from .report import write_report

    write_json(run_dir / "summary.json", summary)
    plot_run(run_dir)
    return write_report(run_dir)
