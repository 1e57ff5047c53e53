"""kill -9 at random moments, mid-save included: the last complete checkpoint always loads,
training always resumes from it, and a run killed 20 times ends where a run never killed
ends: the same metrics rows (clock columns aside), samples and gradient flow byte for byte,
and exactly the same weights."""

import csv
import multiprocessing
import os
import random
import signal
import time

import torch

from conftest import small_trainer
from rnnkit.train.checkpoint import load_checkpoint

KILLS = 20
HOLD_EVERY = 4           # every 4th kill lands inside a checkpoint write, on purpose
UNLIMITED = 10**6        # the killed children's budget: they never finish on their own
# Columns that depend on the clock, not on the computation.
TIMING = ("elapsed_s", "tokens_per_s")


def train_in_child(corpus, run_dir, hold_in_save):
    """Resume (or start) the run and train until killed. With `hold_in_save`, the first
    checkpoint write blocks after its temporary file is complete and before the rename."""
    trainer = small_trainer(corpus, run_dir, max_steps=UNLIMITED)
    if (run_dir / "last.pt").exists():
        trainer.resume(run_dir / "last.pt")
    if hold_in_save is not None:
        real_fsync = os.fsync

        def fsync_then_hold(fd):
            real_fsync(fd)
            hold_in_save.set()
            time.sleep(60)

        os.fsync = fsync_then_hold  # this forked child only
    trainer.fit()


def deterministic_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as file:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(file)]


def test_twenty_kills_lose_nothing(tmp_path, corpus, figures):
    small_trainer(corpus, tmp_path / "warm-up", max_steps=2).fit()  # lazy imports, before forking
    run_dir = tmp_path / "killed"
    fork = multiprocessing.get_context("fork")  # the child starts training at once: torch is loaded
    delays = random.Random(20)
    saved_steps, kills_mid_save = [], 0
    for kill in range(KILLS):
        hold = fork.Event() if kill % HOLD_EVERY == HOLD_EVERY - 1 else None
        child = fork.Process(target=train_in_child, args=(corpus, run_dir, hold))
        child.start()
        if hold is not None:
            assert hold.wait(60), "the child never reached a checkpoint write"
        else:
            time.sleep(delays.uniform(0.02, 0.6))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        kills_mid_save += any(run_dir.glob(".*.tmp"))  # a write cut short leaves its temporary file
        if not (run_dir / "last.pt").exists():  # killed before its first checkpoint
            assert not saved_steps
            continue
        checkpoint = load_checkpoint(run_dir / "last.pt")  # the last complete checkpoint loads
        if (run_dir / "best.pt").exists():
            load_checkpoint(run_dir / "best.pt")
        saved_steps.append(checkpoint["trainer"]["step"])
        assert saved_steps == sorted(saved_steps)  # progress saved is never lost
    assert kills_mid_save >= KILLS // HOLD_EVERY and saved_steps[-1] > 0

    # Resume once more and finish; a run never killed must end the same way.
    steps = saved_steps[-1] + 3
    resumed = small_trainer(corpus, run_dir, max_steps=steps)
    resumed.resume(run_dir / "last.pt")
    resumed.fit()
    straight_dir = tmp_path / "straight"
    straight = small_trainer(corpus, straight_dir, max_steps=steps)
    straight.fit()

    rows = deterministic_rows(run_dir)
    assert [int(row["step"]) for row in rows] == list(range(1, steps + 1))
    assert rows == deterministic_rows(straight_dir)
    for name in ("samples.txt", "gradient_flow.csv"):
        assert (run_dir / name).read_bytes() == (straight_dir / name).read_bytes(), name
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not any(run_dir.glob(".*.tmp"))  # resuming cleared what the kills left
    figures["kills survived"] += KILLS
    figures["kills inside a checkpoint write"] += kills_mid_save
    figures["steps compared with a run never killed"] += steps
