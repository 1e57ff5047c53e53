"""The hand-derived BPTT Functions compute the explicit per-step loop, and their gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.bptt import (SEQUENCES, ElmanSequence, GRUSequence, JordanSequence, LayerNormLSTMSequence,
                         LSTMSequence, run_layer_norm_lstm, run_sequence)
from rnnkit.cells import ElmanCell, GRUCell, JordanCell, LSTMCell, MultiLagCell
from rnnkit.recurrent import Recurrent

pytestmark = pytest.mark.usefixtures("float64", "layer_norm_lstm_registered")


class LayerNormLSTMCell(nn.Module):
    """The layer-normalised LSTM step (Ba et al. 2016), the explicit-loop reference for
    `LayerNormLSTMSequence` until `rnnkit.cells` has this cell:

        [i, f, g, o]_t = act(LN_ih(W_ih x_t) + LN_hh(W_hh h_{t-1}) + bias)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t,   h_t = o_t ⊙ tanh(LN_c(c_t))
    """

    def __init__(self, input_size: int, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.input_size, self.hidden_size, self.eps = input_size, hidden_size, eps
        self.state_sizes = (hidden_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size) / input_size ** 0.5)
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size) / hidden_size ** 0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(4 * hidden_size))
        for name, size in [("ln_ih", 4 * hidden_size), ("ln_hh", 4 * hidden_size), ("ln_c", hidden_size)]:
            # gains away from 1 and biases away from 0, so a wrong gradient for either shows
            setattr(self, f"{name}_weight", nn.Parameter(1 + 0.1 * torch.randn(size)))
            setattr(self, f"{name}_bias", nn.Parameter(0.1 * torch.randn(size)))

    def forward(self, x, state):
        h, c = state
        gates = (F.layer_norm(F.linear(x, self.weight_ih), (4 * self.hidden_size,), self.ln_ih_weight,
                              self.ln_ih_bias, self.eps)
                 + F.layer_norm(F.linear(h, self.weight_hh), (4 * self.hidden_size,), self.ln_hh_weight,
                                self.ln_hh_bias, self.eps)
                 + self.bias)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (self.hidden_size,), self.ln_c_weight, self.ln_c_bias,
                                                       self.eps))
        return h, (h, c)


@pytest.fixture
def layer_norm_lstm_registered(monkeypatch):
    monkeypatch.setitem(SEQUENCES, LayerNormLSTMCell, run_layer_norm_lstm)

CELLS = {
    "elman-tanh": lambda: ElmanCell(3, 4),
    "elman-relu": lambda: ElmanCell(3, 4, nonlinearity="relu"),
    "jordan": lambda: JordanCell(3, 4, output_size=2),
    "multilag-1": lambda: MultiLagCell(3, 4, lags=1),
    "multilag-2": lambda: MultiLagCell(3, 4, lags=2),
    "multilag-3": lambda: MultiLagCell(3, 4, lags=3, nonlinearity="relu"),
    "lstm": lambda: LSTMCell(3, 4),
    "gru": lambda: GRUCell(3, 4),
    "layernorm-lstm": lambda: LayerNormLSTMCell(3, 4),
}
VALID = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)


def explicit_loop(cell, x, state, valid=None, reverse=False):
    """Call the cell step by step; a step that is not valid keeps the state and outputs zeros."""
    steps = x.shape[1]
    outputs = [None] * steps
    for t in reversed(range(steps)) if reverse else range(steps):
        output, new_state = cell(x[:, t], state)
        if valid is not None:
            keep = valid[:, t, None]
            new_state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
            output = output * keep
        state = new_state
        outputs[t] = output
    return torch.stack(outputs, dim=1), state


def results_and_gradients(run, cell, x, state):
    """Outputs, final state, and gradients wrt x, the initial state and every parameter of a
    loss that weighs every output and final-state entry differently."""
    outputs, final = run(cell, x, state)
    generator = torch.Generator().manual_seed(7)
    loss = (outputs * torch.randn(outputs.shape, generator=generator)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=generator)).sum() for s in final)
    return [outputs, *final, *torch.autograd.grad(loss, [x, *state, *cell.parameters()])]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("valid", [None, VALID], ids=["full", "padded"])
def test_same_outputs_state_and_gradients_as_the_explicit_loop(name, reverse, valid):
    torch.manual_seed(0)
    cell = CELLS[name]()
    x = torch.randn(3, 5, 3, requires_grad=True)
    state = tuple(torch.randn(3, size, requires_grad=True) for size in cell.state_sizes)
    hand = results_and_gradients(lambda *a: run_sequence(*a, valid=valid, reverse=reverse), cell, x, state)
    loop = results_and_gradients(lambda *a: explicit_loop(*a, valid=valid, reverse=reverse), cell, x, state)
    assert len(hand) == len(loop)
    for a, b in zip(hand, loop):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    if valid is not None:
        assert torch.all(hand[0][~valid] == 0)


@pytest.mark.parametrize("name", ["elman-relu", "jordan", "multilag-2", "lstm", "gru"])
def test_both_directions_of_a_bidirectional_layer_match_recurrent_loop_path(name):
    torch.manual_seed(1)
    options = {"elman-relu": ("elman", {"nonlinearity": "relu"}), "jordan": ("jordan", {"output_size": 2}),
               "multilag-2": ("multilag", {"lags": 2}), "lstm": ("lstm", {}), "gru": ("gru", {})}
    kind, cell_options = options[name]
    layer = Recurrent(kind, 3, 4, bidirectional=True, **cell_options)
    x = torch.randn(3, 5, 3)
    state = tuple(torch.randn(2, 3, size) for size in layer.state_sizes)
    outputs, final = layer(x, state[0] if len(state) == 1 else state, mask=VALID, path="loop")
    hand = [run_sequence(cell, x, tuple(s[d] for s in state), VALID, reverse=d == 1)
            for d, cell in enumerate(layer.cells)]
    torch.testing.assert_close(torch.cat([o for o, _ in hand], dim=-1), outputs, rtol=0, atol=1e-12)
    final = final if isinstance(final, tuple) else (final,)
    for i, expected in enumerate(final):
        torch.testing.assert_close(torch.stack([s[i] for _, s in hand]), expected, rtol=0, atol=1e-12)


def function_inputs(name, batch=2, steps=4):
    """(Function, differentiable inputs, valid mask, trailing options) on a tiny random layer."""
    cell = CELLS[name]()
    x = torch.randn(batch, steps, cell.input_size)
    state = torch.randn(batch, sum(cell.state_sizes))
    if isinstance(cell, (ElmanCell, MultiLagCell)):
        function, names, options = ElmanSequence, ["weight_ih", "weight_hh", "bias_ih", "bias_hh"], (cell.nonlinearity,)
        states = [state]
    elif isinstance(cell, JordanCell):
        function, names, options = JordanSequence, ["weight_ih", "bias_ih", "weight_yh", "weight_hy", "bias_hy"], (cell.nonlinearity,)
        states = [state]
    elif isinstance(cell, LayerNormLSTMCell):
        function, options = LayerNormLSTMSequence, (cell.eps,)
        names = ["weight_ih", "weight_hh", "bias", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias",
                 "ln_c_weight", "ln_c_bias"]
        states = list(state.split(cell.hidden_size, dim=-1))
    else:
        function, names, options = {LSTMCell: LSTMSequence, GRUCell: GRUSequence}[type(cell)], \
            ["weight_ih", "weight_hh", "bias_ih", "bias_hh"], ()
        states = list(state.split(cell.hidden_size, dim=-1))
    inputs = [t.detach().clone().requires_grad_() for t in [x, *states, *(getattr(cell, n) for n in names)]]
    return function, inputs, options


@pytest.mark.parametrize("name", ["elman-tanh", "elman-relu", "jordan", "multilag-3", "lstm", "gru", "layernorm-lstm"])
@pytest.mark.parametrize("valid", [None, VALID[1:, :4]], ids=["full", "padded"])
def test_gradcheck(name, valid):
    torch.manual_seed(2)
    function, inputs, options = function_inputs(name)
    assert torch.autograd.gradcheck(lambda *tensors: function.apply(*tensors, valid, *options), inputs)


def graph_size(node) -> int:
    """Number of autograd nodes reachable from `node`."""
    seen, todo = set(), [node]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(n for n, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("name", ["elman-tanh", "jordan", "multilag-2", "lstm", "gru", "layernorm-lstm"])
def test_one_backward_node_holding_only_per_step_buffers(name):
    """No per-step autograd graph: one node whatever T, whose saved tensors are O(T·B·H)."""
    torch.manual_seed(3)
    for steps in (4, 40):
        function, inputs, options = function_inputs(name, batch=2, steps=steps)
        outputs = function.apply(*inputs, None, *options)
        node = outputs[0].grad_fn
        assert type(node).__name__ == f"{function.__name__}Backward"
        assert graph_size(node) == 1 + len(inputs)  # this node and the inputs' AccumulateGrad
        parameters = sum(t.numel() for t in inputs[1:])
        saved = sum(t.numel() for t in node.saved_tensors if t is not None)
        assert saved <= (steps + 1) * 2 * (3 + 6 * 4 * 4) + parameters  # ≤ 6 (B, 4H) blocks a step
        with torch.no_grad():
            plain = function.apply(*inputs, None, *options)
        assert plain[0].grad_fn is None
        torch.testing.assert_close(plain[0], outputs[0], rtol=0, atol=0)


def test_backward_runs_once_per_sequence():
    torch.manual_seed(4)
    calls = []

    class Counted(LSTMSequence):
        @staticmethod
        def backward(ctx, *grads):
            calls.append(1)
            return LSTMSequence.backward(ctx, *grads)

    _, inputs, _ = function_inputs("lstm", steps=6)
    outputs, h, c = Counted.apply(*inputs, None)
    (outputs.sum() + h.sum() + c.sum()).backward()
    assert calls == [1] and all(t.grad is not None for t in inputs)


def test_unknown_cell_is_refused():
    with pytest.raises(TypeError, match="no hand-derived BPTT"):
        run_sequence(torch.nn.Linear(3, 4), torch.randn(1, 2, 3), (torch.zeros(1, 4),))
