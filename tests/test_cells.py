import pytest
import torch
from torch import nn

from rnnkit.cells import CELLS, ElmanCell, GRUCell, JordanCell, LSTMCell, MultiLagCell, make_cell

pytestmark = pytest.mark.usefixtures("float64")


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(target, name).copy_(getattr(source, name))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_matches_torch_rnncell(nonlinearity):
    cell = ElmanCell(3, 5, nonlinearity=nonlinearity)
    reference = nn.RNNCell(3, 5, nonlinearity=nonlinearity)
    copy_weights(cell, reference)
    x, h = torch.randn(4, 3), torch.randn(4, 5)
    y, (h_new,) = cell(x, (h,))
    torch.testing.assert_close(h_new, reference(x, h), rtol=0, atol=1e-12)
    assert y is h_new


def test_lstm_matches_torch_lstmcell():
    cell, reference = LSTMCell(3, 5), nn.LSTMCell(3, 5)
    copy_weights(cell, reference)
    x, h, c = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 5)
    _, (h_new, c_new) = cell(x, (h, c))
    h_ref, c_ref = reference(x, (h, c))
    torch.testing.assert_close(h_new, h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_new, c_ref, rtol=0, atol=1e-12)


def test_gru_matches_torch_grucell():
    cell, reference = GRUCell(3, 5), nn.GRUCell(3, 5)
    copy_weights(cell, reference)
    x, h = torch.randn(4, 3), torch.randn(4, 5)
    _, (h_new,) = cell(x, (h,))
    torch.testing.assert_close(h_new, reference(x, h), rtol=0, atol=1e-12)


def test_jordan_recurs_on_its_previous_output():
    cell = JordanCell(3, 5, output_size=2)
    x, y_prev = torch.randn(4, 3), torch.randn(4, 2)
    y, (state,) = cell(x, (y_prev,))
    h = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + y_prev @ cell.weight_yh.T)
    torch.testing.assert_close(y, h @ cell.weight_hy.T + cell.bias_hy, rtol=0, atol=1e-12)
    assert state is y and cell.state_sizes == (2,) and cell.output_size == 2


def test_multilag_sums_k_past_states_and_shifts_them():
    cell = MultiLagCell(3, 4, lags=3)
    x = torch.randn(2, 3)
    past = tuple(torch.randn(2, 4) for _ in range(3))
    h, state = cell(x, past)
    w = cell.weight_hh.split(4, dim=1)  # W_1, W_2, W_3
    expected = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh
                          + sum(p @ wk.T for p, wk in zip(past, w)))
    torch.testing.assert_close(h, expected, rtol=0, atol=1e-12)
    assert state[0] is h and state[1] is past[0] and state[2] is past[1]


def test_multilag_with_one_lag_is_elman():
    multilag, elman = MultiLagCell(3, 4, lags=1), ElmanCell(3, 4)
    copy_weights(multilag, elman)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    torch.testing.assert_close(multilag(x, (h,))[0], elman(x, (h,))[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_zero_state_matches_state_sizes(name):
    cell = make_cell(name, 3, 4)
    state = cell.zero_state(2, torch.randn(1))
    assert [s.shape for s in state] == [torch.Size([2, size]) for size in cell.state_sizes]
    y, new_state = cell(torch.randn(2, 3), state)
    assert y.shape == (2, cell.output_size)
    assert [s.shape for s in new_state] == [s.shape for s in state]


@pytest.mark.parametrize("build, argument", [
    (lambda: ElmanCell(3, 0), "hidden_size"),
    (lambda: LSTMCell(0, 4), "input_size"),
    (lambda: GRUCell(3, -2), "hidden_size"),
    (lambda: MultiLagCell(3, 4, lags=0), "lags"),
    (lambda: JordanCell(3, 4, output_size=0), "output_size"),
    (lambda: ElmanCell(3, 4, nonlinearity="sigmoid"), "nonlinearity"),
    (lambda: make_cell("transformer", 3, 4), "cell"),
    (lambda: make_cell("lstm", 3, 4, lags=2), "lags"),
])
def test_bad_configuration_names_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()
