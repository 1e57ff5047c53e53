"""Shared pieces of the reliability suite: a small corpus, a small trainer, and the figures.

`figures` collects what the suite proved (kills survived, steps compared, inputs tried);
with RNNKIT_RELIABILITY_FIGURES=path set, they are written there as JSON at the end of the
session (benchmarks/reliability.py turns them into benchmarks/RESULTS.md's section).
"""

import json
import os
from collections import Counter

import pytest
import torch

from rnnkit.tasks.text import TextConfig, TextTask
from rnnkit.train.trainer import TrainConfig, Trainer

TEXT = "the quick brown fox jumps over the lazy dog. " * 30 + "pack my box with five dozen liquor jugs!\n" * 30


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def small_trainer(corpus, run_dir, **train_changes) -> Trainer:
    """A 16-unit LSTM on `corpus`, evaluated every 2 steps: a checkpoint every few milliseconds."""
    torch.manual_seed(0)
    task = TextTask(TextConfig(corpus=str(corpus), hidden_size=16, embedding_size=8, batch_size=4, bptt=10,
                               eval_streams=2, sample_length=20))
    settings = dict(max_steps=20, eval_every=2, log_every=1, learning_rate=1e-2, schedule="constant")
    config = TrainConfig(**{**settings, **train_changes})
    run_dir.mkdir(exist_ok=True)
    run_config = {"task": "text", "text": vars(task.config), "train": vars(config), "vocab": task.vocab.to_json()}
    return Trainer(task, config, run_dir, run_config, quiet=True)


@pytest.fixture(scope="session")
def figures():
    counts = Counter()
    yield counts
    path = os.environ.get("RNNKIT_RELIABILITY_FIGURES")
    if path:
        with open(path, "w") as file:
            json.dump(dict(counts), file, indent=2)
