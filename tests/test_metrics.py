"""Every metric against a case worked out by hand."""

import math

import numpy as np
import pytest

from rnnkit import metrics


def test_mase_scales_by_in_sample_seasonal_naive_error():
    insample = [1, 3, 2, 4, 3]                      # lag-1 absolute differences 2, 1, 2, 1: mean 1.5
    assert metrics.mase([5, 6], [4, 8], insample) == pytest.approx(1.5 / 1.5)
    # m = 2: differences |2-1|, |4-3|, |3-2| = 1 each; forecast MAE (1 + 2) / 2 = 1.5
    assert metrics.mase([5, 6], [4, 8], insample, m=2) == pytest.approx(1.5)


def test_mase_refuses_a_constant_or_too_short_history():
    with pytest.raises(ValueError, match="constant"):
        metrics.mase([1], [2], [3, 3, 3])
    with pytest.raises(ValueError, match="more than m=4"):
        metrics.mase([1], [2], [1, 2, 3, 4], m=4)


def test_smape_rmse_and_intervals():
    # pairs (100, 110): 20/210; (0, 0): 0; (10, 5): 10/15
    assert metrics.smape([100, 0, 10], [110, 0, 5]) == pytest.approx(100 * (20 / 210 + 0 + 10 / 15) / 3)
    assert metrics.rmse([1, 2, 3], [1, 4, 3]) == pytest.approx(math.sqrt(4 / 3))
    assert metrics.interval_coverage([1, 5, 9], [0, 6, 8], [2, 7, 9]) == pytest.approx(2 / 3)
    assert metrics.interval_width([0, 6, 8], [2, 7, 9]) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="one shape"):
        metrics.rmse([1, 2], [1])


def test_diebold_mariano_by_hand_and_against_scipy():
    from scipy import stats

    # d = 0.5, −0.5, 1: mean 1/3, sample variance 7/12, DM = (1/3) / √(7/36) = 2/√7;
    # Student's t with 2 degrees of freedom: P(|T| ≥ t) = 1 − t / √(2 + t²)
    a, b = [1.0, 2.0, 3.0], [0.5, 2.5, 2.0]
    statistic, p = metrics.diebold_mariano(a, b)
    assert statistic == pytest.approx(2 / math.sqrt(7))
    assert p == pytest.approx(1 - statistic / math.sqrt(2 + statistic ** 2))
    assert (statistic, p) == pytest.approx(tuple(stats.ttest_rel(a, b)))
    assert metrics.diebold_mariano(b, a) == pytest.approx((-statistic, p))


def test_diebold_mariano_separates_a_real_gap_from_noise():
    rng = np.random.default_rng(0)
    first, second, third = (rng.normal(0, 0.1, 10) for _ in range(3))
    assert metrics.diebold_mariano(1.0 + first, 1.5 + second)[1] < 0.001   # a gap of 5 noise widths
    assert metrics.diebold_mariano(1.0 + first, 1.0 + third)[1] > 0.5      # the same quality
    assert metrics.diebold_mariano([1, 2], [1, 2]) == (0.0, 1.0)
    assert metrics.diebold_mariano([1, 2], [2, 3]) == (-math.inf, 0.0)
    with pytest.raises(ValueError, match="2 or more origins"):
        metrics.diebold_mariano([1.0], [2.0])


def test_accuracy_confusion_and_exact_match():
    assert metrics.accuracy([0, 1, 2, 2], [0, 2, 2, 2]) == 0.75
    counts = metrics.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 2], num_classes=3)
    assert counts.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 2]]
    assert metrics.exact_match(["2020-01-02", "x"], ["2020-01-02", "y"]) == 0.5


def test_bleu_by_hand():
    reference = "the cat sat on the mat".split()
    assert metrics.bleu([reference], [reference]) == pytest.approx(1.0)
    assert metrics.bleu([["dog"] * 4], [reference]) == 0.0
    # "the cat sat on mat" (5 tokens): 1-grams 5/5, 2-grams 3/4, 3-grams 2/3, 4-grams 1/2;
    # brevity penalty exp(1 - 6/5)
    hypothesis = "the cat sat on mat".split()
    expected = math.exp(1 - 6 / 5) * (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert metrics.bleu([hypothesis], [reference]) == pytest.approx(expected)
    # clipping: "the the the" matches "the" only as often as the reference has it
    assert metrics.bleu([["the"] * 3], [reference], max_n=1) == pytest.approx(2 / 3 * math.exp(1 - 6 / 3))
    assert np.isclose(metrics.bleu([hypothesis, reference], [reference, reference]),
                      math.exp(1 - 12 / 11) * (11 / 11 * 8 / 9 * 6 / 7 * 4 / 5) ** 0.25)
