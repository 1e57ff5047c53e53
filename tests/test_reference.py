"""The NumPy reference RNN: hand-derived BPTT against finite differences, loss, clipping."""

import numpy as np
import pytest

from rnnkit.reference import (
    Params,
    backward,
    clip_by_global_norm,
    forward,
    numerical_gradient,
    softmax,
)


def random_problem(seed, scale, I=5, H=7, K=4, T=6):
    rng = np.random.default_rng(seed)
    params = Params.init(I, H, K, rng, scale=scale)
    # Init leaves biases and h0 at zero; make them nonzero so their gradients are tested in general position.
    params.b = rng.standard_normal(H) * scale
    params.c = rng.standard_normal(K) * scale
    params.h0 = np.tanh(rng.standard_normal(H))
    inputs = rng.standard_normal((T, I))
    targets = rng.integers(0, K, size=T)
    return params, inputs, targets


def relative_error(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-12)


# scale 1.0 pushes many pre-activations into tanh's flat region, where 1 - h² matters.
@pytest.mark.parametrize("seed, scale", [(0, 0.1), (1, 1.0)])
def test_backward_matches_finite_differences(seed, scale):
    params, inputs, targets = random_problem(seed, scale)
    loss, cache = forward(params, inputs, targets)
    analytic = backward(params, inputs, targets, cache)
    numeric = numerical_gradient(params, inputs, targets)
    assert [name for name, _ in analytic] == ["U", "W", "V", "b", "c", "h0"]
    for (name, a), (_, n) in zip(analytic, numeric):
        assert a.shape == getattr(params, name).shape
        assert relative_error(a, n) < 1e-6, name


def test_saturated_problem_is_actually_saturated():
    params, inputs, targets = random_problem(1, 1.0)
    _, cache = forward(params, inputs, targets)
    assert np.mean(np.abs(cache["hs"][1:]) > 0.9) > 0.2


def test_forward_loss_is_sum_of_per_step_cross_entropies():
    params, inputs, targets = random_problem(2, 0.5)
    loss, cache = forward(params, inputs, targets)

    # Recompute step by step with nothing shared with forward() except the params.
    h = params.h0
    per_step = []
    for x, y in zip(inputs, targets):
        h = np.tanh(params.U @ x + params.W @ h + params.b)
        o = params.V @ h + params.c
        p = np.exp(o) / np.exp(o).sum()
        per_step.append(-np.log(p[y]))

    assert isinstance(loss, float)
    assert loss == pytest.approx(sum(per_step), rel=1e-12)
    assert loss == pytest.approx(-np.log(cache["probs"][np.arange(len(targets)), targets]).sum(), rel=1e-12)
    np.testing.assert_allclose(cache["hs"][0], params.h0)
    np.testing.assert_allclose(cache["hs"][-1], h, rtol=1e-12)


def test_softmax_is_stable_and_normalised():
    o = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]])
    p = softmax(o)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    np.testing.assert_allclose(p[0], softmax(o[0] - 1000.0))


def global_norm(grads):
    return np.sqrt(sum(np.sum(g * g) for _, g in grads))


def test_clip_scales_down_to_max_norm_keeping_direction():
    params, inputs, targets = random_problem(3, 1.0)
    grads = backward(params, inputs, targets, forward(params, inputs, targets)[1])
    norm = global_norm(grads)
    max_norm = norm / 3

    clipped, reported = clip_by_global_norm(grads, max_norm)

    assert reported == pytest.approx(norm, rel=1e-12)
    assert abs(global_norm(clipped) - max_norm) < 1e-12
    for (_, g), (_, c) in zip(grads, clipped):
        np.testing.assert_allclose(c, g * (max_norm / norm), rtol=1e-12)


def test_clip_leaves_small_gradients_alone():
    params, inputs, targets = random_problem(4, 0.1)
    grads = backward(params, inputs, targets, forward(params, inputs, targets)[1])
    norm = global_norm(grads)

    clipped, reported = clip_by_global_norm(grads, norm * 2)

    assert reported == pytest.approx(norm, rel=1e-12)
    for (_, g), (_, c) in zip(grads, clipped):
        np.testing.assert_array_equal(c, g)
