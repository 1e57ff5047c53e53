"""A real run's report.html in headless Chromium: every figure renders, nothing reaches the
network, no console error. Skipped (with the install command) only where Chromium is missing."""

import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from rnnkit.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--enable-logging=stderr", "--v=0"]
WIDTH = 1024
TEXT = "the quick brown fox jumps over the lazy dog. " * 20 + "pack my box with five dozen liquor jugs!\n" * 20
# Chromium logs every console message as `...:INFO:CONSOLE(line)] "message", source: url (line)`
# (or `CONSOLE:` in newer builds); an uncaught exception or a failed load is one of them.
CONSOLE_LINE = re.compile(r"CONSOLE[(:]")
# Appended to a copy of the page: after load, where each <img> was laid out and whether it decoded.
PROBE = """<script>
addEventListener("load", () => {
  const figures = [...document.images].map(img => {
    const box = img.getBoundingClientRect();
    return {alt: img.alt, decoded: img.complete && img.naturalWidth > 0,
            box: [box.left + scrollX, box.top + scrollY, box.width, box.height]};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.hidden = true;
  out.textContent = JSON.stringify({figures, height: document.documentElement.scrollHeight});
  document.body.append(out);
});
</script>"""


def chromium(page, tmp_path, *args):
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
                             page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def figure_problems(report, tmp_path):
    """What is wrong with the report as Chromium shows it: one line per problem."""
    probe_page = report.with_name(".probe-report.html")  # beside it, so relative paths would resolve alike
    probe_page.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        dom = chromium(probe_page, tmp_path, "--dump-dom").stdout
    finally:
        probe_page.unlink()
    layout = json.loads(html.unescape(re.search(r'<pre id="probe" hidden="">(.*?)</pre>', dom, re.S).group(1)))
    screenshot = tmp_path / "screenshot.png"
    shown = chromium(report, tmp_path, f"--screenshot={screenshot}", f"--window-size={WIDTH},{layout['height']}")
    problems = [line for line in shown.stderr.splitlines() if CONSOLE_LINE.search(line)]
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    for figure in layout["figures"]:
        left, top, width, height = (round(v) for v in figure["box"])
        region = pixels[top:top + height, left:left + width]
        if not figure["decoded"] or width < 100 or height < 100:
            problems.append(f"figure {figure['alt']!r} did not render ({width}x{height} px)")
        elif region.std() < 10 or len(np.unique(region)) < 8:  # a plot has axes, text and lines
            problems.append(f"figure {figure['alt']!r} is blank (pixel std {region.std():.1f})")
    return problems, layout["figures"], dom


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    (folder / "corpus.txt").write_text(TEXT, encoding="utf-8")
    main(["train", "text", "--corpus", str(folder / "corpus.txt"), "--max-steps", "4", "--eval-every", "2",
          "--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--bptt", "16",
          "--runs-dir", str(folder), "--name", "run", "--quiet"])
    return folder / "run"


def test_every_figure_renders_without_console_errors(run_dir, tmp_path):
    problems, figures, dom = figure_problems(run_dir / "report.html", tmp_path)
    assert problems == []
    sections = [title.split(" (")[0] for title in re.findall(r"<h2>(.*?)</h2>", dom)]
    assert sections == ["Summary", "Figures", "Samples", "Config"]  # "Samples (last N)"
    assert sorted(figure["alt"] for figure in figures) == sorted(
        png.stem.replace("_", " ") for png in run_dir.glob("*.png"))
    assert {"training curves", "gradient flow"} <= {figure["alt"] for figure in figures}


def test_the_report_needs_no_network(run_dir):
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "a link or source outside the page"
    assert all(source.startswith("data:") for source in re.findall(r'<img src="([^"]*)"', page))
    assert "url(" not in page and "@import" not in page


def test_the_check_catches_a_blank_figure_and_a_console_error(tmp_path):
    white = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(white, format="PNG")
    data = base64.b64encode(white.getvalue()).decode("ascii")
    page = tmp_path / "broken.html"
    page.write_text(f"""<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>
<img src="data:image/png;base64,{data}" alt="blank plot">
<img src="missing.png" alt="missing plot" width="300" height="200">
<script>console.error("something broke")</script></body></html>""", encoding="utf-8")
    problems, _, _ = figure_problems(page, tmp_path)
    assert any("'blank plot' is blank" in line for line in problems)
    assert any("'missing plot' did not render" in line for line in problems)
    assert any("something broke" in line for line in problems)
