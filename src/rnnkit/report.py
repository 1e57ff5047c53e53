"""A self-contained HTML report of one run folder: numbers, figures, samples, config.

Everything is inlined (PNGs as base64 data URIs, a small <style>; no scripts, fonts or links),
so report.html opens offline, can be mailed, and renders without network requests. A section
whose file is missing is left out, so a report can be written at any point of a run.
"""

import base64
import datetime
import html
import json
import math
import re
from pathlib import Path

from rnnkit import __version__
from rnnkit.files import atomic_write_text, read_csv_columns

FIGURE_ORDER = ("training_curves", "gradient_flow")  # PNGs named so come first, the rest by name
SAMPLES_SHOWN = 3
SAMPLE_HEADER = re.compile(r"^=== (.*?) ===[ \t]*$", re.MULTILINE)  # e.g. "=== step 500 ==="

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.generated { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
td table { margin: 0; font-size: 0.95em; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
"""


def write_report(run_dir):
    """Write run_dir/report.html atomically from whatever the run folder holds; return its path."""
    run_dir = Path(run_dir)
    sections = [make(run_dir) for make in (_metrics_section, _figures_section, _samples_section, _config_section)]
    name = html.escape(run_dir.resolve().name)
    generated = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
    # The "data:," icon stops browsers from requesting /favicon.ico when the page is served.
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{name} · rnnkit report</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{name}</h1>
<p class="generated">generated {generated} by rnnkit {__version__}</p>
{"".join(sections)}
</body>
</html>
"""
    return atomic_write_text(run_dir / "report.html", page)


def _section(title, body):
    return f"<section>\n<h2>{html.escape(title)}</h2>\n{body}\n</section>\n"


# -----------------------------------------------------------------------------
# formatting values


def _parse_cell(cell):
    """A CSV cell as a number if it is one, None if it is empty, else the string itself."""
    if not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


def _format(value):
    """Whole numbers without a decimal point, other floats to 4 significant digits, lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    return str(value)


def _value_html(value):
    """A value as escaped HTML: a dict as a two-column table (nested dicts nest), the rest as text."""
    if isinstance(value, dict):
        rows = "".join(
            f"<tr><th>{html.escape(str(key))}</th><td>{_value_html(item)}</td></tr>" for key, item in value.items()
        )
        return f"<table>{rows}</table>"
    return html.escape(_format(value))


# -----------------------------------------------------------------------------
# sections


def _metrics_section(run_dir):
    """summary.json if the run has finished; otherwise the last row of metrics.csv, and the row
    with the best val_loss next to it."""
    if (run_dir / "summary.json").exists():
        return _section("Summary", _value_html(json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))))
    if not (run_dir / "metrics.csv").exists():
        return ""
    columns = read_csv_columns(run_dir / "metrics.csv")
    steps = columns.get("step", [])
    if not steps:
        return ""
    picks = {f"last logged (step {steps[-1]})": len(steps) - 1}
    val_loss = [_parse_cell(cell) for cell in columns.get("val_loss", [])]
    evaluated = [row for row, loss in enumerate(val_loss) if isinstance(loss, float) and math.isfinite(loss)]
    if evaluated:
        best_row = min(evaluated, key=val_loss.__getitem__)
        picks[f"best val_loss (step {steps[best_row]})"] = best_row
    header = "".join(f"<th>{html.escape(title)}</th>" for title in ["metric", *picks])
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f'<td class="number">{html.escape(_format(_parse_cell(cells[row])))}</td>' for row in picks.values())
        + "</tr>"
        for name, cells in columns.items()
    )
    return _section("Metrics", f"<table><tr>{header}</tr>{rows}</table>")


def _figure_order(png):
    rank = next((i for i, prefix in enumerate(FIGURE_ORDER) if png.stem.startswith(prefix)), len(FIGURE_ORDER))
    return rank, png.name


def _figures_section(run_dir):
    """Every PNG of the run folder, inlined as a data URI, with a caption made from its name."""
    figures = []
    for png in sorted(run_dir.glob("*.png"), key=_figure_order):
        caption = html.escape(png.stem.replace("_", " ").replace("-", " "))
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return _section("Figures", "\n".join(figures)) if figures else ""


def _samples_section(run_dir):
    """The last SAMPLES_SHOWN samples of samples.txt, each under its "=== step N ===" header."""
    if not (run_dir / "samples.txt").exists():
        return ""
    text = (run_dir / "samples.txt").read_text(encoding="utf-8", errors="replace")
    parts = SAMPLE_HEADER.split(text)  # [text before the first header, header, sample, header, sample, ...]
    samples = list(zip(parts[1::2], parts[2::2])) or [("samples", text)]
    samples = [(header, sample.strip("\n")) for header, sample in samples[-SAMPLES_SHOWN:] if sample.strip()]
    blocks = [f"<h3>{html.escape(header)}</h3>\n<pre>{html.escape(sample)}</pre>" for header, sample in samples]
    return _section(f"Samples (last {len(blocks)})", "\n".join(blocks)) if blocks else ""


def _config_section(run_dir):
    if not (run_dir / "config.json").exists():
        return ""
    return _section("Config", _value_html(json.loads((run_dir / "config.json").read_text(encoding="utf-8"))))
