"""The trainer and the character language model, end to end on small budgets."""

import csv
import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.text import StreamBatches, Vocabulary
from rnnkit.train.trainer import bf16_is_supported
from rnnkit.tasks.text import (TextConfig, TextTask, beam_search, build_model, exponential_noise, generate, load_run,
                                sample)
from rnnkit.train.checkpoint import load_checkpoint
from rnnkit.train.trainer import TrainConfig, Trainer

TEXT = "the quick brown fox jumps over the lazy dog. " * 40 + "pack my box with five dozen liquor jugs!\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def small_config(corpus, **changes):
    values = dict(corpus=str(corpus), hidden_size=48, num_layers=1, embedding_size=16, batch_size=8, bptt=20)
    return TextConfig(**{**values, **changes})


def train(tmp_path, corpus, name="run", max_steps=60, text_changes=None, **train_changes):
    torch.manual_seed(0)
    task = TextTask(small_config(corpus, **(text_changes or {})))
    settings = dict(max_steps=max_steps, eval_every=20, log_every=5, learning_rate=1e-2)
    config = TrainConfig(**{**settings, **train_changes})
    run_dir = tmp_path / name
    run_dir.mkdir()
    run_config = {"task": "text", "text": vars(task.config), "train": vars(config), "vocab": task.vocab.to_json()}
    trainer = Trainer(task, config, run_dir, run_config, quiet=True)
    return trainer, task, run_dir


def metric_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_carried_state_over_chunks_equals_one_long_pass(corpus):
    """Truncated BPTT's forward pass: chunk after chunk with the state carried is the long pass."""
    torch.manual_seed(0)
    task = TextTask(small_config(corpus))
    model = task.model.eval()
    batches = StreamBatches(task.val_ids, 2, 7)
    state, pieces = None, []
    with torch.no_grad():
        for inputs, _ in batches:
            logits, state = model(inputs, state)
            pieces.append(logits)
        whole, _ = model(batches.streams[:, :-1])
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_a_tiny_model_learns(tmp_path, corpus):
    trainer, task, run_dir = train(tmp_path, corpus, max_steps=150)
    summary = trainer.fit()
    assert summary["val_bpc"] < 1.5  # uniform over the vocabulary would be log2(V) ≈ 5.1
    rows = metric_rows(run_dir)
    assert float(rows[-1]["train_bpc"]) < 0.5 * float(rows[0]["train_bpc"])
    assert (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists()
    assert "=== step 150 ===" in (run_dir / "samples.txt").read_text()
    flow = (run_dir / "gradient_flow.csv").read_text().splitlines()
    assert flow[0] == "step,layer,direction,t,grad_norm" and len(flow) == 1 + 150 // 20 * 20 + 20


def test_gradient_clipping_bounds_the_update(tmp_path, corpus):
    trainer, _, _ = train(tmp_path, corpus, max_steps=1, clip_norm=1e-3)
    trainer.train_step()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_clip_by_value_bounds_every_entry(tmp_path, corpus):
    trainer, _, _ = train(tmp_path, corpus, max_steps=1, clip_value=1e-4, clip_norm=None)
    trainer.train_step()
    assert max(p.grad.abs().max().item() for p in trainer.model.parameters()) <= 1e-4


def test_interrupt_then_resume_continues_the_same_run(tmp_path, corpus):
    """SIGINT mid-run saves a checkpoint; resuming it reproduces the uninterrupted run exactly."""
    straight, _, straight_dir = train(tmp_path, corpus, "straight", max_steps=40, log_every=1)
    straight.fit()

    interrupted, task, resumed_dir = train(tmp_path, corpus, "resumed", max_steps=40, log_every=1)
    train_loss = task.train_loss

    def interrupt_at_step_13(model, batch, carry):
        if interrupted.step == 12:
            signal.raise_signal(signal.SIGINT)
        return train_loss(model, batch, carry)

    task.train_loss = interrupt_at_step_13
    summary = interrupted.fit()
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == 13

    resumed, _, _ = train(tmp_path, corpus, "unused", max_steps=40, log_every=1)
    resumed.run_dir = resumed_dir
    resumed.resume(resumed_dir / "last.pt")
    assert resumed.step == 13 and resumed.carry is not None
    resumed.fit()

    def losses(run_dir):
        return [(row["step"], row["train_loss"]) for row in metric_rows(run_dir)]

    assert losses(resumed_dir) == losses(straight_dir) and len(losses(straight_dir)) == 40
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_early_stopping(tmp_path, corpus):
    trainer, _, _ = train(tmp_path, corpus, max_steps=400, patience=1, learning_rate=5.0, clip_norm=None,
                          optimizer="sgd", schedule="constant")
    summary = trainer.fit()
    assert summary["stop_reason"] == "early stopping" and summary["steps"] < 400


def test_warmup_and_cosine_schedule(tmp_path, corpus):
    trainer, _, run_dir = train(tmp_path, corpus, max_steps=60, warmup_steps=10, min_lr_ratio=0.1)
    trainer.fit()
    lrs = [float(row["lr"]) for row in metric_rows(run_dir)]  # logged at steps 5, 10, …, 60
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 60))  # step 5 ran at progress 4/60
    assert lrs[0] == pytest.approx(1e-2 * (5 / 10) * cosine, rel=1e-3)  # half-way through warm-up
    assert lrs[1:] == sorted(lrs[1:], reverse=True) and lrs[-1] >= 1e-3 and lrs[1] > lrs[0]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adagrad"])
