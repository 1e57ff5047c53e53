import json
import os
import sys

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.series import Series
from rnnkit.tasks.forecast import (ANCHORS, TRUST_GRID, Baseline, Forecaster, Windows, anchor_forecast, choose_anchor,
                                   pinball_loss, recency_weights, ridge_highway, smoothing_forecasts, smoothing_states)

TINY = dict(hidden_size=8, ensemble=1, max_steps=20, eval_every=10, combine=())  # the RNN alone


def make_series(values, season=1, covariates=None):
    values = np.asarray(values, dtype=float)
    return Series(values, np.arange(len(values)), "test", season, covariates)


def seasonal(n=240, m=12, seed=0, slope=0.0):
    """A fixed season plus unit noise (and a trend, which seasonal naive lags by m · slope)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    pattern = 10 * np.sin(2 * np.pi * t / m) + 4 * np.cos(4 * np.pi * t / m)
    return make_series(pattern + slope * t + rng.normal(0, 1, n), m)


def test_backtest_origins_and_metrics_match_hand_computation():
    # Naive at origin 4 of 1..8 forecasts 4, 4 for actual 5, 6: MAE 1.5, in-sample MAE of the
    # lag-1 naive on 1, 2, 3, 4 is 1, so MASE 1.5; sMAPE = mean(2·1/9, 2·2/10) · 100.
    result = Baseline("naive").backtest(make_series(np.arange(1, 9)), origins=2, horizon=2)
    assert [row["origin"] for row in result.rows] == ["3", "5"]  # times of the last values seen
    first = result.rows[0]
    assert first["mase"] == pytest.approx(1.5)
    assert first["smape"] == pytest.approx(100 * (2 / 9 + 4 / 10) / 2)
    assert first["rmse"] == pytest.approx(np.sqrt((1 + 4) / 2))
    assert result.forecasts[1].mean.tolist() == [6, 6]


def test_comparison_table_sets_each_model_against_the_first_origin_by_origin():
    from rnnkit.metrics import diebold_mariano
    from rnnkit.tasks.forecast import Backtest, format_table

    def backtest(name, errors):
        return Backtest(name, [{"origin": str(k), "mase": e, "smape": 0.0, "rmse": 0.0, "coverage": 1.0,
                                "width": 0.0, "seconds": 0.0} for k, e in enumerate(errors)], [])

    ours, theirs = [0.5, 0.9, 0.6], [0.8, 0.7, 0.9]    # ours erred less at origins 0 and 2
    lines = format_table([backtest("rnnkit", ours), backtest("ets", theirs)]).splitlines()
    assert lines[0].endswith("lost to rnnkit   DM p")
    assert lines[1].split() == ["rnnkit", "*", "0.667", "0.00", "0", "1.00", "0", "0.0"]
    assert lines[2].split()[-2:] == ["2/3", f"{diebold_mariano(ours, theirs)[1]:.2f}"]


def test_scaling_sees_only_the_history():
    series = seasonal(60)
    windows = Windows(series.head(40), window=24, steps=12, seasonal_features=False, anchor="seasonal_naive")
    assert windows.scale == pytest.approx(np.mean(np.abs(series.values[12:40] - series.values[:28])))
    # Changing the values after the last origin's cut must not change any backtest forecast.
    changed = seasonal(60)
    changed.values[-6:] += 1000
    runs = [Forecaster(**TINY).backtest(s, origins=2, horizon=6) for s in (series, changed)]
    for before, after in zip(runs[0].forecasts, runs[1].forecasts):
        np.testing.assert_allclose(before.mean, after.mean)
    assert runs[0].rows[1]["mase"] != runs[1].rows[1]["mase"]


def test_local_scale_is_each_windows_own_mean_seasonal_difference():
    ramp = make_series(np.arange(24.0) ** 2, season=2)
    windows = Windows(ramp, window=4, steps=2, seasonal_features=False, anchor="naive", local_scale=True)
    # y_0 … y_3 = 0, 1, 4, 9: lag-2 differences 4, 8; y_6 … y_9 = 36, 49, 64, 81: 28, 32
    np.testing.assert_allclose(windows.scales(ramp.values, np.array([4, 10]))[:, 0], [6.0, 30.0])
    features, anchor, target = windows.examples()
    np.testing.assert_allclose(features[0, :, 0].numpy(), (np.arange(4.0) ** 2 - 9) / 6, rtol=1e-6)
    np.testing.assert_allclose(target[0].numpy(), (np.array([16.0, 25.0]) - 9) / 6, rtol=1e-6)
    history = Windows(ramp, window=4, steps=2, seasonal_features=False, anchor="naive")  # local_scale=False
    np.testing.assert_allclose(history.scales(ramp.values, np.array([4, 10]))[:, 0], history.scale)
    # A flat window has no scale of its own: the history's stands in.
    steps = make_series(np.repeat([1.0, 5.0, 2.0], 8), season=2)
    windows = Windows(steps, window=4, steps=2, seasonal_features=False, anchor="naive", local_scale=True)
    np.testing.assert_allclose(windows.scales(steps.values, np.array([4, 20]))[:, 0], windows.scale)


def test_anchor_is_the_classical_forecast_that_erred_least_on_the_history():
    rng = np.random.default_rng(0)
    # A fixed season in noise: exponential smoothing averages each phase over every season seen
    # (mean error 0.88), the phase means over the window's two only (0.92), seasonal naive over one
    # (1.20); with a trend, its damped trend (1.30) beats the window's drift (1.69).
    assert choose_anchor([seasonal(120)], steps=12, window=24) == "smoothing"
    assert choose_anchor([seasonal(120, slope=0.5)], steps=12, window=24) == "smoothing"
    # Quarterly series without a season: the last value beats the value a year back.
    walk = make_series(np.cumsum(rng.normal(0, 1, 120)), season=4)
    assert choose_anchor([walk], steps=8, window=16) == "naive"
    trend = make_series(np.cumsum(rng.normal(1, 0.5, 120)), season=4)
    assert choose_anchor([trend], steps=8, window=16) == "naive_drift"
    level = make_series(rng.normal(5, 1, 120))
    assert choose_anchor([level], steps=10, window=20) == "mean"
    # A wandering level in noise, yearly: smoothing (α 0.3) would err least, but m = 1 is not offered it.
    wandering = make_series(10 + np.cumsum(rng.normal(0, 0.3, 120)) + rng.normal(0, 1, 120))
    ends = np.arange(16, 120 - 8 + 1)
    target = wandering.values[ends[:, None] + np.arange(8)]
    error = {kind: np.abs(target - anchor_forecast(wandering.values, ends, 8, 1, kind, 16)).mean()
             for kind in ("smoothing", "naive", "naive_drift", "mean")}
    assert min(error, key=error.get) == "smoothing"
    assert choose_anchor([wandering], steps=8, window=16) == "mean"

    windows = Windows(trend, window=8, steps=3, seasonal_features=False, anchor="naive")
    features, anchor = windows.inputs(trend.values, None, np.array([50]))
    assert anchor.abs().max() == 0 and features[0, -1, 0] == 0  # both relative to y_T
    windows = Windows(trend, window=8, steps=3, seasonal_features=False, anchor="seasonal_naive")
    _, anchor = windows.inputs(trend.values, None, np.array([50]))
    expected = (trend.values[[46, 47, 48]] - trend.values[49]) / windows.scale
    np.testing.assert_allclose(anchor[0].numpy(), expected, rtol=1e-5)
    windows = Windows(trend, window=8, steps=6, seasonal_features=False, anchor="seasonal_mean")
    _, anchor = windows.inputs(trend.values, None, np.array([50]))
    phases = (trend.values[42:46] + trend.values[46:50]) / 2  # y_42 … y_49: two seasons
    np.testing.assert_allclose(trend.values[49] + windows.scale * anchor[0].numpy(), phases[[0, 1, 2, 3, 0, 1]], rtol=1e-5)
    # With drift: a straight line is forecast exactly; the slope is read over whole seasons.
    line = make_series(3.0 * np.arange(40) + 10 * (np.arange(40) % 4 == 0), season=4)
    def drift_forecast(kind):
        windows = Windows(line, window=10, steps=6, seasonal_features=False, anchor=kind)
        _, anchor = windows.inputs(line.values, None, np.array([30]))
        return line.values[29] + windows.scale * anchor[0].numpy()

    # seasonal naive with drift: the season's spike repeats, so exact
    np.testing.assert_allclose(drift_forecast("seasonal_naive_drift"), line.values[30:36], rtol=1e-5)
    # naive with drift: the slope 3 over 8 steps (two seasons), the spikes missed
    np.testing.assert_allclose(drift_forecast("naive_drift"), line.values[29] + 3.0 * np.arange(1, 7), rtol=1e-5)


def test_smoothing_anchor_is_damped_holt_winters_with_the_grid_point_that_forecast_the_history_best():
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    rng = np.random.default_rng(1)
    m = 4
    values = 10 + np.tile([1.0, -2.0, 0.5, 0.5], 10) + 0.05 * np.arange(40) + rng.normal(0, 0.3, 40)
    alpha, beta, phi, gamma = 0.3, 0.15, 0.9, 0.2
    level, trend, season = (state[0] for state in smoothing_states(values, m, np.array([[alpha], [beta], [phi], [gamma]])))
    # statsmodels' form updates the season from y_t − ℓ_{t−1} − φ b_{t−1}; the same recursion with γ(1 − α).
    reference = ExponentialSmoothing(values[m:], trend="add", damped_trend=True, seasonal="add", seasonal_periods=m,
                                     initialization_method="known", initial_level=values[:m].mean(), initial_trend=0.0,
                                     initial_seasonal=values[:m] - values[:m].mean()).fit(
        smoothing_level=alpha, smoothing_trend=beta, damping_trend=phi, smoothing_seasonal=gamma * (1 - alpha),
        optimized=False)
    np.testing.assert_allclose(level[m:], reference.level, atol=1e-10)
    np.testing.assert_allclose(trend[m:], reference.trend, atol=1e-10)
    np.testing.assert_allclose(season[m:], reference.season, atol=1e-10)
    # From the state after y_29: ŷ_{29+k} = ℓ_29 + (φ + … + φ^k) b_29 + the season's last state of that phase.
    forecast = smoothing_forecasts(level[None], trend[None], season[None], np.array([phi]), np.array([30]), 6, m)[0, 0]
    damped = np.cumsum(phi ** np.arange(1, 7))
    np.testing.assert_allclose(forecast, level[29] + damped * trend[29] + season[[26, 27, 28, 29, 26, 27]])

    # A noise-free step: any α < 1 or a trend errs after the jump, so the anchor is the last value.
    step = np.where(np.arange(60) < 30, 2.0, 7.0)
    ends = np.array([20, 35, 60])
    np.testing.assert_array_equal(anchor_forecast(step, ends, 5, 1, "smoothing", 10), step[ends - 1, None] * np.ones(5))
    # Where smoothing is chosen the network's inputs carry it, scaled like every anchor.
    series = seasonal(120, slope=0.5)
    windows = Windows(series, window=24, steps=12, seasonal_features=True, anchor="smoothing")
    _, anchor = windows.inputs(series.values, None, np.array([100]))
    expected = anchor_forecast(series.values, np.array([100]), 12, 12, "smoothing", 24)[0]
    np.testing.assert_allclose(series.values[99] + windows.scale * anchor[0].numpy(), expected, rtol=1e-5)


def test_trust_scales_the_networks_correction_to_its_anchor():
    exact = make_series(10 * np.sin(2 * np.pi * np.arange(120) / 12), 12)  # seasonal naive is exact
    untrained = dict(TINY, max_steps=1, eval_every=1, anchor="seasonal_naive", trust=None)
    # Trust chosen on the validation windows: an untrained network's correction only adds error.
    forecaster = Forecaster(horizon=12, **untrained).fit(exact)
    assert forecaster.trust == 0.0 and forecaster.trust in TRUST_GRID
    forecast = forecaster.predict()
    np.testing.assert_allclose(forecast.mean, exact.values[-12:], atol=1e-4)
    assert np.all(forecast.lower <= forecast.mean) and np.all(forecast.mean <= forecast.upper)
    raw = Forecaster(horizon=12, **{**untrained, "trust": 1.0}).fit(exact)
    assert raw.trust == 1.0 and np.abs(raw.predict().mean - exact.values[-12:]).max() > 1e-3
    with pytest.raises(ValueError, match="trust must be in"):
        Forecaster(trust=1.5)


def test_recency_weights_halve_every_half_life_and_weigh_the_loss():
    # 5 windows, half-life 0.4 · 5 = 2 windows: raw weights 0.5^(4/2), 0.5^(3/2), 0.5^(2/2), 0.5^(1/2), 1
    raw = np.array([0.25, 0.5 ** 1.5, 0.5, 0.5 ** 0.5, 1.0])
    np.testing.assert_allclose(recency_weights(5, 0.4).numpy(), raw / raw.mean(), rtol=1e-6)
    assert torch.equal(recency_weights(3, None), torch.ones(3))
    # Two windows of one step, quantiles 0.1 and 0.9: errors e = target − prediction = 1 and −2.
    predicted, target = torch.tensor([[[0.0, 0.0]], [[3.0, 3.0]]]), torch.tensor([[1.0], [1.0]])
    quantiles = torch.tensor([0.1, 0.9])
    # Window losses: mean(0.1·1, 0.9·1) = 0.5 and mean(0.9·2, 0.1·2) = 1.0
    assert pinball_loss(predicted, target, quantiles).item() == pytest.approx(0.75)
    weighted = pinball_loss(predicted, target, quantiles, torch.tensor([1.5, 0.5]))
    assert weighted.item() == pytest.approx((1.5 * 0.5 + 0.5 * 1.0) / 2)
    with pytest.raises(ValueError, match="recency must be"):
        Forecaster(recency=0.0)


def test_recency_weighted_training_follows_the_recent_regime():
    # AR(1) with φ = 0.8 for 200 steps, then φ = −0.8: from a last value of 3 the next is about
    # 2.4 under the old dynamics and −2.4 under the new. Weighing recent windows more moves the
    # forecast towards the new regime.
    rng = np.random.default_rng(0)
    values = np.zeros(300)
    for t in range(1, 300):
        values[t] = (0.8 if t < 200 else -0.8) * values[t - 1] + rng.normal()
    probe = make_series(np.r_[values, 3.0])

    def next_value(recency):
        options = dict(TINY, max_steps=150, eval_every=25, window=4, anchor="naive", recency=recency)
        return Forecaster(horizon=1, **options).fit(make_series(values)).predict(series=probe).mean[0]

    equal, recent = next_value(None), next_value(0.1)
    assert recent < -1.5 and equal > -1.0, (equal, recent)


def test_default_window_spans_two_horizons_and_four_seasons():
    quick = dict(TINY, max_steps=1, eval_every=1)
    assert Forecaster(horizon=12, **quick).fit(seasonal(240)).window == 48  # four monthly seasons
    assert Forecaster(horizon=6, **quick).fit(seasonal(240, m=4)).window == 16  # 16 steps at least
    assert Forecaster(horizon=10, **quick).fit(make_series(np.arange(100.0))).window == 20  # two horizons
    assert Forecaster(horizon=52, **quick).fit(seasonal(400, m=52)).window == 104  # two weekly seasons
    assert Forecaster(horizon=12, **quick).fit(seasonal(72)).window == 72 - 12 - 24 + 1  # short: 24 windows left


def test_ridge_highway_recovers_a_linear_forecast_and_shrinks_noise():
    rng = np.random.default_rng(0)
    L, steps, quantiles = 6, 3, (0.1, 0.5, 0.9)
    coefficients, intercept = rng.normal(0, 1, (L, steps)), np.array([0.5, -1.0, 2.0])

    def windows(count, signal, noise):
        window, anchor = rng.normal(0, 1, (count, L)), rng.normal(0, 1, (count, steps))
        target = anchor + signal * (window @ coefficients + intercept) + rng.normal(0, noise, (count, steps))
        return tuple(torch.tensor(part) for part in (window[..., None], anchor, target))

    weight, bias = ridge_highway(windows(300, 1.0, 0.1), windows(100, 1.0, 0.1), quantiles)
    weight, bias = weight.view(steps, 3, L), bias.view(steps, 3)  # rows ordered (step, quantile)
    np.testing.assert_allclose(weight[:, 1].numpy(), coefficients.T, atol=0.03)
    assert torch.equal(weight[:, 0], weight[:, 2])  # every quantile shares the regression
    np.testing.assert_allclose(bias[:, 1].numpy(), intercept, atol=0.03)
    # the 0.1 and 0.9 quantiles of N(0, 0.1²) residuals lie ±0.128 about the median
    np.testing.assert_allclose((bias[:, 2] - bias[:, 0]).numpy(), 2 * 0.128, rtol=0.25)
    # Pure noise, few windows: the penalty chosen on validation shrinks the weights towards 0.
    noise_weight, _ = ridge_highway(windows(30, 0.0, 1.0), windows(30, 0.0, 1.0), quantiles)
    assert noise_weight.abs().max() < 0.1


def test_long_histories_start_the_highway_at_the_regression():
    # An AR(2) cycle: its best forecast is linear in the window, which 20 Adam steps find only roughly.
    rng = np.random.default_rng(0)
    values = np.zeros(700)
    for t in range(2, 700):
        values[t] = 1.6 * values[t - 1] - 0.8 * values[t - 2] + rng.normal()
    series = make_series(values)
    errors = {}
    for start in (True, False):
        forecaster = Forecaster(horizon=10, linear_start=start, **TINY).fit(series.head(500))
        assert (forecaster.highway_start is not None) == start  # 377 training windows for 20 inputs
        errors[start] = np.mean([np.abs(forecaster.predict(10, series.head(end)).mean - values[end:end + 10]).mean()
                                 for end in range(500, 690, 5)])
    assert errors[True] < 0.9 * errors[False]
    # 73 training windows for 20 inputs: too few, the network starts small and stays near its anchor.
    assert Forecaster(horizon=10, **TINY).fit(series.head(120)).highway_start is None


def test_forecaster_learns_a_seasonal_signal_beyond_seasonal_naive():
    series = seasonal(slope=0.3)
    learned = Forecaster(hidden_size=16, ensemble=1, max_steps=150, combine=()).backtest(series, origins=2, horizon=12).mean()
    naive = Baseline("seasonal_naive", 12).backtest(series, origins=2, horizon=12).mean()
    assert learned["mase"] < 0.6 * naive["mase"]
    assert 0.3 < learned["coverage"] <= 1.0


@pytest.mark.parametrize("strategy", ["recursive", "seq2seq"])
def test_strategies_forecast_ordered_intervals(strategy):
    forecast = Forecaster(strategy=strategy, cell="lstm", **TINY).fit(seasonal(80), quiet=True).predict(12)
    assert forecast.mean.shape == (12,)
    assert np.all(forecast.lower <= forecast.mean) and np.all(forecast.mean <= forecast.upper)


def test_combined_forecast_is_the_mean_of_the_rnn_and_the_baselines():
    series = seasonal(80)
    alone = Forecaster(horizon=6, **TINY).fit(series).predict()
    naive, drift = (Baseline(name).fit(series).predict(6) for name in ("naive", "drift"))
    combined = Forecaster(horizon=6, **{**TINY, "combine": ("naive", "drift"), "combine_weight": 0.25}).fit(series).predict()
    for part in ("mean", "lower", "upper"):
        statistical = (getattr(naive, part) + getattr(drift, part)) / 2
        np.testing.assert_allclose(getattr(combined, part), 0.75 * getattr(alone, part) + 0.25 * statistical, rtol=1e-5)
    with pytest.raises(ValueError, match="combine must name baselines"):
        Forecaster(combine=("prophet",))


def test_statistical_fits_in_the_background_process_equal_fits_here():
    from rnnkit.tasks import forecast

    values = seasonal(80, seed=12345).values
    here = forecast._fit_statistical(*forecast._key("ets", 12, values, 6))
    forecast.start_statistical("ets", 12, values, 6)
    if (os.cpu_count() or 1) > 1 and sys.platform == "linux":  # sent to the other core, not fitted here
        assert forecast._key("ets", 12, values, 6) in forecast._WORKER[0].pending
        assert forecast._WORKER[0].results.poll(60)  # fitted there, not taken back by collect
    background = forecast.statistical_forecast("ets", 12, values, 6)
    for ours, theirs in zip(here[:3], background[:3]):
        np.testing.assert_allclose(ours, theirs)
    assert background[3] > 0  # the fit's own compute time, reported as the baseline's
    # A fit that fails in the background raises where its forecast is asked for.
    forecast.start_statistical("theta", 1, values[:1], 6)
    with pytest.raises(NotImplementedError, match="tiny datasets"):
        forecast.statistical_forecast("theta", 1, values[:1], 6)


@pytest.mark.skipif(sys.platform != "linux", reason="the background process is forked on Linux only")
def test_a_fit_still_queued_is_taken_back_rather_than_waited_for(monkeypatch):
    """While the background process is busy with a long fit, the fits queued behind it are done
    here when asked for, each equal to its fit here; the long fit stays the process's."""
    import signal
    import threading
    import time

    from rnnkit.tasks import forecast

    monkeypatch.setattr(forecast, "_FITS", {})
    monkeypatch.setattr(forecast, "_WORKER", [forecast._Worker()])
    worker = forecast._WORKER[0]
    resume = threading.Timer(60, os.kill, (worker.process.pid, signal.SIGCONT))  # a failure, not a hang
    try:
        rng = np.random.default_rng(0)
        long = np.sin(np.arange(1000) * 2 * np.pi / 52) * 5 + np.cumsum(rng.normal(size=1000)) * 0.3
        worker.submit(forecast._key("arima", 52, long, 52))  # about 20 s
        deadline = time.monotonic() + 30
        while not worker.tasks.empty() and time.monotonic() < deadline:  # until the process has taken it
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(worker.process.pid, signal.SIGSTOP)  # mid-fit: it cannot take anything more
        resume.start()
        queued = [(method, seasonal(60, seed=seed).values) for method, seed in (("ets", 1), ("naive", 2), ("drift", 3))]
        for method, values in queued:
            forecast.start_statistical(method, 12, values, 6)
        last = forecast.statistical_forecast("drift", 12, queued[-1][1], 6)
        assert worker.pending == [forecast._key("arima", 52, long, 52)]  # the three were taken back
        for method, values in queued:
            here = forecast._fit_statistical(*forecast._key(method, 12, values, 6))
            for ours, taken in zip(here[:3], forecast._FITS[forecast._key(method, 12, values, 6)][:3]):
                np.testing.assert_allclose(ours, taken)
        assert last[3] > 0
    finally:
        resume.cancel()
        worker.process.kill()


