"""--on-nan skip | rollback | stop: a NaN/Inf loss or gradient is caught at its step, handled,
reported, and never reaches a checkpoint."""

import csv
import json
import math

import pytest
import torch

from conftest import small_trainer
from rnnkit.cli import main
from rnnkit.train.checkpoint import load_checkpoint
from rnnkit.train.trainer import NonFiniteLoss


class InfiniteGradient(torch.autograd.Function):
    """The identity going forward; an infinite gradient coming back (the loss stays finite)."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def poison(trainer, at_step, fault):
    """Make step `at_step`'s loss NaN, or its gradient infinite."""
    train_loss = trainer.task.train_loss

    def poisoned(model, batch, carry):
        loss, carry = train_loss(model, batch, carry)
        if trainer.step + 1 == at_step:
            loss = loss * math.nan if fault == "nan loss" else InfiniteGradient.apply(loss)
        return loss, carry

    trainer.task.train_loss = poisoned


def metric_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def all_finite(state):
    return all(torch.isfinite(tensor).all() for tensor in state.values())


@pytest.mark.parametrize("fault", ["nan loss", "infinite gradient"])
def test_skip_drops_only_the_bad_update(tmp_path, corpus, figures, fault):
    figures["NaN/Inf fault scenarios"] += 1
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=8, on_nan="skip")
    poison(trainer, 5, fault)
    summary = trainer.fit()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 8 and summary["on_nan"] == "skip"
    rows = metric_rows(trainer.run_dir)
    assert [row["skipped_steps"] for row in rows] == ["0"] * 4 + ["1"] * 4
    assert float(rows[4]["update_ratio"]) == 0 and float(rows[5]["update_ratio"]) > 0
    assert {row["lr"] for row in rows} == {"1.000e-02"}  # skipping keeps the learning rate
    assert all_finite(load_checkpoint(trainer.run_dir / "last.pt")["model"])


@pytest.mark.parametrize("fault", ["nan loss", "infinite gradient"])
def test_rollback_returns_to_the_last_checkpoint_at_half_the_learning_rate(tmp_path, corpus, figures, fault):
    figures["NaN/Inf fault scenarios"] += 1
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=7, on_nan="rollback")
    poison(trainer, 7, fault)  # checkpoints at steps 2, 4, 6: the rollback goes to step 6
    at_step_6 = {}
    save = trainer.save

    def remember(name):
        save(name)
        if trainer.step == 6 and name == "last.pt":
            at_step_6.update(load_checkpoint(trainer.run_dir / name))

    trainer.save = remember
    summary = trainer.fit()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 7
    for name, weight in trainer.model.state_dict().items():
        assert torch.equal(weight, at_step_6["model"][name]), name
    restored = trainer.optimizer.state_dict()["state"]
    for index, state in at_step_6["optimizer"]["state"].items():
        assert torch.equal(restored[index]["exp_avg"], state["exp_avg"])
    assert load_checkpoint(trainer.run_dir / "last.pt")["trainer"]["lr_factor"] == 0.5  # resumes halved
    trainer.config.max_steps = 8
    trainer.fit()
    assert [row["lr"] for row in metric_rows(trainer.run_dir)][-2:] == ["1.000e-02", "5.000e-03"]


def test_stop_raises_and_saves_nothing_after_the_last_good_checkpoint(tmp_path, corpus, figures):
    figures["NaN/Inf fault scenarios"] += 1
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=20, on_nan="stop")
    poison(trainer, 5, "nan loss")
    with pytest.raises(NonFiniteLoss, match="step 5: loss nan"):
        trainer.fit()
    last = load_checkpoint(trainer.run_dir / "last.pt")
    assert last["trainer"]["step"] == 4 and all_finite(last["model"])


def test_a_non_finite_state_is_never_saved_over_a_good_checkpoint(tmp_path, corpus, figures):
    figures["NaN/Inf fault scenarios"] += 1
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=4)
    trainer.fit()
    before = {name: (trainer.run_dir / name).read_bytes() for name in ("best.pt", "last.pt")}
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = math.inf
    trainer.evaluations_without_improvement = 0  # as if it were the best evaluation yet
    trainer.save_checkpoints({"loss": 1.0})
    assert {name: (trainer.run_dir / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("policy", ["skip", "rollback"])
def test_updates_that_overflow_the_weights_are_undone(tmp_path, corpus, figures, policy):
    figures["NaN/Inf fault scenarios"] += 1
    """SGD at lr 1e30 without clipping: every update overflows, with finite loss and gradient."""
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=5, eval_every=1, optimizer="sgd",
                            learning_rate=1e30, clip_norm=None, on_nan=policy)
    initial = {name: weight.clone() for name, weight in trainer.model.state_dict().items()}
    summary = trainer.fit()
    assert summary["skipped_steps"] == 5
    rows = metric_rows(trainer.run_dir)
    assert [float(row["update_ratio"]) for row in rows] == [0.0] * 5
    halvings = range(5) if policy == "rollback" else [0] * 5
    assert [float(row["lr"]) for row in rows] == [pytest.approx(1e30 * 0.5 ** k) for k in halvings]
    for name in ("best.pt", "last.pt"):
        saved = load_checkpoint(trainer.run_dir / name)["model"]
        assert all(torch.equal(saved[key], initial[key]) for key in initial), name


def test_a_diverging_cli_run_with_on_nan_stop_exits_2_with_one_line(tmp_path, corpus, figures, capsys):
    figures["NaN/Inf fault scenarios"] += 1
    args = ["train", "text", "--corpus", str(corpus), "--hidden-size", "8", "--embedding-size", "4",
            "--batch-size", "4", "--bptt", "8", "--max-steps", "6", "--eval-every", "1", "--optimizer", "sgd",
            "--lr", "1e30", "--clip", "0", "--on-nan", "stop", "--runs-dir", str(tmp_path), "--name", "run", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnkit: error: step 1: update-to-weight ratio inf; training stopped") and err.count("\n") == 1
    assert all_finite(load_checkpoint(tmp_path / "run" / "last.pt")["model"])
    assert not (tmp_path / "run" / "metrics.csv").exists()  # nothing after the last good checkpoint


def test_exploding_gradients_are_shown_before_clipping_and_applied_after(tmp_path, corpus):
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=1, clip_norm=1e-3)
    _, grad_norm, _, _ = trainer.train_step()
    applied = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert grad_norm > 100 * 1e-3 and applied.item() == pytest.approx(1e-3, rel=1e-4)


def test_the_cli_reports_nan_events_in_its_output_and_summary(tmp_path, corpus, capsys):
    main(["train", "text", "--corpus", str(corpus), "--hidden-size", "8", "--embedding-size", "4",
          "--batch-size", "4", "--bptt", "8", "--max-steps", "3", "--eval-every", "3", "--optimizer", "sgd",
          "--lr", "1e30", "--clip", "0", "--on-nan", "skip", "--runs-dir", str(tmp_path), "--name", "run", "--quiet"])
    captured = capsys.readouterr()
    assert "3 steps had a NaN/Inf loss, gradient or update and were not applied (--on-nan skip)" in captured.out
    assert captured.err.count("update skipped") == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["on_nan"] == "skip"
