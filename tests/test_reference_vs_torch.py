"""The NumPy reference and rnnkit's PyTorch path compute the same RNN, loss and gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit import reference
from rnnkit.cells import ElmanCell
from rnnkit.recurrent import Recurrent

pytestmark = pytest.mark.usefixtures("float64")


def problem(seed, steps=6, inputs=5, hidden=7, classes=4):
    rng = np.random.default_rng(seed)
    params = reference.Params.init(inputs, hidden, classes, rng, scale=0.8)
    params.b, params.c, params.h0 = rng.standard_normal(hidden), rng.standard_normal(classes), rng.standard_normal(hidden)
    return params, rng.standard_normal((steps, inputs)), rng.integers(0, classes, steps)


def torch_loss_and_gradients(params, x, targets, unroll):
    """Summed cross-entropy of V h_t + c over the hidden states `unroll` produces, and its gradients."""
    U, W, V, b, c, h0 = (torch.tensor(a, requires_grad=True) for _, a in params)
    hidden = unroll(U, W, b, h0, torch.tensor(x))
    loss = F.cross_entropy(hidden @ V.T + c, torch.tensor(targets), reduction="sum")
    return loss.item(), torch.autograd.grad(loss, [U, W, V, b, c, h0])


def use_weights(cell, U, W, b):
    """Make `cell` compute with the reference's weights, as tensors autograd can reach."""
    del cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
    cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh = U, W, b, torch.zeros_like(b)


def through_cell(U, W, b, h0, x):
    cell = ElmanCell(U.shape[1], U.shape[0])
    use_weights(cell, U, W, b)
    state, hidden = (h0[None],), []
    for x_t in x:
        h, state = cell(x_t[None], state)
        hidden.append(h[0])
    return torch.stack(hidden)


def through_layer(U, W, b, h0, x, path):
    layer = Recurrent("elman", U.shape[1], U.shape[0])
    use_weights(layer.cells[0], U, W, b)
    outputs, _ = layer(x[None], h0[None, None], path=path)
    return outputs[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("unroll", [
    through_cell,
    lambda *a: through_layer(*a, path="loop"),
    lambda *a: through_layer(*a, path="fused"),
], ids=["cell", "layer-loop", "layer-fused"])
def test_hand_bptt_equals_autograd(seed, unroll):
    params, x, targets = problem(seed)
    loss, cache = reference.forward(params, x, targets)
    hand = reference.backward(params, x, targets, cache)
    torch_loss, autograd = torch_loss_and_gradients(params, x, targets, unroll)
    assert abs(loss - torch_loss) < 1e-10
    for (name, expected), got in zip(hand, autograd):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-11, err_msg=name)
