"""Recurrent cells: one time step each.

A cell maps the input at one step and the state left by the previous step to the
step's output and the new state:

    y_t, state_t = cell(x_t, state_{t-1})

It knows nothing of sequences; `rnnkit.recurrent.Recurrent` unrolls it over time.
Every state is a tuple of tensors of shape (batch, size), one per entry of
`cell.state_sizes`, so the unrolling code treats all cells alike.

Elman, LSTM and GRU keep their parameters in PyTorch's layout (`weight_ih`,
`weight_hh`, `bias_ih`, `bias_hh`, gates stacked in `torch.nn.LSTM`/`GRU` order), so
the same parameters can be handed to PyTorch's fused sequence kernels; `fused_mode`
names the kernel, or is None for cells that have none.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, ...]

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def check_positive(**sizes) -> None:
    """ValueError naming the first argument that is not a positive integer."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_activation(nonlinearity: str) -> None:
    if nonlinearity not in ACTIVATIONS:
        raise ValueError(f"nonlinearity must be one of {sorted(ACTIVATIONS)}, got {nonlinearity!r}")


class Cell(nn.Module):
    """Base class: sizes, PyTorch's uniform(-1/sqrt(H), 1/sqrt(H)) initialisation, zero state."""

    fused_mode: str | None = None
    recurrent_weight = "weight_hh"  # the matrix applied to the carried state (weight dropout drops it)

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def zero_state(self, batch_size: int, like: torch.Tensor) -> State:
        return tuple(like.new_zeros(batch_size, size) for size in self.state_sizes)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class ElmanCell(Cell):
    """Elman (simple) recurrent cell.

        h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   f = tanh or relu
        y_t = h_t

    State: (h,). Parameters as in `torch.nn.RNNCell`.
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        _check_activation(nonlinearity)
        self.nonlinearity = nonlinearity
        self.fused_mode = f"rnn_{nonlinearity}"
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h,) = state
        h = ACTIVATIONS[self.nonlinearity](
            F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        )
        return h, (h,)


class JordanCell(Cell):
    """Jordan cell: the recurrence comes from the previous *output*, not the hidden state.

        h_t = f(W_ih x_t + b_ih + W_yh y_{t-1})
        y_t = W_hy h_t + b_hy

    State: (y,) of size `output_size` (defaults to `hidden_size`).
    """

    recurrent_weight = "weight_yh"

    def __init__(self, input_size: int, hidden_size: int, output_size: int | None = None,
                 nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        output_size = hidden_size if output_size is None else output_size
        check_positive(output_size=output_size)
        _check_activation(nonlinearity)
        self.nonlinearity = nonlinearity
        self._output_size = output_size
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.weight_yh = nn.Parameter(torch.empty(hidden_size, output_size))
        self.weight_hy = nn.Parameter(torch.empty(output_size, hidden_size))
        self.bias_hy = nn.Parameter(torch.empty(output_size))
        self.reset_parameters()

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self._output_size,)

    @property
    def output_size(self) -> int:
        return self._output_size

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (y,) = state
        h = ACTIVATIONS[self.nonlinearity](
            F.linear(x, self.weight_ih, self.bias_ih) + F.linear(y, self.weight_yh)
        )
        y = F.linear(h, self.weight_hy, self.bias_hy)
        return y, (y,)


class MultiLagCell(Cell):
    """Elman cell that looks K steps back.

        h_t = f(W_ih x_t + b_ih + Σ_{k=1..K} W_k h_{t-k} + b_hh)
        y_t = h_t

    `weight_hh` is [W_1 | W_2 | … | W_K], shape (H, K·H), so the K recurrent products
    are one matrix product with the concatenated past states. K = 1 is `ElmanCell`
    with the same parameters. State: (h_{t-1}, …, h_{t-K}).
    """

    def __init__(self, input_size: int, hidden_size: int, lags: int = 2, nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        if not isinstance(lags, int) or isinstance(lags, bool) or lags < 1:
            raise ValueError(f"lags must be an integer K >= 1, got {lags!r}")
        _check_activation(nonlinearity)
        self.lags = lags
        self.nonlinearity = nonlinearity
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, lags * hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,) * self.lags

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        past = torch.cat(state, dim=-1)
        h = ACTIVATIONS[self.nonlinearity](
            F.linear(x, self.weight_ih, self.bias_ih) + F.linear(past, self.weight_hh, self.bias_hh)
        )
        return h, (h,) + state[:-1]

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, lags={self.lags}"


class LSTMCell(Cell):
    """Long short-term memory cell, gates in `torch.nn.LSTM` order (i, f, g, o).

        i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t),   y_t = h_t

    State: (h, c).
    """

    fused_mode = "lstm"

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size, self.hidden_size)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class GRUCell(Cell):
    """Gated recurrent unit, gates in `torch.nn.GRU` order (r, z, n).

        r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1},   y_t = h_t

    State: (h,).
    """

    fused_mode = "gru"

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h,) = state
        x_r, x_z, x_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, (h,)


class LayerNormLSTMCell(Cell):
    """LSTM with layer normalisation (Ba et al. 2016), gates in (i, f, g, o) order.

        [i, f, g, o]_t = LN_ih(W_ih x_t) + LN_hh(W_hh h_{t-1}) + b     (σ on i, f, o; tanh on g)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(LN_c(c_t)),   y_t = h_t

    where LN(v) = γ ⊙ (v − mean(v)) / sqrt(var(v) + eps) + β over the features, each LN with
    its own gain γ (`ln_*_weight`, starts at 1) and bias β (`ln_*_bias`, starts at 0).
    Normalising the recurrent input keeps each step's pre-activations at one scale however
    the weights grow, which steadies training over long sequences. State: (h, c).
    """

    def __init__(self, input_size: int, hidden_size: int, eps: float = 1e-5):
        super().__init__(input_size, hidden_size)
        self.eps = eps
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        for name, size in (("ln_ih", 4 * hidden_size), ("ln_hh", 4 * hidden_size), ("ln_c", hidden_size)):
            setattr(self, f"{name}_weight", nn.Parameter(torch.empty(size)))
            setattr(self, f"{name}_bias", nn.Parameter(torch.empty(size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for name in ("ln_ih", "ln_hh", "ln_c"):
            nn.init.ones_(getattr(self, f"{name}_weight"))
            nn.init.zeros_(getattr(self, f"{name}_bias"))

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size, self.hidden_size)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        gates_size = (4 * self.hidden_size,)
        gates = (F.layer_norm(F.linear(x, self.weight_ih), gates_size, self.ln_ih_weight, self.ln_ih_bias, self.eps)
                 + F.layer_norm(F.linear(h, self.weight_hh), gates_size, self.ln_hh_weight, self.ln_hh_bias, self.eps)
                 + self.bias)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        normed_c = F.layer_norm(c, (self.hidden_size,), self.ln_c_weight, self.ln_c_bias, self.eps)
        h = torch.sigmoid(o) * torch.tanh(normed_c)
        return h, (h, c)


CELLS: dict[str, type[Cell]] = {
    "elman": ElmanCell,
    "jordan": JordanCell,
    "multilag": MultiLagCell,
    "lstm": LSTMCell,
    "gru": GRUCell,
    "lnlstm": LayerNormLSTMCell,
}


def make_cell(name: str, input_size: int, hidden_size: int, **options) -> Cell:
    """Build a cell by name (one of `CELLS`); `options` go to its constructor."""
    if name not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}")
    try:
        return CELLS[name](input_size, hidden_size, **options)
    except TypeError as error:  # an option this cell does not take
        raise ValueError(f"cell {name!r}: {error}") from None
