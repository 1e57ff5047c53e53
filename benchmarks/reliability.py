"""Reliability figures: run the tests/reliability/ suite and write what it proved into the
`reliability` section of benchmarks/RESULTS.md (kills survived, steps of resume equality,
inputs tried by hypothesis, faults simulated, time taken).

    OMP_NUM_THREADS=1 python benchmarks/reliability.py [--out benchmarks/RESULTS.md]
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rnnkit.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/reliability.py"


def run_suite() -> tuple[dict, str, float, float]:
    """(figures, pytest's last line, wall seconds, CPU seconds) of one run of the suite."""
    with tempfile.TemporaryDirectory() as folder:
        figures_path = Path(folder) / "figures.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RNNKIT_RELIABILITY_FIGURES": str(figures_path)}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        last_line = done.stdout.strip().splitlines()[-1]
        if done.returncode != 0:
            sys.exit(f"the reliability suite failed:\n{done.stdout[-3000:]}")
        return json.loads(figures_path.read_text()), last_line, wall, usage.ru_utime + usage.ru_stime


def section(figures: dict, last_line: str, wall: float, cpu: float) -> str:
    tests = re.sub(r"\s+in [\d.]+s.*", "", last_line.strip("= "))
    return "\n".join([
        BEGIN,
        "## Reliability (issue 5; `benchmarks/reliability.py` runs `tests/reliability/`)",
        "",
        f"`{COMMAND}` — **1 thread**, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}: {tests}; {wall:.0f} s wall, {cpu:.0f} s CPU (machine shared with other work).",
        "",
        "| what | figure | nothing lost means |",
        "|---|---:|---|",
        f"| `kill -9` survived | {figures['kills survived']} | after each, `last.pt` (and `best.pt`) load, "
        "the saved step never goes back, training resumes from it |",
        f"| … of them inside a checkpoint write | {figures['kills inside a checkpoint write']} | "
        "the temporary file was left, the previous checkpoint was whole; resume removes the temporary |",
        f"| steps of the killed run compared with a run never killed | {figures['steps compared with a run never killed']} | "
        "every metrics row (clock columns aside), samples.txt, gradient_flow.csv and the weights equal, bit for bit |",
        f"| hostile inputs tried by hypothesis | {figures['inputs tried by hypothesis']} | "
        "files (empty, binary, non-UTF-8, 300 kB lines), prompts with unseen characters, absurd flags: "
        "a result or exit 2 with one `error:` line; no traceback, no partial output or run folder |",
        f"| disk full / read-only faults simulated | {figures['disk fault scenarios']} | "
        "(ENOSPC/EROFS at create, fsync, rename; at config.json and mid-training) one-line error, "
        "previous checkpoint byte-identical, no temporary file |",
        f"| NaN/Inf fault scenarios | {figures['NaN/Inf fault scenarios']} | "
        "(NaN loss, infinite gradient, overflowing update × skip/rollback/stop) caught at their step, "
        "counted in `skipped_steps`; no checkpoint with a non-finite weight is ever written |",
        END,
    ])


def write_section(path: Path, text: str) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    atomic_write_text(path, new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    text = section(*run_suite())
    print(text)
    write_section(Path(args.out), text)


if __name__ == "__main__":
    main()