@pytest.mark.skipif(sys.platform != "linux", reason="the background process is forked on Linux only")
def test_the_background_process_never_destroys_what_it_inherits():
    """Garbage the parent leaves at the fork is not collected in the child: its destructor could
    wait forever on a lock that another thread of the parent held at the fork (onnxruntime's did,
    and hung the test suite). Here the child collects at once (threshold 1, set after the fork)
    and the garbage's destructor waits on a lock held at the fork."""
    import gc
    import threading
    from multiprocessing import util

    from rnnkit.tasks import forecast

    parent, held = os.getpid(), threading.Lock()
    held.acquire()

    class WaitsInTheChild:
        def __del__(self):
            if os.getpid() != parent:
                held.acquire()

    def collect_at_once(_):
        gc.set_threshold(1)
        gc.enable()

    gc.collect()
    gc.disable()  # until the fork: the parent must not collect the garbage first
    try:
        garbage = WaitsInTheChild()
        garbage.cycle = garbage
        del garbage
        util.register_after_fork(collect_at_once, collect_at_once)
        worker = forecast._Worker()
    finally:
        gc.enable()
    try:
        worker.submit(forecast._key("naive", 1, np.arange(20.0), 3))
        assert worker.results.poll(60), "the background process hung in a destructor it inherited"
    finally:
        worker.process.kill()


