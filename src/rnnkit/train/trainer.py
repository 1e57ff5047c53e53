"""The one training loop every task shares.

A task supplies the data and the loss; the `Trainer` does everything else: optimizer and
learning-rate schedule, gradient clipping, the truncated-BPTT carry, evaluation, early
stopping, best-and-last checkpoints, resuming, interrupts, metrics and the progress bar.

What a task provides (see `rnnkit.tasks.text.TextTask` for a full one):

    model                       the nn.Module being trained
    metric_names                extra per-token metrics, e.g. ("bpc",)
    batches_per_epoch()         how many training batches make an epoch
    train_batch(epoch, index)   batch `index` of `epoch` (deterministic: any shuffling is
                                seeded by the epoch, so a resumed run sees the same data)
    train_loss(model, batch, carry) -> (loss, carry)
                                mean loss per token; `carry` is the recurrent state handed
                                from one batch to the next (None where batches are
                                independent); the trainer detaches it, which is what makes
                                back-propagation *truncated*, and resets it every epoch
    metrics(loss) -> dict       the extra metrics for a mean loss, e.g. {"bpc": loss / ln 2}
    evaluate(model) -> dict     validation numbers: "loss" and each of metric_names
    after_evaluate(model, run_dir, step)   optional side output (text samples); a file it
                                appends to is cut back to the checkpoint's size on resume
    gradient_flow_loss(model)   a loss over one validation batch, for the ∂L/∂h_t diagnostics

A non-finite loss, gradient norm or update (a finite gradient that overflows the weights) is
caught at the step it happens, the update is not applied, and `TrainConfig.on_nan` decides the
rest: "skip" goes on; "rollback" also puts the weights, optimizer and schedule back to the last
checkpoint (last.pt, written when training starts if there is none yet) and halves the
learning rate, keeping the data position so that a bad batch is not replayed; "stop" raises
`NonFiniteLoss`, saving nothing after the last good checkpoint. Every such step counts in
`skipped_steps` (metrics.csv, the progress bar and the summary). A checkpoint whose weights,
optimizer state or validation loss are not finite is never written.

`TrainConfig.precision` "bf16" runs each training forward pass under bfloat16 autocast: the
matrix products (and PyTorch's fused LSTM) take bf16 inputs and accumulate in float32, while
the weights, the optimizer and the loss stay float32, and evaluation runs in float32. On CPUs
with AMX (Intel Sapphire Rapids and later) this trains the default text model about 1.8×
faster; "auto" picks it there and on CUDA GPUs with bf16, float32 elsewhere.

The loss being minimised is the per-step losses summed over time and batch, divided by the
number of tokens: the same gradient direction as the summed loss, with a scale that does not
change with the batch or chunk size.
"""

import atexit
import csv
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..files import cut_back_appends, file_marks, remove_temp_files
from .checkpoint import load_checkpoint, save_checkpoint
from .diagnostics import append_gradient_flow_csv, gradient_flow_rows, update_ratio

OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")
SCHEDULES = ("constant", "cosine", "plateau")
PRECISIONS = ("fp32", "bf16", "auto")
NAN_POLICIES = ("skip", "rollback", "stop")
SEEDS = (-2**63, 2**64 - 1)  # the range torch.manual_seed accepts


