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
    after_evaluate(model, run_dir, step)   optional side output (text samples)
    gradient_flow_loss(model)   a loss over one validation batch, for the ∂L/∂h_t diagnostics

The loss being minimised is the per-step losses summed over time and batch, divided by the
number of tokens: the same gradient direction as the summed loss, with a scale that does not
change with the batch or chunk size.
"""

import csv
import io
import math
import os
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..files import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .diagnostics import UpdateRatio, append_gradient_flow_csv, gradient_flow_rows

OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")
SCHEDULES = ("constant", "cosine", "plateau")


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
    seed: int = 0

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
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
        if self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("weight_decay and warmup_steps must be >= 0 and min_lr_ratio in [0, 1], got "
                             f"{self.weight_decay}, {self.warmup_steps}, {self.min_lr_ratio}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


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
    """

    # Where the run stands: saved in every checkpoint, restored by `resume`.
    PROGRESS = ("step", "epoch", "batch_index", "elapsed", "best_val_loss",
                "evaluations_without_improvement", "skipped_steps")

    def __init__(self, task, config: TrainConfig, run_dir: Path, run_config: dict,
                 quiet: bool = False, tensorboard: bool = False):
        config.validate()
        self.task, self.config, self.run_dir, self.quiet = task, config, Path(run_dir), quiet
        self.run_config = run_config
        self.model = task.model
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.train_model = self.model
        if self.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.schedule = LearningRateSchedule(config)
        self.update_ratio = UpdateRatio(list(self.model.parameters()))
        self.step = self.epoch = self.batch_index = 0
        self.elapsed = 0.0               # training seconds, evaluation excluded
        self.best_val_loss = math.inf
        self.evaluations_without_improvement = 0
        self.carry = None
        self.skipped_steps = 0           # updates skipped for a non-finite loss or gradient
        self.metric_columns = ["step", "epoch", "elapsed_s", "tokens_per_s", "lr", "train_loss",
                               *(f"train_{m}" for m in task.metric_names), "grad_norm", "update_ratio",
                               "val_loss", *(f"val_{m}" for m in task.metric_names)]
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
        }

    def save(self, name: str) -> None:
        if self.rank == 0:
            save_checkpoint(self.run_dir / name, self.state())

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint: same data position, carry, optimizer and RNG state."""
        payload = load_checkpoint(path)
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(f"checkpoint {path} does not match this model: "
                             f"{str(error).strip().splitlines()[0]}") from None
        self.schedule.load_state_dict(payload["schedule"])
        for name in self.PROGRESS:
            setattr(self, name, payload["trainer"][name])
        self.carry = payload["carry"]
        torch.set_rng_state(payload["rng"])
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metric rows logged after the checkpoint, so a resumed run's history is one run."""
        path = self.run_dir / "metrics.csv"
        if self.rank != 0 or not path.exists():
            return
        with open(path, newline="") as file:
            rows = [row for row in csv.DictReader(file) if int(row["step"]) <= self.step]
        text = io.StringIO()
        writer = csv.DictWriter(text, self.metric_columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, text.getvalue())

    def _append_metric_row(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as file:
            writer = csv.DictWriter(file, self.metric_columns, restval="")
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
            group["lr"] = self.schedule.learning_rate(self.step, self.progress())
        self.train_model.train()
        loss, carry = self.task.train_loss(self.train_model, batch, self.carry)
        self.carry = detach(carry)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = list(self.model.parameters())
        if self.config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(parameters, self.config.clip_value)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.clip_norm or math.inf)
        if not (math.isfinite(loss.item()) and math.isfinite(grad_norm.item())):
            # A non-finite loss or gradient would poison the weights: skip this update and
            # restart the carried state, which may hold the non-finite values too.
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.carry = None
            ratio = 0.0
        else:
            self.update_ratio.before_step()
            self.optimizer.step()
            ratio = self.update_ratio.after_step()
        self.step += 1
        self.batch_index += 1
        loss = loss.detach()
        if self.world_size > 1:  # report the global batch's loss, not this process's share
            dist.all_reduce(loss)
            loss /= self.world_size
        return loss.item(), grad_norm.item(), self.task.batch_tokens(batch), ratio

    def evaluate(self) -> dict:
        self.model.eval()
        with torch.no_grad():
            results = self.task.evaluate(self.model)
        if self.rank == 0:
            self.task.after_evaluate(self.model, self.run_dir, self.step)
            if self.config.gradient_flow:
                rows = gradient_flow_rows(self.model, lambda: self.task.gradient_flow_loss(self.model))
                append_gradient_flow_csv(self.run_dir / "gradient_flow.csv", self.step, rows)
        improved = results["loss"] < self.best_val_loss
        self.schedule.after_evaluation(improved)
        if improved:
            self.best_val_loss = results["loss"]
            self.evaluations_without_improvement = 0
            self.save("best.pt")
        else:
            self.evaluations_without_improvement += 1
        self.save("last.pt")
        return results

    def fit(self) -> dict:
        """Train until the budget is spent, early stopping triggers or an interrupt arrives."""
        config = self.config
        bar_total = config.max_steps if config.max_steps is not None else int(config.max_seconds)
        # A time budget counts training seconds; a rate of "seconds per second" says nothing.
        time_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"
        bar = tqdm(total=bar_total, initial=min(self.step if config.max_steps else int(self.elapsed), bar_total),
                   unit="step", bar_format=None if config.max_steps else time_format,
                   disable=self.quiet or self.rank != 0, dynamic_ncols=True, leave=False)
        window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        last_results, stop_reason = {}, "budget"
        with Interrupted() as interrupt:
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
                if interrupt.requested:
                    stop_reason = "interrupted"
                    break
                if config.patience is not None and self.evaluations_without_improvement >= config.patience:
                    stop_reason = "early stopping"
                    break
        bar.close()
        if not last_results:  # the budget was spent before this call took a step (a resume)
            last_results = self.evaluate()
        if self.tensorboard:
            self.tensorboard.close()
        return {"steps": self.step, "epochs": self.epoch, "seconds": round(self.elapsed, 1),
                "stop_reason": stop_reason, "best_val_loss": self.best_val_loss,
                "skipped_steps": self.skipped_steps,
                **{f"val_{k}": v for k, v in last_results.items()}}

    def _train_row(self, window: dict, ratio: float) -> dict:
        mean_loss = window["loss"] / max(window["steps"], 1)
        row = {"step": self.step, "epoch": self.epoch, "elapsed_s": f"{self.elapsed:.2f}",
               "tokens_per_s": f"{window['tokens'] * self.world_size / max(window['seconds'], 1e-9):.0f}",
               "lr": f"{self.optimizer.param_groups[0]['lr']:.3e}", "train_loss": f"{mean_loss:.6g}",
               "grad_norm": f"{window['grad_norm'] / max(window['steps'], 1):.4g}",
               "update_ratio": f"{ratio:.3e}"}
        row.update({f"train_{k}": f"{v:.6g}" for k, v in self.task.metrics(mean_loss).items()})
        return row

    def _log(self, row: dict, bar) -> None:
        if self.rank != 0:
            return
        self._append_metric_row(row)
        shown = {k: row[k] for k in ("train_loss", *(f"train_{m}" for m in self.task.metric_names),
                                     "tokens_per_s") if k in row}
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