def test_every_optimizer_reduces_the_loss(tmp_path, corpus, optimizer):
    trainer, _, run_dir = train(tmp_path, corpus, max_steps=40, optimizer=optimizer,
                                learning_rate=1e-2 if optimizer != "sgd" else 1.0)
    trainer.fit()
    rows = metric_rows(run_dir)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 0.3


def test_sampling_draws_each_character_as_often_as_its_probability():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).expand(20000, -1)
    generator = torch.Generator().manual_seed(0)

    def noise():  # generate's noise
        return exponential_noise(*logits.shape, generator=generator)

    for temperature in (1.0, 0.5):
        drawn = sample(logits, temperature, noise=noise())[:, 0]
        frequencies = torch.bincount(drawn, minlength=5) / len(drawn)
        expected = torch.softmax(logits[0] / temperature, -1)
        # 20,000 draws: a frequency's standard error is at most 0.0036
        torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)
    top_two = sample(logits, top_k=2, noise=noise())[:, 0]
    assert set(top_two.tolist()) == {0, 1}
    assert torch.bincount(top_two)[0] / len(top_two) == pytest.approx(math.e / (math.e + 1), abs=0.015)
    # top_p = 0.6: the most likely (0.64 of the mass) alone reaches it
    assert set(sample(logits, top_p=0.6, noise=noise())[:, 0].tolist()) == {0}


def test_generation_refuses_a_model_whose_outputs_are_not_finite():
    vocab = Vocabulary(list("ab"))
    model = build_model(TextConfig(hidden_size=8, embedding_size=4), len(vocab))
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        generate(model, vocab, "ab", 5)
    with pytest.raises(ValueError, match="not finite"):
        beam_search(model, vocab, "ab", 5)


def test_generation_writes_the_same_text_with_or_without_the_compiled_loop(monkeypatch):
    """The compiled writing loop and the Python one (a draw and a step call per character) draw
    from the same noise: the same seed writes the same text, chunk after chunk."""
    vocab = Vocabulary(list("abcdef "))
    torch.manual_seed(0)
    model = build_model(TextConfig(hidden_size=16, embedding_size=8), len(vocab))
    streamed = []
    options = {"temperature": 0.9, "top_k": 5, "seed": 4, "num_samples": 2}
    compiled = generate(model, vocab, "ab", 300, on_text=streamed.append, **options)
    assert [len(text) for text in streamed] == [256, 44] and "".join(streamed) == compiled[0]
    assert len(set(compiled[0])) >= 5  # drawn, not stuck on one character
    monkeypatch.setattr(model, "writer", lambda half_weights: None)
    assert generate(model, vocab, "ab", 300, **options) == compiled


def test_generation_is_reproducible_and_keeps_its_state(tmp_path, corpus):
    trainer, task, _ = train(tmp_path, corpus, max_steps=100)
    trainer.fit()
    model, vocab = task.model, task.vocab
    a = generate(model, vocab, "the ", 50, seed=3, num_samples=2)
    assert a == generate(model, vocab, "the ", 50, seed=3, num_samples=2)
    assert all(len(s) == 50 for s in a)
    # Without gradients, so that the model's compiled writing loop runs (and no graph is kept).
    asked = []
    writer = model.writer
    model.writer = lambda half_weights: asked.append(torch.is_grad_enabled()) or writer(half_weights)
    generate(model, vocab, "the ", 5)
    del model.writer
    assert asked == [False]
    streamed = []
    greedy = generate(model, vocab, "the quick", 20, greedy=True, on_text=streamed.append)[0]
    assert "".join(streamed) == greedy
    # Carrying the state gives what re-reading the whole prefix gives.
    ids = vocab.encode("the quick" + greedy)
    with torch.no_grad():
        reread = model(ids[None, :-1])[0][0].argmax(-1)
    assert vocab.decode(reread[len("the quick") - 1:]) == greedy
    assert generate(model, vocab, "the ", 30, top_k=1, seed=1) == generate(model, vocab, "the ", 30, greedy=True)
    assert len(generate(model, vocab, "the ", 30, top_p=0.5, seed=1)[0]) == 30
    beam = beam_search(model, vocab, "the quick", 20, beam_width=4)
    assert len(beam) == 20