def test_global_model_with_covariates_and_calendar_features():
    first = seasonal(80, seed=1)
    second = make_series(seasonal(80, seed=2).values, 12, covariates=np.arange(80.0)[:, None])
    first.covariates = np.zeros((80, 1))
    forecaster = Forecaster(seasonal_features=True, horizon=6, **TINY).fit([first, second])
    assert forecaster.num_features == 4  # z, sin, cos, one covariate
    assert forecaster.predict(series=second).mean.shape == (6,)
    with pytest.raises(ValueError, match="fitted for horizon 6"):
        forecaster.predict(7)


def test_cli_writes_the_run_folder_and_predicts(tmp_path, capsys):
    series = seasonal(96, m=4)
    path = tmp_path / "q.csv"
    path.write_text("quarter,y\n" + "".join(f"{2000 + i // 4}-{3 * (i % 4) + 1:02d}-01,{v}\n"
                                            for i, v in enumerate(series.values)))
    main(["forecast", "--csv", str(path), "--time", "quarter", "--target", "y", "--horizon", "4", "--origins", "2",
          "--baselines", "naive,seasonal_naive", "--combine", "ets", "--ensemble", "1", "--max-steps", "10", "--hidden-size", "8",
          "--trust", "auto", "--no-linear-start", "--local-scale", "--recency", "none", "--runs-dir", str(tmp_path),
          "--name", "run", "--quiet"])
    out = capsys.readouterr().out
    assert "rnnkit" in out and "seasonal_naive" in out
    run = tmp_path / "run"
    for name in ("config.json", "backtest.csv", "comparison.txt", "forecast.csv", "forecast.png",
                 "training_curves.png", "model.pt", "report.html", "member-0/metrics.csv"):
        assert (run / name).is_file(), name
    assert len((run / "backtest.csv").read_text().splitlines()) == 1 + 3 * 2
    saved = json.loads((run / "config.json").read_text())["forecast"]
    assert saved["linear_start"] is False and saved["local_scale"] is True and saved["recency"] is None
    main(["predict", str(run)])
    assert len(capsys.readouterr().out.splitlines()) == 4
    main(["predict", str(run), *map(str, series.values[-20:])])
    assert len(capsys.readouterr().out.splitlines()) == 4

    # exported, each member gives the same quantiles from onnxruntime, on a batch never seen
    import onnxruntime
    import torch

    from rnnkit.tasks.forecast import ForecastConfig, ForecastNet
    from rnnkit.train.checkpoint import load_checkpoint

    main(["export", str(run)])
    sidecar = json.loads((run / "export" / "export.json").read_text())
    assert sidecar["combine"] == ["ets"] and sidecar["steps"] == 4 and sidecar["local_scale"] is True
    assert sidecar["anchor"] in ANCHORS[1:] and sidecar["trust"] in TRUST_GRID
    payload = load_checkpoint(run / "model.pt")
    member = ForecastNet(ForecastConfig.from_dict(payload["forecast"]), payload["window"], 4, payload["num_features"])
    member.load_state_dict(payload["members"][0])
    features, anchor = torch.randn(5, sidecar["window"], payload["num_features"]), torch.randn(5, 4)
    session = onnxruntime.InferenceSession(str(run / "export" / "member_0.onnx"))
    (quantiles,) = session.run(None, {"features": features.numpy(), "anchor": anchor.numpy()})
    np.testing.assert_allclose(quantiles, member.eval()(features, anchor).detach().numpy(), atol=1e-5)


def test_cli_refuses_a_series_too_short(tmp_path, capsys):
    path = tmp_path / "short.csv"
    path.write_text("t,y\n" + "".join(f"{i},{i % 3}\n" for i in range(12)))
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", "--csv", str(path), "--time", "t", "--target", "y", "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "needs at least" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", "--csv", str(path), "--time", "t", "--target", "y", "--trust", "1.5"])
    assert exit_info.value.code == 2
    assert "--trust: must be a number from 0 to 1 or auto" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", "--csv", str(path), "--time", "t", "--target", "y", "--recency", "-0.5"])
    assert exit_info.value.code == 2
    assert "--recency: must be a positive number or none" in capsys.readouterr().err
