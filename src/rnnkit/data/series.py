"""Time series for forecasting: the real series bundled with statsmodels, or any CSV file.

A `Series` is one target column on a regular time grid, with its seasonal period m (52 for
weekly data, 12 monthly, 4 quarterly, 1 when there is no calendar season) and optional
covariate columns. Loading checks the file once and raises one clear `ValueError` for each
kind of bad input: a missing column, a non-numeric cell, a missing value, a duplicated or
unsorted timestamp, a gap in the time grid. `fill` repairs missing values and gaps instead:

    "interpolate"   linear in time between the neighbouring values (ends: nearest value)
    "ffill"         carry the last value forward (a leading gap: the first value back)
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILLS = ("interpolate", "ffill")
# Seasonal period of a pandas frequency, by its leading letters (W-SUN -> W, QS-DEC -> QS).
SEASONS = {"Y": 1, "A": 1, "YS": 1, "AS": 1, "Q": 4, "QS": 4, "QE": 4, "M": 12, "MS": 12, "ME": 12,
           "W": 52, "D": 7, "B": 5, "H": 24, "h": 24}
# Default forecast horizon for a seasonal period: one season, or ten steps without a season.
HORIZONS = {1: 10, 4: 8}


@dataclass
class Series:
    values: np.ndarray                  # (T,) float target
    time: np.ndarray                    # (T,) timestamps (datetime64) or step numbers
    name: str
    season: int = 1                     # seasonal period m
    covariates: np.ndarray | None = None  # (T, C) float, known up to the last target value
    covariate_names: tuple[str, ...] = ()
    freq: str | None = None             # pandas frequency alias of the grid, when it has one

    def __len__(self) -> int:
        return len(self.values)

    @property
    def horizon(self) -> int:
        """The usual forecast horizon for this season (one season ahead, ten steps for m = 1)."""
        return HORIZONS.get(self.season, self.season)

    def head(self, n: int) -> "Series":
        """The first n steps: the history available at forecast origin n."""
        return Series(self.values[:n], self.time[:n], self.name, self.season,
                      None if self.covariates is None else self.covariates[:n], self.covariate_names, self.freq)

    def future_time(self, horizon: int) -> np.ndarray:
        """The `horizon` timestamps after the last one, continuing the grid."""
        if self.freq is not None:
            import pandas as pd
            return pd.date_range(self.time[-1], periods=horizon + 1, freq=self.freq)[1:].to_numpy()
        step = self.time[-1] - self.time[-2] if len(self.time) > 1 else 1
        return self.time[-1] + step * np.arange(1, horizon + 1)


def check_length(series: Series, needed: int, why: str) -> None:
    if len(series) < needed:
        raise ValueError(f"series {series.name} has {len(series)} values; {why} needs at least {needed}")


# ----------------------------------------------------------------------------- bundled series

BUNDLED = ("sunspots", "co2", "nile", "elnino", "macrodata:COLUMN")


def load_bundled(name: str) -> Series:
    """One of statsmodels' bundled real series (offline): sunspots (yearly, 1700–2008), co2
    (weekly Mauna Loa, gaps interpolated), nile (yearly flow, 1871–1970), elnino (monthly sea
    temperature, 1950–2010) or macrodata:COLUMN (quarterly US macro data, e.g. macrodata:realgdp)."""
    import pandas as pd
    from statsmodels import datasets

    base, _, column = name.partition(":")
    if base == "sunspots":
        data = datasets.sunspots.load_pandas().data
        return Series(data.SUNACTIVITY.to_numpy(float), data.YEAR.to_numpy(int), name)
    if base == "nile":
        data = datasets.nile.load_pandas().data
        return Series(data.volume.to_numpy(float), data.year.to_numpy(int), name)
    if base == "co2":
        data = datasets.co2.load_pandas().data.co2.interpolate()  # 59 missing weeks
        return Series(data.to_numpy(float), data.index.to_numpy(), name, 52, freq="W-SAT")
    if base == "elnino":
        months = datasets.elnino.load_pandas().data.set_index("YEAR").stack()  # year-major order
        time = pd.date_range(f"{int(months.index[0][0])}-01-01", periods=len(months), freq="MS")
        return Series(months.to_numpy(float), time.to_numpy(), name, 12, freq="MS")
    if base == "macrodata":
        data = datasets.macrodata.load_pandas().data
        if column not in data.columns or column in ("year", "quarter"):
            choices = ", ".join(c for c in data.columns if c not in ("year", "quarter"))
            raise ValueError(f"macrodata needs a column, macrodata:COLUMN with COLUMN one of {choices}; got {name!r}")
        time = pd.date_range("1959-01-01", periods=len(data), freq="QS")
        return Series(data[column].to_numpy(float), time.to_numpy(), name, 4, freq="QS")
    raise ValueError(f"unknown series {name!r}: choose one of {', '.join(BUNDLED)} or give --csv FILE")


# ----------------------------------------------------------------------------- CSV files


def _numeric(frame, column: str, path: Path):
    """The column as floats; a cell that is not a number is an error naming its row."""
    import pandas as pd

    numbers = pd.to_numeric(frame[column], errors="coerce")
    bad = numbers.isna() & frame[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: column {column!r} has a non-numeric cell {frame[column].iloc[row]!r} "
                         f"at data row {row + 1}")
    return numbers


def load_csv(path, time: str, target: str, covariates: tuple[str, ...] = (), freq: str | None = None,
             season: int | None = None, fill: str | None = None) -> Series:
    """Read `target` (and `covariates`) indexed by the `time` column of a CSV file.

    Timestamps must be unique and increasing. Dates get their frequency inferred (or `freq`)
    and must cover a regular grid; numbers (years, step counts) must rise by a constant step.
    The seasonal period comes from the frequency unless `season` is given.
    """
    import pandas as pd

    path = Path(path)
    if fill is not None and fill not in FILLS:
        raise ValueError(f"--fill must be one of {FILLS}, got {fill!r}")
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"cannot read {path} as CSV: {str(error).splitlines()[0]}") from None
    for column in (time, target, *covariates):
        if column not in frame.columns:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(frame.columns)})")
    if frame.empty:
        raise ValueError(f"{path}: no data rows under the header")
    stamps = frame[time]
    if stamps.isna().any():
        raise ValueError(f"{path}: column {time!r} has an empty timestamp at data row {int(np.flatnonzero(stamps.isna())[0]) + 1}")
    numeric_time = pd.to_numeric(stamps, errors="coerce")
    if numeric_time.notna().all():
        index = pd.Index(numeric_time)
    else:
        try:
            index = pd.DatetimeIndex(pd.to_datetime(stamps, format="mixed"))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: column {time!r} holds neither numbers nor dates: {error}") from None
    if index.has_duplicates:
        raise ValueError(f"{path}: duplicated timestamp {index[index.duplicated()][0]} in column {time!r}")
    if not index.is_monotonic_increasing:
        row = int(np.flatnonzero(index[1:] < index[:-1])[0]) + 1
        raise ValueError(f"{path}: timestamps in column {time!r} are not sorted (data row {row + 1}: {index[row]} "
                         f"comes after {index[row - 1]})")
    table = pd.DataFrame({c: _numeric(frame, c, path).to_numpy() for c in (target, *covariates)}, index=index)

    if isinstance(index, pd.DatetimeIndex):
        freq = freq or (pd.infer_freq(index) if len(index) >= 3 else None)
        if freq is None:
            raise ValueError(f"{path}: cannot infer the frequency of column {time!r} (gaps?); give --freq, e.g. --freq MS")
        grid = pd.date_range(index[0], index[-1], freq=freq)
    else:
        step = np.diff(index.to_numpy()).min() if len(index) > 1 else 1
        grid = pd.Index(np.arange(index[0], index[-1] + step / 2, step))
    missing_stamps = len(grid) - len(index.intersection(grid))
    if missing_stamps or len(grid) != len(index):
        if fill is None or len(index.difference(grid)):
            raise ValueError(f"{path}: column {time!r} is not a regular grid ({missing_stamps} timestamps missing"
                             f"{'' if freq is None else f' at frequency {freq}'}); --fill interpolate or ffill fills gaps")
        table = table.reindex(grid)
    if table.isna().any().any():
        column = table.columns[table.isna().any()][0]
        if fill is None:
            row = int(np.flatnonzero(table[column].isna().to_numpy())[0])
            raise ValueError(f"{path}: column {column!r} has a missing value at {table.index[row]} "
                             "(--fill interpolate or ffill fills it)")
        table = table.interpolate(limit_direction="both") if fill == "interpolate" else table.ffill().bfill()
    if season is None:
        season = SEASONS.get(freq.split("-")[0].lstrip("0123456789"), 1) if freq else 1
    return Series(table[target].to_numpy(float), table.index.to_numpy(), target, season,
                  table[list(covariates)].to_numpy(float) if covariates else None, tuple(covariates), freq)
