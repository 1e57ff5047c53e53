"""Forecaster variants compared offline: each variant's forecasts cached per origin once, then
scored alone and combined with the statistical partner as the default recipe combines them.

    OMP_NUM_THREADS=1 python benchmarks/forecast_variants.py run base
    OMP_NUM_THREADS=1 python benchmarks/forecast_variants.py run seq2seq --set '{"strategy": "seq2seq"}'
    python benchmarks/forecast_variants.py score base seq2seq base+seq2seq

`run` backtests the Forecaster without its combination (combine=()) at the validation origins and
the test origins of forecast_quality.py, and the statistical baselines once per series. `score`
prints each variant's MASE alone and combined, ŷ = (1 − λ)·ŷ_RNN + λ·ŷ_partner (the recipe's λ
and partner unless --weight is given), per series and summed over the series every variant has,
with the wins against the best of ETS and auto-ARIMA. 'a+b' averages the networks of a and b.
Choose on the validation origins; the test origins are the table's. Sessions 11–24 compared
recipes this way (benchmarks/forecast_notes.md). co2 is left out by default: its network trains
for about 15 s an origin and its auto-ARIMA fit takes about 28 s (session 19), at 15 origins.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from forecast_quality import SERIES, validation_origins
from rnnkit.data.series import load_bundled
from rnnkit.tasks.forecast import Baseline, ForecastConfig, Forecaster, series_scale

CACHE = Path(tempfile.gettempdir()) / "rnnkit-forecast-variants"
STATISTICAL = ("ets", "arima")  # the bar's baselines; the recipe's partner is among them


def origins(length: int, horizon: int, test: int, validation: int) -> list[tuple[str, int]]:
    """(split, cut) of the validation origins (as many as forecast_quality.py backtests), then the
    test origins, each one horizon after the one before."""
    first_test = length - test * horizon
    before = validation_origins(first_test, horizon, validation)
    return ([("validation", first_test - k * horizon) for k in range(before, 0, -1)]
            + [("test", length - k * horizon) for k in range(test, 0, -1)])


def cache_path(variant: str, name: str) -> Path:
    return CACHE / variant / f"{name.replace(':', '_')}.npz"


def run(variant: str, names: list[str], overrides: dict, test: int, validation: int) -> None:
    """Cache the variant's median forecasts (and once the baselines') at every origin of each series."""
    for name in names:
        series = load_bundled(name)
        horizon = series.horizon
        splits, cuts = zip(*origins(len(series), horizon, test, validation))
        stat = cache_path("statistical", name)
        if not stat.exists() or not np.array_equal(np.load(stat)["cut"], cuts):
            forecasts = {method: [Baseline(method, series.season).fit(series.head(cut)).predict(horizon).mean
                                  for cut in cuts] for method in STATISTICAL}
            stat.parent.mkdir(parents=True, exist_ok=True)
            np.savez(stat, split=splits, cut=cuts, actual=[series.values[cut:cut + horizon] for cut in cuts],
                     scale=[series_scale(series.values[:cut], series.season) for cut in cuts], **forecasts)
        model = Forecaster(**overrides, combine=())
        medians = [model.fresh(horizon).fit(series.head(cut)).predict(horizon).mean for cut in cuts]
        cache_path(variant, name).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_path(variant, name), forecast=medians, cut=cuts, overrides=json.dumps(overrides))
        print(f"{variant} {name}: {len(cuts)} origins cached", flush=True)


def mean_mase(stat, forecast: np.ndarray, chosen: np.ndarray) -> float:
    """The mean over the chosen origins of each origin's MASE (MAE ÷ its history's scale)."""
    return float(np.mean(np.abs(stat["actual"][chosen] - forecast[chosen]).mean(1) / stat["scale"][chosen]))


def score(variants: list[str], names: list[str], weight: float, partner: tuple[str, ...]) -> dict:
    """Print the table; return {variant: {split: [sum alone, sum combined, wins]}}."""
    names = [n for n in names if all(cache_path(part, n).exists() for v in variants for part in v.split("+"))]
    print(f"combined: (1 − {weight})·RNN + {weight}·mean({', '.join(partner)}); W: beats the best of ETS and auto-ARIMA")
    print(f"{'variant':24s} {'series':18s} | validation: alone combined best | test: alone combined best")
    table = {}
    for variant in variants:
        sums = table[variant] = {"validation": [0.0, 0.0, 0], "test": [0.0, 0.0, 0]}
        for name in names:
            stat = np.load(cache_path("statistical", name))
            parts = [np.load(cache_path(part, name)) for part in variant.split("+")]
            if any(not np.array_equal(part["cut"], stat["cut"]) for part in parts):
                raise SystemExit(f"{variant} on {name} was run at other origins than the baselines' cache; run it again")
            network = np.mean([part["forecast"] for part in parts], 0)
            combined = (1 - weight) * network + weight * np.mean([stat[p] for p in partner], 0)
            cells = []
            for split, total in sums.items():
                chosen = stat["split"] == split
                alone, mixed = mean_mase(stat, network, chosen), mean_mase(stat, combined, chosen)
                best = min(mean_mase(stat, stat[method], chosen) for method in STATISTICAL)
                total[0] += alone
                total[1] += mixed
                total[2] += mixed < best
                cells.append(f"{alone:.3f} {mixed:.3f}{'W' if mixed < best else ' '} {best:.3f}")
            print(f"{variant:24s} {name:18s} | " + " | ".join(cells))
        print(f"{variant:24s} {'sum':18s} | " + " | ".join(f"{a:.3f} {c:.3f} wins {w}" for a, c, w in sums.values()))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "score"))
    parser.add_argument("variants", nargs="+", help="run: one name for the variant; score: names, or a+b to average")
    parser.add_argument("--set", default="{}", help='run: Forecaster overrides as JSON, e.g. \'{"hidden_size": 16}\'')
    parser.add_argument("--series", default=",".join(s for s in SERIES if s != "co2"))
    parser.add_argument("--origins", type=int, default=5, help="test origins")
    parser.add_argument("--validation", type=int, default=10, help="validation origins before them")
    parser.add_argument("--weight", type=float, default=ForecastConfig().combine_weight, help="score: λ")
    args = parser.parse_args()
    names = args.series.split(",")
    if args.command == "run":
        if len(args.variants) != 1 or "+" in args.variants[0] or args.variants[0] == "statistical":
            parser.error("run takes one variant name, without '+' and other than 'statistical' (the baselines' cache)")
        torch.set_num_threads(1)
        run(args.variants[0], names, json.loads(args.set), args.origins, args.validation)
    else:
        score(args.variants, names, args.weight, ForecastConfig().combine)


if __name__ == "__main__":
    main()
