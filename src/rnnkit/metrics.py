"""The numbers tasks report: forecasting errors, interval quality, the test that compares two
forecasters, accuracy and BLEU.

Plain NumPy (and SciPy's t distribution) on plain arrays and strings, so each is checked by
hand-computed cases.
"""

import math
from collections import Counter

import numpy as np


def _pair(actual, forecast) -> tuple[np.ndarray, np.ndarray]:
    actual, forecast = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    if actual.shape != forecast.shape or actual.size == 0:
        raise ValueError(f"actual and forecast must be non-empty and of one shape, got {actual.shape} and {forecast.shape}")
    return actual, forecast


def mase(actual, forecast, insample, m: int = 1) -> float:
    """Mean absolute scaled error: MAE of the forecast ÷ in-sample MAE of the seasonal naive
    forecast y_t = y_{t-m} (Hyndman & Koehler 2006). Below 1: better than that naive method
    was on the training data."""
    actual, forecast = _pair(actual, forecast)
    insample = np.asarray(insample, dtype=float)
    if m < 1 or insample.size <= m:
        raise ValueError(f"MASE needs more than m={m} in-sample values, got {insample.size}")
    scale = np.mean(np.abs(insample[m:] - insample[:-m]))
    if scale == 0:
        raise ValueError("MASE is undefined: the in-sample series is constant at lag m")
    return float(np.mean(np.abs(actual - forecast)) / scale)


def smape(actual, forecast) -> float:
    """Symmetric MAPE in percent (0–200): mean of 2|F−A| / (|A|+|F|); a pair of zeros counts 0."""
    actual, forecast = _pair(actual, forecast)
    denominator = np.abs(actual) + np.abs(forecast)
    ratio = np.divide(2 * np.abs(forecast - actual), denominator,
                      out=np.zeros_like(denominator), where=denominator > 0)
    return float(100 * ratio.mean())


def rmse(actual, forecast) -> float:
    actual, forecast = _pair(actual, forecast)
    return float(np.sqrt(np.mean((actual - forecast) ** 2)))


def interval_coverage(actual, lower, upper) -> float:
    """Fraction of actual values inside [lower, upper]."""
    actual, lower = _pair(actual, lower)
    _, upper = _pair(actual, upper)
    return float(np.mean((actual >= lower) & (actual <= upper)))


def interval_width(lower, upper) -> float:
    """Mean width upper − lower of the prediction intervals."""
    lower, upper = _pair(lower, upper)
    return float(np.mean(upper - lower))


def diebold_mariano(loss_a, loss_b) -> tuple[float, float]:
    """Diebold–Mariano test that two forecasters err alike, from their losses at the same K
    origins (one number each, such as a backtest origin's MASE). With d = loss_a − loss_b,

        DM = mean(d) / (s_d / √K),   p = P(|T_{K−1}| ≥ |DM|)

    s_d the sample standard deviation and T Student's t with K − 1 degrees of freedom: Harvey,
    Leybourne & Newbold's (1997) small-sample form, which for losses with no serial correlation
    is the paired t-test. A rolling backtest's origins lie one horizon apart, so their errors
    cover disjoint spans and are taken as uncorrelated. Negative DM: a erred less. With K = 5
    origins, p < 0.05 needs a mean gap above 1.24 standard deviations of d. Returns (DM, p)."""
    from scipy import stats  # here, not at the top: importing scipy takes about a second

    loss_a, loss_b = _pair(loss_a, loss_b)
    if loss_a.size < 2:
        raise ValueError(f"the Diebold-Mariano test needs losses at 2 or more origins, got {loss_a.size}")
    difference = loss_a - loss_b
    mean, spread = difference.mean(), difference.std(ddof=1)
    if spread == 0:  # every origin differs alike: no noise to weigh the gap against
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    statistic = float(mean / (spread / math.sqrt(difference.size)))
    return statistic, float(2 * stats.t.sf(abs(statistic), difference.size - 1))


def accuracy(predicted, target) -> float:
    """Fraction of positions where predicted equals target."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    if predicted.shape != target.shape or predicted.size == 0:
        raise ValueError(f"predicted and target must be non-empty and of one shape, got {predicted.shape} and {target.shape}")
    return float(np.mean(predicted == target))


def confusion_matrix(predicted, target, num_classes: int) -> np.ndarray:
    """counts[i, j] = how often true class i was predicted as j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(target), np.asarray(predicted)), 1)
    return counts


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions identical to their reference."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need one prediction per reference, got {len(predictions)} and {len(references)}")
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def bleu(predictions: list[list[str]], references: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) in [0, 1] over token lists, one reference each:
    geometric mean of clipped n-gram precisions for n = 1..max_n, times the brevity penalty
    exp(1 − r/c) when the predictions are shorter in total (c) than the references (r)."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need one prediction per reference, got {len(predictions)} and {len(references)}")
    matched, proposed = [0] * max_n, [0] * max_n
    for prediction, reference in zip(predictions, references):
        for n in range(1, max_n + 1):
            predicted_ngrams = Counter(tuple(prediction[i:i + n]) for i in range(len(prediction) - n + 1))
            reference_ngrams = Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
            matched[n - 1] += sum(min(count, reference_ngrams[gram]) for gram, count in predicted_ngrams.items())
            proposed[n - 1] += max(len(prediction) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matched, proposed)) / max_n
    candidate_length = sum(map(len, predictions))
    reference_length = sum(map(len, references))
    brevity = 1.0 if candidate_length > reference_length else math.exp(1 - reference_length / candidate_length)
    return brevity * math.exp(log_precision)
