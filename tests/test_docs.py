"""Every Python code block in the README runs, so the README cannot rot."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"README-block-{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code):
    exec(compile(code, "README.md", "exec"), {})


def test_readme_has_exactly_the_two_quick_start_commands():
    quick_start = (ROOT / "README.md").read_text().split("## Quick start")[1].split("##")[0]
    commands = re.findall(r"^make \w+", quick_start, flags=re.M)
    assert commands == ["make demo", "make test"]
