"""Figures and the HTML report of a run folder, and the atomic writers they go through."""

import base64
import html
import json
import re

import matplotlib.image
import numpy as np
import pytest

from rnnkit.files import atomic_write_bytes, atomic_write_text, read_csv_columns, write_json
from rnnkit.plots import plot_gradient_flow, plot_lines, plot_run, plot_training_curves
from rnnkit.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = {
    "task": "text",
    "model": {"cell": "lstm", "hidden_size": 512, "layers": 2},
    "train": {"lr": 0.003, "steps": 200},
}
SAMPLES = [
    "the quick brown fox",
    "  indented line\nand a second one",
    "a < b && c > d",
    "last sample <script>alert('x')</script> & done",
]


def write_metrics(path, rows):
    header = "step,elapsed_s,tokens_per_s,lr,train_loss,train_bpc,grad_norm,update_ratio,val_loss,val_bpc"
    path.write_text("\n".join([header, *(",".join(str(cell) for cell in row) for row in rows)]) + "\n")


@pytest.fixture
def run_dir(tmp_path):
    """A fake run folder with every file a finished run can have, except summary.json."""
    run = tmp_path / "runs" / "lstm-demo"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(CONFIG))

    rows = []
    for i in range(20):
        step = 10 * (i + 1)
        loss = 4.0 * np.exp(-step / 80) + 1.2
        lr = 0.003 * min(1.0, step / 50)  # warm-up, so the learning-rate panel is drawn
        evaluated = step % 50 == 0
        val = (f"{loss + 0.1:.4f}", f"{(loss + 0.1) / np.log(2):.4f}") if evaluated else ("", "")
        rows.append((step, step / 10, 5000, lr, f"{loss:.4f}", f"{loss / np.log(2):.4f}", 1.5, 1e-3, *val))
    write_metrics(run / "metrics.csv", rows)

    # ∂L/∂h_t shrinks going back in time (forward) or forward in time (backward), less so later in training.
    lines = ["step,layer,direction,t,grad_norm"]
    for step, decay in ((0, 0.3), (100, 0.15), (200, 0.05)):
        for layer in range(2):
            for direction in ("forward", "backward"):
                for t in range(30):
                    distance = 29 - t if direction == "forward" else t
                    lines.append(f"{step},{layer},{direction},{t},{np.exp(-decay * distance):.6g}")
    (run / "gradient_flow.csv").write_text("\n".join(lines) + "\n")

    (run / "samples.txt").write_text("".join(f"=== step {50 * (i + 1)} ===\n{s}\n" for i, s in enumerate(SAMPLES)))
    return run


def assert_drawn_png(path):
    """A valid PNG with something drawn on it: its pixels are not all one colour."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(path).std() > 0.02


def assert_no_temp_files(folder):
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


# -----------------------------------------------------------------------------
# figures


def test_training_curves(run_dir):
    out = plot_training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png")
    assert out == run_dir / "training_curves.png"
    assert_drawn_png(out)


def test_training_curves_from_one_row_without_validation(tmp_path):
    write_metrics(tmp_path / "metrics.csv", [(10, 1.0, 5000, 0.003, 4.1, 5.9, 1.5, 1e-3, "", "")])
    assert_drawn_png(plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png"))


def test_gradient_flow(run_dir):
    assert_drawn_png(plot_gradient_flow(run_dir / "gradient_flow.csv", run_dir / "gradient_flow.png"))


def test_plot_lines(tmp_path):
    series = {"lstm": ([1, 2, 4, 8], [10.0, 5.0, 3.0, 2.5]), "gru": ([1, 2, 4, 8], [9.0, 4.0, 2.0, 1.0])}
    out = plot_lines(series, tmp_path / "bench.png", title="speed", xlabel="batch", ylabel="ms", logy=True)
    assert_drawn_png(out)


# -----------------------------------------------------------------------------
# report


def test_report_inlines_figures_config_and_escaped_samples(run_dir):
    plot_run(run_dir)
    (run_dir / "a_extra.png").write_bytes((run_dir / "gradient_flow.png").read_bytes())  # someone else's figure
    page = write_report(run_dir).read_text()

    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 == len(list(run_dir.glob("*.png")))
    assert base64.b64decode(images[0]) == (run_dir / "training_curves.png").read_bytes()  # curves first
    assert page.index("gradient flow") < page.index("a extra")  # then gradient flow, then the rest

    assert "hidden_size" in page and "512" in page and "lstm" in page
    assert html.escape(SAMPLES[-1]) in page
    assert SAMPLES[0] not in page  # only the last three samples
    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page
    assert "best val_loss (step 200)" in page  # no summary.json: metrics.csv stands in

    write_json(run_dir / "summary.json", {"val_bpc": 1.9, "test_bpc": 1.95, "steps": 200})
    page = write_report(run_dir).read_text()
    assert "test_bpc" in page and "1.95" in page and "best val_loss" not in page
    assert_no_temp_files(run_dir)  # every figure, report and JSON write was atomic


def test_report_of_a_run_that_just_started(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    write_metrics(tmp_path / "metrics.csv", [(10, 1.0, 5000, 0.003, 4.1, 5.9, 1.5, 1e-3, "", "")])
    page = write_report(tmp_path).read_text()
    assert "last logged (step 10)" in page and "hidden_size" in page
    assert "<img" not in page and "Samples" not in page
    assert "http://" not in page and "https://" not in page


# -----------------------------------------------------------------------------
# files


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "note.txt"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # fails mid-write
    assert path.read_text() == "old"  # the previous file survives whole
    assert_no_temp_files(tmp_path)


def test_write_json_and_read_csv_columns(tmp_path):
    obj = {"z": 1, "a": {"name": "नमस्कार", "values": [1.5, None]}}
    text = write_json(tmp_path / "deep" / "obj.json", obj).read_text(encoding="utf-8")
    assert json.loads(text) == obj and text.index('"z"') < text.index('"a"') and "नमस्कार" in text

    (tmp_path / "m.csv").write_text("step,val_loss\n1,\n2,3.5\n3")  # last line still being appended
    assert read_csv_columns(tmp_path / "m.csv") == {"step": ["1", "2"], "val_loss": ["", "3.5"]}