@dataclass
class TrainConfig:
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.9                # SGD only
    schedule: str = "cosine"             # constant | cosine (to min_lr_ratio) | plateau (halve)
    warmup_steps: int = 0                # linear warm-up from 0
    min_lr_ratio: float = 0.1            # cosine ends at learning_rate · min_lr_ratio
    plateau_patience: int = 2            # evaluations without improvement before halving
    max_steps: int | None = None         # stop after this many optimizer steps ...
    max_seconds: float | None = None     # ... or this much training time (evaluation excluded)
    clip_norm: float | None = 1.0        # rescale gradients whose global L2 norm exceeds this
    clip_value: float | None = None      # clamp every gradient entry to ±clip_value
    eval_every: int = 100
    log_every: int = 10
    patience: int | None = None          # early stopping: evaluations without improvement
    gradient_flow: bool = True           # record ∂L/∂h_t at each evaluation
    on_nan: str = "skip"                 # skip | rollback (to last.pt, lr halved) | stop
    precision: str = "fp32"              # fp32 | bf16 (autocast of the training forward pass) |
                                         # auto (bf16 where the hardware multiplies it natively)
    seed: int = 0

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not (isinstance(self.seed, int) and SEEDS[0] <= self.seed <= SEEDS[1]):
            raise ValueError(f"seed must be an integer from {SEEDS[0]} to {SEEDS[1]}, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.on_nan not in NAN_POLICIES:
            raise ValueError(f"on_nan must be one of {NAN_POLICIES}, got {self.on_nan!r}")
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("give max_steps or max_seconds: training needs a budget")
        positive = {"learning_rate": self.learning_rate, "eval_every": self.eval_every,
                    "log_every": self.log_every, "max_steps": self.max_steps,
                    "max_seconds": self.max_seconds, "clip_norm": self.clip_norm,
                    "clip_value": self.clip_value, "patience": self.patience,
                    "plateau_patience": self.plateau_patience}
        for name, value in positive.items():
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        # Every comparison with NaN is false, so a NaN fails these too.
        if not (0 <= self.weight_decay < math.inf and self.warmup_steps >= 0 and 0 <= self.min_lr_ratio <= 1):
            raise ValueError("weight_decay must be finite and >= 0, warmup_steps >= 0 and min_lr_ratio in [0, 1], got "
                             f"{self.weight_decay}, {self.warmup_steps}, {self.min_lr_ratio}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def bf16_is_supported(device_type: str) -> bool:
    """Whether bfloat16 kernels run here at all: on CPU, oneDNN's (its fused LSTM has no bf16
    primitive on a CPU with neither AVX512-BF16 nor AMX, e.g. an AVX2-only AMD EPYC)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private, hence the guard
    return device_type == "cpu" and supported is not None and supported()


def check_precision(precision: str, device_type: str) -> None:
    """Refuse bf16 where it cannot run, before a run folder is made for it."""
    if precision == "bf16" and not bf16_is_supported(device_type):
        raise ValueError(f"precision bf16 is not supported on this {device_type} (no AVX512-BF16 or AMX "
                         "on a CPU): use fp32, or auto to take bf16 only where it is native")


def bf16_is_native(device_type: str) -> bool:
    """Whether this machine multiplies bfloat16 matrices in hardware (AMX tiles on CPU)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, hence the guard
    return device_type == "cpu" and amx is not None and amx()


def make_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    lr, decay = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=config.momentum, weight_decay=decay)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr, weight_decay=decay)
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(parameters, lr=lr, weight_decay=decay)


