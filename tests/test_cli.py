import gc
import subprocess
import sys

import pytest
import torch

from rnnkit.cli import main, run, set_threads


def rnnkit(*args):
    return subprocess.run([sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True, timeout=120)


def test_namaskar_learns_every_next_letter():
    run = rnnkit("namaskar")
    assert run.returncode == 0, run.stderr
    assert "next-letter accuracy 7/7 = 100%" in run.stdout
    losses = [float(line.split("loss")[1].split()[0]) for line in run.stdout.splitlines() if line.startswith("step")]
    assert losses[-1] < 0.05 * losses[0]


@pytest.mark.parametrize("args", [
    ["namaskar", "--steps", "0"],
    ["namaskar", "--hidden-size", "-3"],
    ["namaskar", "--learning-rate", "nan"],
    ["--threads", "0", "namaskar"],
    ["no-such-command"],
])
def test_nonsense_flags_exit_2_with_one_message(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_program_freezes_the_collector_on_its_way_out(monkeypatch, capsys):
    """run(), the `rnnkit` program, leaves the objects alive at its end to the exit alone (gc.freeze),
    even when the command fails; main(), which the tests call, does not."""
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(sys, "argv", ["rnnkit", "namaskar", "--steps", "0"])
    try:
        with pytest.raises(SystemExit):
            main(sys.argv[1:])
        assert gc.get_freeze_count() == 0
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 2
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_small_model_commands_default_to_one_thread_and_threads_overrides(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    set_threads(None, "classify")  # a small model: one thread
    set_threads(None, "train")     # the text model: torch's default, left alone
    set_threads(3, "tag")          # --threads wins
    assert chosen == [1, 3]
