"""The `rnnkit` command.

Bad input ends with one line `rnnkit: error: …` and exit status 2, never a traceback.
"""

import argparse
import os
import sys


def positive_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def set_threads(threads: int | None) -> None:
    """Choose torch's CPU threads before torch starts.

    OpenMP threads that spin while waiting make a 2-thread torch many times slower as
    soon as anything else holds a core, so waiting threads sleep (OMP_WAIT_POLICY=PASSIVE)
    unless the user set a policy. `--threads` overrides the thread count.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch
        torch.set_num_threads(threads)


def run_namaskar(args: argparse.Namespace) -> None:
    from .tasks.namaskar import NamaskarConfig, train_namaskar

    config = NamaskarConfig(hidden_size=args.hidden_size, steps=args.steps,
                            learning_rate=args.learning_rate, seed=args.seed)
    result = train_namaskar(config)
    if result.accuracy < 1.0:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkit", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice, with passive waiting)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    namaskar = commands.add_parser(
        "namaskar", help="train the NumPy reference RNN to predict each next letter of 'namaskar'")
    namaskar.add_argument("--hidden-size", type=positive_int, default=16)
    namaskar.add_argument("--steps", type=positive_int, default=200)
    namaskar.add_argument("--learning-rate", type=positive_float, default=0.1)
    namaskar.add_argument("--seed", type=int, default=0)
    namaskar.set_defaults(run=run_namaskar)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        args.run(args)
    except ValueError as error:
        print(f"rnnkit: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
