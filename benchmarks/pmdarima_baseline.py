"""pmdarima's auto_arima (default search) on the forecast benchmark's rolling origins: a check of
how strong rnnkit's statsforecast auto-ARIMA baseline is. pmdarima is not an rnnkit dependency:

    pip install pmdarima
    OMP_NUM_THREADS=1 python benchmarks/pmdarima_baseline.py [SERIES ...]

Origins as `ForecastModel.backtest` takes them (5, `horizon` apart, the last one `horizon` before
the end); MASE with the history's seasonal-naive scale, as in benchmarks/forecast_quality.py."""

import sys
import time
import warnings

import numpy as np

from rnnkit.data.series import load_bundled
from rnnkit.metrics import mase

ORIGINS = 5
DEFAULT_SERIES = ("sunspots", "nile", "macrodata:realgdp", "macrodata:unemp")


def main(names: list[str]) -> None:
    try:
        import pmdarima
    except ImportError:
        sys.exit("pmdarima_baseline.py: pmdarima is not installed (pip install pmdarima)")
    warnings.filterwarnings("ignore")  # pmdarima's convergence chatter
    print(f"pmdarima {pmdarima.__version__}, auto_arima defaults (stepwise, AIC), {ORIGINS} origins")
    for name in names:
        series = load_bundled(name)
        horizon, season, errors, started = series.horizon, series.season, [], time.perf_counter()
        for k in range(ORIGINS, 0, -1):
            cut = len(series) - k * horizon
            history = series.values[:cut]
            model = pmdarima.auto_arima(history, m=season, seasonal=season > 1, suppress_warnings=True,
                                        error_action="ignore")
            errors.append(mase(series.values[cut:cut + horizon], model.predict(horizon), history, season))
        print(f"{name}: m={season} h={horizon} MASE {np.mean(errors):.3f} "
              f"(origins {', '.join(f'{e:.3f}' for e in errors)}) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:] or list(DEFAULT_SERIES))
