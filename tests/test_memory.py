"""Delayed recall: the generated task, the gradient's reach, and the comparison end to end."""

import csv
import json

import pytest
import torch

from rnnkit.cli import main
from rnnkit.tasks.memory import MemoryConfig, MemoryTask, recall_batch


def test_recall_batch_by_hand():
    inputs, targets = recall_batch(50, 6, 4, torch.Generator().manual_seed(0))
    assert inputs.shape == (50, 6, 5) and targets.shape == (50,)
    assert torch.equal(inputs[:, 0, :4].argmax(-1), targets)  # the first step shows the answer
    assert torch.equal(inputs[..., :4].sum(-1), torch.ones(50, 6))  # one symbol at every step
    assert inputs[:, -1, 4].eq(1).all() and inputs[:, :-1, 4].eq(0).all()  # the query flag, last step only
    assert len(set(inputs[:, 1:, :4].argmax(-1).flatten().tolist())) == 4  # distractors use the whole alphabet


def test_gradient_reach_vanishes_for_elman_not_for_gated_cells():
    config = MemoryConfig(hidden_size=32)
    reach = {cell: MemoryTask(config, cell, delay=25).gradient_reach() for cell in ("elman", "lstm", "gru")}
    assert reach["elman"] < 1e-4  # geometric decay over 24 Jacobians
    assert reach["lstm"] > 1e-2 and reach["gru"] > 1e-2  # the open keep gate carries it
    closed = MemoryTask(MemoryConfig(hidden_size=32, keep_gate_bias=0.0), "lstm", delay=25).gradient_reach()
    assert closed < reach["lstm"] / 100  # PyTorch's init (f ≈ ½) lets it fade as well


def test_compare_memory_end_to_end(tmp_path, capsys):
    main(["compare", "memory", "--delays", "3,4", "--cells", "elman,lstm", "--hidden-size", "32",
          "--max-steps", "120", "--eval-every", "60", "--runs-dir", str(tmp_path), "--name", "mem"])
    run = tmp_path / "mem"
    with open(run / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["cell"], r["delay"]) for r in rows] == [("elman", "3"), ("elman", "4"), ("lstm", "3"), ("lstm", "4")]
    assert all(float(r["test_accuracy"]) > 0.9 for r in rows), rows  # chance is 1/8
    for name in ("accuracy_vs_delay.png", "gradient_reach_vs_delay.png", "report.html", "elman-T3/best.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["memory"]["delays"] == [3, 4]
    assert "lstm T=4" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, message", [
    ("--cells", "elman,cnn", "invalid comma-separated list value: 'elman,cnn'"),
    ("--delays", "5,x", "expected a positive integer, got 'x'"),
    ("--delays", "0", "expected a positive integer, got '0'"),
])
def test_bad_flags_exit_2(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "memory", flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