class LearningRateSchedule:
    """lr = learning_rate · warm-up(step) · shape(progress) · plateau factor.

    progress ∈ [0, 1] is the fraction of the budget spent: steps when max_steps is set (so a
    run is reproducible), else training seconds.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.plateau_factor = 1.0
        self.bad_evaluations = 0

    def learning_rate(self, step: int, progress: float) -> float:
        config = self.config
        factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.schedule == "cosine":
            cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            factor *= config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine
        return config.learning_rate * factor * self.plateau_factor

    def after_evaluation(self, improved: bool) -> None:
        self.bad_evaluations = 0 if improved else self.bad_evaluations + 1
        if self.config.schedule == "plateau" and self.bad_evaluations >= self.config.plateau_patience:
            self.plateau_factor *= 0.5
            self.bad_evaluations = 0

    def state_dict(self) -> dict:
        return {"plateau_factor": self.plateau_factor, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_factor, self.bad_evaluations = state["plateau_factor"], state["bad_evaluations"]


def detach(carry):
    """Cut the graph behind the carried state: back-propagation stops at the chunk boundary."""
    if carry is None:
        return None
    if isinstance(carry, torch.Tensor):
        return carry.detach()
    return tuple(detach(c) for c in carry)


class NonFiniteLoss(ValueError):
    """Training stopped at a non-finite loss or gradient (on_nan="stop"); a ValueError, so the
    CLI reports it in one line with exit status 2."""


def non_finite(state) -> bool:
    """Whether a (nested) state dict holds a floating-point tensor with a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        return state.is_floating_point() and not bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return any(non_finite(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return any(non_finite(value) for value in state)
    return False


class Interrupted:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and stops after the current step."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.request) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def request(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Train `task.model` under `config`, writing everything to `run_dir`.

    run_dir/metrics.csv    one row per `log_every` steps (+ validation columns at evaluations)
    run_dir/last.pt        model, optimizer, schedule, data position, carry, RNG: resumable
    run_dir/best.pt        the same at the best validation loss
    run_dir/gradient_flow.csv   ‖∂L/∂h_t‖ per layer, direction and step t, at each evaluation

    A checkpoint also holds the size and hash of every file in run_dir (`file_marks`), so that
    resuming cuts back whatever was appended after it: a run killed between two checkpoints
    resumes with metrics, samples and gradient-flow rows that match its position.
    """

    # Where the run stands: saved in every checkpoint, restored by `resume`.
    PROGRESS = ("step", "epoch", "batch_index", "elapsed", "best_val_loss",
                "evaluations_without_improvement", "skipped_steps", "lr_factor")

    def __init__(self, task, config: TrainConfig, run_dir: Path, run_config: dict,
                 quiet: bool = False, tensorboard: bool = False):
        config.validate()
        self.task, self.config, self.run_dir, self.quiet = task, config, Path(run_dir), quiet
        self.run_config = run_config
        self.model = task.model
        self.device_type = next(self.model.parameters()).device.type
        check_precision(config.precision, self.device_type)
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_is_native(self.device_type))
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.train_model = self.model
        if self.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.schedule = LearningRateSchedule(config)
        self.step = self.epoch = self.batch_index = 0
        self.elapsed = 0.0               # training seconds, evaluation excluded
        self.best_val_loss = math.inf
        self.evaluations_without_improvement = 0
        self.carry = None
        self.skipped_steps = 0           # updates dropped for a non-finite loss or gradient (NaN events)
        self.lr_factor = 1.0             # halved by every rollback
        self.metric_columns = ["step", "epoch", "elapsed_s", "tokens_per_s", "lr", "train_loss",
                               *(f"train_{m}" for m in task.metric_names), "grad_norm", "update_ratio",
                               "skipped_steps", "val_loss", *(f"val_{m}" for m in task.metric_names)]
        self.tensorboard = None
        if tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tensorboard = SummaryWriter(self.run_dir / "tensorboard")

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "config": self.run_config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "trainer": {name: getattr(self, name) for name in self.PROGRESS},
            "carry": self.carry,
            "rng": torch.get_rng_state(),
            "files": file_marks(self.run_dir),
        }

    def save(self, name: str) -> None:
        if self.rank != 0:
            return
        state = self.state()
        if non_finite([state["model"], state["optimizer"]]):  # the previous checkpoint stays
            self._note(f"step {self.step}: not saving {name}, its weights or optimizer state are not finite")
            return
        save_checkpoint(self.run_dir / name, state)

    def save_checkpoints(self, results: dict) -> None:
        """last.pt, and best.pt when `results`, the evaluation just made, beat every earlier one.
        A model whose validation loss is not finite is not saved: the previous checkpoints stay."""
        if not math.isfinite(results["loss"]):
            self._note(f"step {self.step}: validation loss {results['loss']}; checkpoints not saved")
            return
        if self.evaluations_without_improvement == 0:
            self.save("best.pt")
        self.save("last.pt")

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint: same data position, carry, optimizer, RNG state and files."""
        payload = load_checkpoint(path)
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(f"checkpoint {path} does not match this model: "
                             f"{str(error).strip().splitlines()[0]}") from None
        self.schedule.load_state_dict(payload["schedule"])
        for name in self.PROGRESS:  # a field newer than the checkpoint keeps its default
            setattr(self, name, payload["trainer"].get(name, getattr(self, name)))
        self.carry = payload["carry"]
        torch.set_rng_state(payload["rng"])
        if self.rank == 0:
            remove_temp_files(self.run_dir)  # left by a kill mid-write
            cut_back_appends(self.run_dir, payload.get("files", {}))

    def rollback(self) -> int:
        """Back to last.pt's weights, optimizer and schedule at half the learning rate; returns
        its step. The data position stays, so the batch that failed is not replayed."""
        payload = load_checkpoint(self.run_dir / "last.pt")
        rates = [group["lr"] for group in self.optimizer.param_groups]
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate  # what this step ran at, for its metrics row
        self.schedule.load_state_dict(payload["schedule"])
        self.lr_factor *= 0.5
        return payload["trainer"]["step"]

    def _append_metric_row(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists() or path.stat().st_size == 0
        columns = self.metric_columns
        if not new:  # a run begun by an older rnnkit keeps its own columns, so its rows stay aligned
            with open(path, newline="") as file:
                columns = next(csv.reader(file))
        with open(path, "a", newline="") as file:
            writer = csv.DictWriter(file, columns, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # ----------------------------------------------------------------- the loop
    def progress(self) -> float:
        config = self.config
        if config.max_steps is not None:
            return self.step / config.max_steps
        return self.elapsed / config.max_seconds

    def budget_spent(self) -> bool:
        config = self.config
        spent = (config.max_steps is not None and self.step >= config.max_steps) or \
                (config.max_seconds is not None and self.elapsed >= config.max_seconds)
        if self.world_size > 1:  # the ranks' clocks differ: stop together
            flag = torch.tensor(float(spent))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            spent = bool(flag.item())
        return spent

    def train_step(self) -> tuple[float, float, int, float]:
        """One optimizer step; returns (loss, gradient norm before clipping, tokens, update ratio)."""
        if self.batch_index >= self.task.batches_per_epoch():
            self.epoch, self.batch_index, self.carry = self.epoch + 1, 0, None
        batch = self.task.train_batch(self.epoch, self.batch_index)
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.learning_rate(self.step, self.progress()) * self.lr_factor
        self.train_model.train()
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            loss, carry = self.task.train_loss(self.train_model, batch, self.carry)
        self.carry = detach(carry)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = list(self.model.parameters())
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        self.step += 1
        self.batch_index += 1
        ratio = 0.0
        if not math.isfinite(loss.item()):
            self.on_non_finite(f"loss {loss.item()}")
        elif not math.isfinite(grad_norm.item()):
            self.on_non_finite(f"gradient norm {grad_norm.item()}")
        else:
            if self.config.clip_value is not None:
                torch.nn.utils.clip_grad_value_(parameters, self.config.clip_value)
            if self.config.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, self.config.clip_norm)
            before = [p.detach().clone() for p in parameters]
            self.optimizer.step()
            ratio = update_ratio(before, [p.detach() for p in parameters])
            if not math.isfinite(ratio):  # a finite gradient, yet the update overflowed the weights
                with torch.no_grad():
                    for parameter, old in zip(parameters, before):
                        parameter.copy_(old)
                self.on_non_finite(f"update-to-weight ratio {ratio}")
                ratio = 0.0
        loss = loss.detach()
        if self.world_size > 1:  # report the global batch's loss, not this process's share
            dist.all_reduce(loss)
            loss /= self.world_size
        return loss.item(), grad_norm.item(), self.task.batch_tokens(batch), ratio

    def on_non_finite(self, what: str) -> None:
        """Apply config.on_nan to the step just taken, whose `what` (loss, gradient norm or
        update) is not finite; its update is not applied."""
        # The carried state may hold the non-finite values too: restart it.
        self.optimizer.zero_grad(set_to_none=True)
        self.carry = None
        self.skipped_steps += 1
        if self.config.on_nan == "stop":
            raise NonFiniteLoss(f"step {self.step}: {what}; training stopped (on-nan stop), nothing saved "
                                f"after the last good checkpoint {self.run_dir / 'last.pt'}")
        if self.config.on_nan == "rollback":
            good_step = self.rollback()
            self._note(f"step {self.step}: {what}; rolled back to the weights of step {good_step}, "
                       f"learning rate x{self.lr_factor:g}")
        else:
            self._note(f"step {self.step}: {what}; update skipped")

    def evaluate(self) -> dict:
        """Validation numbers and side outputs; updates the best loss (checkpoints come after)."""
        self.model.eval()
        with torch.no_grad():
            results = self.task.evaluate(self.model)
        if self.rank == 0 and math.isfinite(results["loss"]):  # no samples of a broken model
            self.task.after_evaluate(self.model, self.run_dir, self.step)
            if self.config.gradient_flow:
                rows = gradient_flow_rows(self.model, lambda: self.task.gradient_flow_loss(self.model))
                append_gradient_flow_csv(self.run_dir / "gradient_flow.csv", self.step, rows)
        improved = results["loss"] < self.best_val_loss
        self.schedule.after_evaluation(improved)
        if improved:
            self.best_val_loss = results["loss"]
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return results

    def fit(self) -> dict:
        """Train until the budget is spent, early stopping triggers or an interrupt arrives."""
        config = self.config
        if not (self.run_dir / "last.pt").exists():  # rollback's target, and a crash's
            self.save("last.pt")
        bar_total = config.max_steps if config.max_steps is not None else int(config.max_seconds)
        # A time budget counts training seconds; a rate of "seconds per second" says nothing.
        time_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"
        bar = tqdm(total=bar_total, initial=min(self.step if config.max_steps else int(self.elapsed), bar_total),
                   unit="step", bar_format=None if config.max_steps else time_format,
                   disable=self.quiet or self.rank != 0, dynamic_ncols=True, leave=False)
        window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        last_results, stop_reason = {}, "budget"
        with bar, Interrupted() as interrupt:
            while not self.budget_spent():
                started = time.perf_counter()
                loss, grad_norm, tokens, ratio = self.train_step()
                seconds = time.perf_counter() - started
                self.elapsed += seconds
                for key, value in (("loss", loss), ("grad_norm", grad_norm), ("tokens", tokens),
                                   ("seconds", seconds), ("steps", 1)):
                    window[key] += value
                bar.update(1 if config.max_steps else int(self.elapsed) - bar.n)
                evaluating = self.step % config.eval_every == 0 or self.budget_spent() or interrupt.requested
                if self.step % config.log_every == 0 or evaluating:
                    row = self._train_row(window, ratio)
                    if evaluating:
                        last_results = self.evaluate()
                        row.update({f"val_{k}": f"{v:.6g}" for k, v in last_results.items()})
                    self._log(row, bar)
                    window = dict.fromkeys(window, 0)
                if evaluating:  # after the row: the checkpoint's file marks include it
                    self.save_checkpoints(last_results)
                if interrupt.requested:
                    stop_reason = "interrupted"
                    break
                if config.patience is not None and self.evaluations_without_improvement >= config.patience:
                    stop_reason = "early stopping"
                    break
        if not last_results:  # the budget was spent before this call took a step (a resume)
            last_results = self.evaluate()
            self.save_checkpoints(last_results)
        if self.tensorboard:
            self.tensorboard.close()
        return {"steps": self.step, "epochs": self.epoch, "seconds": round(self.elapsed, 1),
                "stop_reason": stop_reason, "best_val_loss": self.best_val_loss,
                "skipped_steps": self.skipped_steps, "on_nan": config.on_nan,
                "precision": "bf16" if self.bf16 else "fp32",
                **{f"val_{k}": v for k, v in last_results.items()}}

    def _train_row(self, window: dict, ratio: float) -> dict:
        mean_loss = window["loss"] / max(window["steps"], 1)
        row = {"step": self.step, "epoch": self.epoch, "elapsed_s": f"{self.elapsed:.2f}",
               "tokens_per_s": f"{window['tokens'] * self.world_size / max(window['seconds'], 1e-9):.0f}",
               "lr": f"{self.optimizer.param_groups[0]['lr']:.3e}", "train_loss": f"{mean_loss:.6g}",
               "grad_norm": f"{window['grad_norm'] / max(window['steps'], 1):.4g}",
               "update_ratio": f"{ratio:.3e}", "skipped_steps": self.skipped_steps}
        row.update({f"train_{k}": f"{v:.6g}" for k, v in self.task.metrics(mean_loss).items()})
        return row

    def _note(self, message: str) -> None:
        """A line on stderr that does not break the progress bar (warnings show even with quiet)."""
        if self.rank == 0:
            tqdm.write(message, file=sys.stderr)

    def _log(self, row: dict, bar) -> None:
        if self.rank != 0:
            return
        self._append_metric_row(row)
        shown = {k: row[k] for k in ("train_loss", *(f"train_{m}" for m in self.task.metric_names),
                                     "tokens_per_s") if k in row}
        if self.skipped_steps:
            shown["skipped"] = self.skipped_steps
        bar.set_postfix(shown, refresh=False)
        if "val_loss" in row and not self.quiet:
            val = " ".join(f"{k} {v}" for k, v in row.items() if k.startswith("val_"))
            bar.write(f"step {self.step}: {val}")
        if self.tensorboard:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.tensorboard.add_scalar(key, float(value), self.step)


def setup_distributed() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # For runs that end in an error (a finished one ends through end_distributed_run): leave without
        # waiting for the other ranks, which may never arrive.
        atexit.register(dist.destroy_process_group)


def end_distributed_run() -> None:
    """In a process group (torchrun): wait for every rank (rank 0 writes its report last), leave the
    group, and end this process with status 0 without finalising the interpreter; elsewhere, nothing.

    Why not a normal exit: gloo's worker threads may drop the last reference to a finished collective,
    which holds tensors created in Python, only after the interpreter has begun to finalise. Freeing
    those needs the GIL, which a finalising interpreter answers by ending the thread, and the unwinding
    aborts the process ("terminate called without an active exception", SIGABRT; core dump: a
    `pt_gloo_runloop` thread in ~AsyncBarrierWork → THPVariable_clear → take_gil → pthread_exit).
    Destroying the group does not stop those threads while anything still holds it. Measured with one
    of the 2 cores busy elsewhere, torchrun runs of the CLI test that failed so: 6 of 85 when the exit
    handler destroyed the group, 2 of 122 with a barrier and the group destroyed before a normal exit,
    none of 40 ending here."""
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