def cli(*args):
    return subprocess.run([sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True, timeout=300)


def test_cli_train_generate_eval(tmp_path, corpus):
    run = cli("train", "text", "--corpus", str(corpus), "--max-steps", "30", "--eval-every", "15",
              "--hidden-size", "32", "--layers", "1", "--batch-size", "8", "--bptt", "20",
              "--runs-dir", str(tmp_path), "--name", "demo", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "validation bpc" in run.stdout and "report:" in run.stdout
    run_dir = tmp_path / "demo"
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "summary.json", "samples.txt",
                 "training_curves.png", "gradient_flow.png", "report.html"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "config.json").read_text())["text"]["hidden_size"] == 32

    generated = cli("generate", str(run_dir), "--prime", "the ", "--length", "40", "--seed", "1")
    assert generated.returncode == 0 and generated.stdout.startswith("the ") and len(generated.stdout) >= 44
    halved = cli("generate", str(run_dir), "--prime", "the ", "--length", "40", "--seed", "1", "--half-weights")
    assert halved.returncode == 0 and halved.stdout.startswith("the ") and len(halved.stdout) >= 44
    evaluated = cli("eval", str(run_dir), "--corpus", str(corpus))
    assert evaluated.returncode == 0 and "bits per character" in evaluated.stdout

    resumed = cli("train", "text", "--resume", str(run_dir), "--max-steps", "45", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["step"] == 45


@pytest.mark.parametrize("make_args, message", [
    (lambda tmp, corpus: ["train", "text", "--corpus", str(tmp / "missing.txt")], "missing.txt"),
    (lambda tmp, corpus: ["train", "text", "--corpus", str(tmp / "empty.txt")], "empty"),
    (lambda tmp, corpus: ["train", "text", "--corpus", str(tmp / "binary.bin")], "binary"),
    (lambda tmp, corpus: ["train", "text", "--corpus", str(tmp / "latin1.txt")], "UTF-8"),
    (lambda tmp, corpus: ["train", "text", "--hidden-size", "0"], "positive integer"),
    (lambda tmp, corpus: ["generate", str(tmp / "no-run")], "does not exist"),
    (lambda tmp, corpus: ["generate", str(tmp / "no-run"), "--temperature", "0"], "temperature"),
    (lambda tmp, corpus: ["generate", str(tmp / "no-run"), "--temperature", "-1"], "temperature"),
    (lambda tmp, corpus: ["eval", str(tmp / "no-run")], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, corpus, capsys, make_args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(b"\x00\x01\x02abc")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        main(make_args(tmp_path, corpus) + (["--runs-dir", str(tmp_path / "runs")] if "train" in make_args(tmp_path, corpus) else []))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-made


def test_unknown_prime_characters_are_reported(tmp_path, corpus, capsys):
    trainer, task, run_dir = train(tmp_path, corpus, max_steps=5)
    trainer.fit()
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(run_dir), "--prime", "the 中文"])
    assert exit_info.value.code == 2 and "'中'" in capsys.readouterr().err
    main(["generate", str(run_dir), "--prime", "the 中", "--skip-unknown", "--length", "5"])
    captured = capsys.readouterr()
    assert "dropped" in captured.err and captured.out.startswith("the ")
    model, vocab, _ = load_run(run_dir)
    assert len(vocab) == len(set(TEXT))


def test_a_non_finite_loss_skips_the_update(tmp_path, corpus):
    trainer, task, run_dir = train(tmp_path, corpus, max_steps=10)
    train_loss = task.train_loss

    def poisoned_at_step_5(model, batch, carry):
        loss, carry = train_loss(model, batch, carry)
        return (loss * float("nan") if trainer.step == 4 else loss), carry

    task.train_loss = poisoned_at_step_5
    summary = trainer.fit()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 10
    saved = load_checkpoint(run_dir / "last.pt")["model"]
    assert all(torch.isfinite(weight).all() for weight in saved.values())


@pytest.mark.skipif(not bf16_is_supported("cpu"), reason="this CPU has no bfloat16 kernels (AVX512-BF16 or AMX)")
def test_bf16_training_learns_and_keeps_float32_weights(tmp_path, corpus):
    """precision="bf16": the forward pass runs in bfloat16 (the fused LSTM's outputs are
    bf16), yet the weights, optimizer state and evaluation stay float32 and the model learns."""
    trainer, task, run_dir = train(tmp_path, corpus, max_steps=150, precision="bf16")
    summary = trainer.fit()
    assert summary["precision"] == "bf16" and summary["val_bpc"] < 1.6
    assert all(p.dtype == torch.float32 for p in task.model.parameters())
    assert all(s.dtype == torch.float32 for s in trainer.optimizer.state_dict()["state"][0].values()
               if torch.is_tensor(s) and s.is_floating_point())
    assert trainer.carry[0].dtype == torch.bfloat16  # the state the fused LSTM handed on


def test_bf16_is_refused_where_the_cpu_has_no_bf16_kernels(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="precision bf16 is not supported on this cpu"):
        train(tmp_path, corpus, max_steps=1, precision="bf16")
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "text", "--corpus", str(corpus), "--precision", "bf16", "--runs-dir", str(runs)])
    assert exit_info.value.code == 2 and not runs.exists()  # refused before a run folder was made


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_fp32_and_auto_precision(tmp_path, corpus, precision):
    from rnnkit.train.trainer import bf16_is_native

    trainer, _, _ = train(tmp_path, corpus, max_steps=1, precision=precision)
    assert trainer.bf16 == (precision == "auto" and bf16_is_native("cpu"))
    with pytest.raises(ValueError, match="precision must be one of"):
        train(tmp_path, corpus, name="bad", precision="fp16")
