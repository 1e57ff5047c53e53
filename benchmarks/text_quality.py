"""Text quality bar (issue 3): validation bpc at equal training time, rnnkit vs the reference.

Both models train in this one process, one after the other, on the same `pydoc` split
(90/5/5) with the same thread count, and are scored by the same definition of validation
bits per character (16 streams, state carried). Run:

    python benchmarks/text_quality.py --minutes 8 --threads 1
    python benchmarks/text_quality.py --minutes 8 --set hidden_size=512 --set learning_rate=3e-3

`--set` changes one field of rnnkit's TextConfig/TrainConfig (for exploring; the numbers
in RESULTS.md are for the defaults). Prints both curves and the ratio of final val bpc.
`--skip-reference` / `--reference-only` train one side only, so the two can also run at the
same time in two processes, one core each, under the same conditions.
"""

import argparse
import csv
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from char_lm_reference import train_reference  # noqa: E402

from rnnkit.tasks.text import TextConfig, TextTask, default_train_config  # noqa: E402
from rnnkit.train.trainer import Trainer  # noqa: E402


def parse_settings(pairs):
    text, train = TextConfig(), default_train_config()
    for pair in pairs:
        name, value = pair.split("=", 1)
        target = text if hasattr(text, name) else train
        kind = type(getattr(target, name)) if getattr(target, name) is not None else float
        setattr(target, name, value.lower() == "true" if kind is bool else kind(value))
    return text, train


def train_rnnkit(text_config, train_config, seconds):
    torch.manual_seed(train_config.seed)
    task = TextTask(text_config)
    train_config.max_seconds, train_config.max_steps, train_config.gradient_flow = seconds, None, False
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(task, train_config, Path(run_dir), {}, quiet=True).fit()
        with open(Path(run_dir) / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
    print("rnnkit train bpc at the end:", rows[-1]["train_bpc"], flush=True)
    return [(float(r["elapsed_s"]), float(r["val_bpc"])) for r in rows if r["val_bpc"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--reference-only", action="store_true",
                        help="train only the reference (to run it beside an rnnkit run, one core each)")
    parser.add_argument("--plot", type=Path, default=None, help="write both curves to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text_config, train_config = parse_settings(args.set)
    seconds = args.minutes * 60
    print(f"threads={args.threads} minutes={args.minutes}")
    print("rnnkit:", {k: v for k, v in dataclasses.asdict(text_config).items() if k != "corpus"})
    print("rnnkit:", dataclasses.asdict(train_config))
    if not args.reference_only:
        ours = train_rnnkit(text_config, train_config, seconds)
        print("rnnkit curve (s, val bpc):", " ".join(f"{s:.0f}:{b:.3f}" for s, b in ours), flush=True)
    if args.skip_reference:
        return
    task = TextTask(TextConfig())  # the same split and vocabulary
    train_ids = task.batches.streams.flatten()  # 64 streams laid end to end = the training split
    reference = train_reference(train_ids, task.val_ids, len(task.vocab), seconds)
    print("reference curve (s, val bpc):", " ".join(f"{s:.0f}:{b:.3f}" for s, b in reference))
    if args.reference_only:
        return
    print(f"final val bpc: rnnkit {ours[-1][1]:.3f}  reference {reference[-1][1]:.3f}  "
          f"ratio {ours[-1][1] / reference[-1][1]:.3f} (target <= 0.90)")
    if args.plot:
        from rnnkit.plots import plot_lines

        curves = {"rnnkit default": tuple(zip(*ours)), "reference char-LSTM": tuple(zip(*reference))}
        plot_lines(curves, args.plot, title=f"validation bpc, {args.threads} thread(s)",
                   xlabel="training seconds", ylabel="bits per character")


if __name__ == "__main__":
    main()
