"""Every Python code block in the README and in docs/ runs, so the documentation cannot rot."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"README-block-{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes (runs/) lands in a fresh folder
    exec(compile(code, "README.md", "exec"), {})


DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("page", DOC_PAGES, ids=[page.name for page in DOC_PAGES])
def test_docs_page_python_blocks_run_in_order(page, tmp_path, monkeypatch):
    """A page's blocks build on each other, as a reader would type them, in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        exec(compile(code, str(page), "exec"), namespace)


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in DOC_PAGES:
        if page.name != "README.md":
            assert f"]({page.name})" in index, page.name


def test_readme_has_exactly_the_two_quick_start_commands():
    quick_start = (ROOT / "README.md").read_text().split("## Quick start")[1].split("##")[0]
    commands = re.findall(r"^make \w+", quick_start, flags=re.M)
    assert commands == ["make demo", "make test"]


def readme_commands(section: str) -> list[str]:
    body = (ROOT / "README.md").read_text().split(f"## {section}")[1].split("\n## ")[0]
    (block,) = re.findall(r"```sh\n(.*?)```", body, flags=re.S)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_every_text_model_command_in_the_readme_runs(tmp_path):
    """Each README command, run as written except for budgets and sizes made tiny and the
    placeholder file names given real files (the torchrun line is covered by test_distributed)."""
    import shlex
    import subprocess
    import sys

    book = "It was the best of times, it was the worst of times.\n" * 60
    (tmp_path / "my_book.txt").write_text(book)
    (tmp_path / "other.txt").write_text(book[:500])
    tiny = ["--max-steps", "3", "--hidden-size", "16", "--layers", "1", "--batch-size", "4", "--quiet"]
    commands = readme_commands("The text model")
    assert len(commands) == 10
    for command in commands:
        words = shlex.split(command)
        if words[0] == "torchrun":
            continue
        if "--minutes" in words:
            at = words.index("--minutes")
            del words[at:at + 2]
        if words[1:3] == ["train", "text"]:
            words += ["--max-steps", "6"] if "--resume" in words else tiny
        if words[1] == "generate":
            words += ["--length", "20"]
        done = subprocess.run([sys.executable, "-m", "rnnkit", *words[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    assert (tmp_path / "runs" / "diagnose" / "gradient_decay.png").exists()


TINY_TASK_FLAGS = {  # the same commands, with budgets and sizes made tiny
    "forecast": ["--origins", "1", "--max-steps", "5", "--ensemble", "1", "--hidden-size", "8",
                 "--baselines", "naive,seasonal_naive", "--quiet"],
    "classify": ["--max-steps", "3", "--hidden-size", "8", "--quiet"],
    "caption": ["--max-steps", "3", "--hidden-size", "8", "--encoder-size", "8", "--quiet"],
    "compare": ["--delays", "3", "--cells", "elman,lstm", "--max-steps", "3", "--hidden-size", "8", "--quiet"],
    "tag": ["--max-chars", "60000", "--max-steps", "3", "--hidden-size", "8", "--quiet"],
    "translate": ["--max-steps", "3", "--hidden-size", "8", "--val-size", "10", "--test-size", "10", "--quiet"],
}


def test_every_task_command_in_the_readme_runs(tmp_path, monkeypatch, capsys):
    """Each README task command in order (later ones use the runs earlier ones wrote), with
    tiny budgets; the placeholder files are real files of the documented formats."""
    import shlex

    from sklearn.datasets import load_digits

    from rnnkit.cli import main

    monkeypatch.chdir(tmp_path)
    months = [f"20{10 + i // 12}-{i % 12 + 1:02d}-01,{100 + 10 * (i % 12) + i}" for i in range(72)]
    (tmp_path / "sales.csv").write_text("month,sales\n" + "\n".join(months) + "\n")
    waves = [f"f{k},{','.join(f'{(t * k) % 7},{(t + k) % 5}' for t in range(6))}" for k in (1, 2, 3) for _ in range(20)]
    (tmp_path / "waves.csv").write_text("label,values\n" + "\n".join(waves) + "\n")
    images = load_digits().data[:3].astype(int)
    (tmp_path / "images.csv").write_text("\n".join(",".join(map(str, row)) for row in images) + "\n")
    commands = readme_commands("Tasks")
    assert {shlex.split(c)[1] for c in commands} >= set(TINY_TASK_FLAGS) | {"predict", "export"}
    for command in commands:
        words = shlex.split(command)
        main(words[1:] + TINY_TASK_FLAGS.get(words[1], []))
        assert capsys.readouterr().out.endswith("\n"), command  # (an untrained translator may write "")
    assert (tmp_path / "runs" / "digits" / "export" / "classifier.onnx").is_file()
    assert (tmp_path / "runs" / "sales" / "report.html").is_file()
