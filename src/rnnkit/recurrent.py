"""The one place that unrolls time.

`Recurrent` applies a cell step after step with shared weights, stacks layers, runs a
second cell backwards in time for bidirectional layers, and starts from a zero, given or
learned initial state. Padded batches are described by `lengths` (or a left-aligned
`mask`): a padded step changes no state, and its output is zero.

Three paths compute the same function:
- "fused": PyTorch's sequence kernels (`torch.rnn_tanh`, `torch.rnn_relu`, `torch.lstm`,
  `torch.gru`, cuDNN on GPU), fed with the cells' own parameters; only for cells with a
  `fused_mode`.
- "bptt": `rnnkit.bptt`'s sequence-level autograd Functions, one per layer and direction:
  the input projection and every weight gradient are one matrix product over all steps,
  and only the δ recursion runs step by step. Every cell has one.
- "loop": the explicit per-step loop over `cell(x_t, state)`, for whatever needs each
  step: a `step_hook(layer, direction, t, output)` (an attribute, so it can be set on a
  layer deep inside a model) sees every step's output before padding is applied — the very
  tensor the next step's state is built from, so `output.retain_grad()` there yields
  ∂L/∂h_t (gradient-flow diagnostics).
"auto" picks the fastest that measured correct for the cell and shape (see _fastest_path).
Tests hold the paths to the same outputs and gradients.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import kernels
from .bptt import run_sequence
from .cells import Cell, State, make_cell

FUSED_KERNELS = {
    "rnn_tanh": torch.rnn_tanh,
    "rnn_relu": torch.rnn_relu,
    "lstm": torch.lstm,
    "gru": torch.gru,
}
# One step of a cell with a fused_mode in one call, for Recurrent.step (cells' parameters as they are)
FUSED_STEPS = {
    "rnn_tanh": torch.rnn_tanh_cell,
    "rnn_relu": torch.rnn_relu_cell,
    "lstm": torch.lstm_cell,
    "gru": torch.gru_cell,
}
PATHS = ("auto", "fused", "bptt", "loop")
SHORT_SEQUENCE = 5  # up to this many steps, "auto" runs the per-step loop on CPU (see _fastest_path)
ALL_SIZES = range(1, 2 ** 31)
# Training on CPU, hand BPTT beats the fused kernel for these modes at these hidden sizes (a
# training step with ∂L/∂x, hand BPTT ÷ fused tokens/s at the bench's small, medium and large
# shapes, H = 64, 256, 512, three full runs of `rnnkit bench`, 1 thread, with the compiled loops
# of rnnkit/csrc, on an AVX2 CPU: LSTM 1.12–1.19, 1.03–1.08, 0.94–1.00; GRU 2.02–2.99, 1.09–1.20,
# 1.12–1.29; Elman 1.06–2.21 at every shape). Since the AVX2 build's whole-sequence products take
# its own kernel (session 18) the LSTM at 512 reads 1.18 (a full run) and 1.08 (8 paired rounds);
# at 2 threads 1.00 (6 rounds). Without gradients the fused forward is the faster one.
HAND_BPTT_TRAINS_FASTER_ON_CPU = {"rnn_tanh": ALL_SIZES, "rnn_relu": ALL_SIZES, "lstm": ALL_SIZES,
                                  "gru": ALL_SIZES}
# On a CPU with AVX512 the fused LSTM (oneDNN's, which generates its code for the CPU it runs on)
# trained faster at every shape in session 14: hand BPTT ÷ fused 0.93, 1.00 and 0.89 (`rnnkit
# bench`, AMD EPYC with AVX512). Since the compiled loops run their large per-step products
# through oneDNN too (session 16), three full runs read 0.96–0.99 at H = 64, 1.06–1.08 at 256 and
# 0.98–1.01 at 512: hand BPTT takes the middle size. GRU (2.1–2.2, 1.17–1.19, 1.23–1.26) and Elman
# (1.14–2.0) stay with hand BPTT.
HAND_BPTT_TRAINS_FASTER_ON_AVX512 = {"rnn_tanh": ALL_SIZES, "rnn_relu": ALL_SIZES, "lstm": range(256, 512),
                                     "gru": ALL_SIZES}
# The same where the compiled loops cannot be built (rnnkit.kernels): the Python loops made LSTM
# 0.46× fused at the small shape, 0.96–1.09 otherwise, and GRU 1.02–1.04 at H ≤ 256, 1.16–1.39 at 512.
HAND_BPTT_TRAINS_FASTER_IN_PYTHON = {"rnn_tanh": ALL_SIZES, "rnn_relu": ALL_SIZES, "gru": range(512, 2 ** 31)}
# The same under bfloat16 autocast (TrainConfig.precision "bf16"), where hand BPTT runs in float32
# (rnnkit.bptt.run_sequence) and the fused kernels in bf16. Measured on an AVX512-BF16 CPU (no AMX),
# B=32, T=100, 1 thread, hand BPTT in float32 ÷ fused in bf16: LSTM 0.60 (H=64), 0.55 (256),
# 0.61 (512); GRU 2.86 (64), 0.85 (256); Elman 3.13 (64), 0.94 (256).
HAND_BPTT_TRAINS_FASTER_IN_BF16 = {"rnn_tanh": range(1, 256), "rnn_relu": range(1, 256), "gru": range(1, 256)}
INITIAL_STATES = ("zeros", "learned")


class RecurrentWeightDropout(nn.Module):
    """DropConnect on a recurrent weight matrix (the weight-dropped LSTM of Merity et al. 2018):

        W_hh' = W_hh ⊙ m / (1 − p),   m_ij ~ Bernoulli(1 − p),   identity when not training

    One mask serves every step of a sequence, so the recurrence itself is regularised while
    each path (fused kernel included) still runs on one plain matrix."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return F.dropout(weight, self.p, self.training)


class Recurrent(nn.Module):
    """A stack of recurrent layers built from one cell type.

    Layer l (l = 0 … num_layers−1) in direction d (0 forward, 1 backward) is the cell
    `cells[l * num_directions + d]`; layer l > 0 reads the concatenated outputs of both
    directions of layer l − 1, after dropout with probability `dropout`. `weight_dropout` > 0
    drops entries of every recurrent weight matrix while training (RecurrentWeightDropout).

    forward(x, state=None, lengths=None, mask=None, path="auto") -> (outputs, final_state)
      x:        (batch, time, input_size) (or (time, batch, input_size) if not batch_first)
      state:    initial state, shaped like `final_state`; None means zeros or the learned one
      lengths:  (batch,) valid steps per sequence, 1 … time; or
      mask:     (batch, time) bool, True on valid steps, each row a prefix of True
      outputs:  (batch, time, num_directions * cell.output_size), zero on padded steps
      final_state: the state after each sequence's last valid step, per layer and
                direction, shape (num_layers * num_directions, batch, size) — a tensor for
                cells with one state tensor (Elman, GRU, Jordan), else a tuple ((h, c) for
                LSTM, (h_{t-1}, …, h_{t-K}) for multi-lag), as in `torch.nn.LSTM`.
    step_hook: None, or called at every step as step_hook(layer, direction, t, output); while
      set, "auto" takes the loop.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, initial_state: str = "zeros",
                 batch_first: bool = True, weight_dropout: float = 0.0, **cell_options):
        super().__init__()
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not 0.0 <= weight_dropout < 1.0:
            raise ValueError(f"weight_dropout must be in [0, 1), got {weight_dropout!r}")
        if initial_state not in INITIAL_STATES:
            raise ValueError(f"initial_state must be one of {INITIAL_STATES}, got {initial_state!r}")
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.dropout = dropout
        self.batch_first = batch_first
        cells = []
        layer_input_size = input_size
        for _ in range(num_layers):
            for _ in range(self.num_directions):
                cells.append(make_cell(cell, layer_input_size, hidden_size, **cell_options))
            layer_input_size = self.num_directions * cells[-1].output_size
        self.weight_dropout = weight_dropout
        if weight_dropout:
            for cell in cells:
                parametrize.register_parametrization(cell, cell.recurrent_weight,
                                                     RecurrentWeightDropout(weight_dropout))
        self.cells = nn.ModuleList(cells)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = layer_input_size
        self.state_sizes = cells[0].state_sizes
        self.step_hook = None
        self.initial_state = None
        if initial_state == "learned":
            self.initial_state = nn.ParameterList(
                nn.Parameter(torch.zeros(len(cells), size)) for size in self.state_sizes)

    @property
    def fused_mode(self) -> str | None:
        return self.cells[0].fused_mode

    def forward(self, x: torch.Tensor, state=None, lengths=None, mask=None, path: str = "auto"):
        if x.dim() != 3:
            raise ValueError(f"x must be 3-D (batch, time, features), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x has {x.shape[-1]} features per step, expected input_size={self.input_size}")
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, steps = x.shape[:2]
        if steps == 0:
            raise ValueError("x has no time steps; a sequence needs at least one")
        lengths = _lengths(lengths, mask, batch, steps)
        states = self._initial_states(batch, x) if state is None else self._check_state(state, batch)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if path == "auto":
            path = self._fastest_path(x)
        # One dropped weight matrix per forward: every step (and path) sees the same mask.
        with parametrize.cached() if self.weight_dropout else contextlib.nullcontext():
            outputs, states = self._run(x, states, lengths, path)
        if not self.batch_first:
            outputs = outputs.transpose(0, 1)
        return outputs, states[0] if len(states) == 1 else states

    def step(self, x: torch.Tensor, state=None):
        """One time step of every layer, for writing a sequence one token at a time (generation).

        x (batch, input_size); state as `forward`'s final_state (None: the initial state).
        Returns (output (batch, output_size), state): what forward(x[:, None], state) returns in
        eval mode, less the time axis, without its checks, padding and per-sequence bookkeeping,
        and through the fused one-step kernels (torch.lstm_cell, torch.gru_cell,
        torch.rnn_tanh_cell, torch.rnn_relu_cell) where the cell has one. No dropout between
        layers (as in eval mode). Unidirectional layers only: a backward direction needs the
        whole sequence.
        """
        if self.num_directions == 2:
            raise ValueError("step: a bidirectional layer reads the whole sequence at once; use forward")
        batch = x.shape[0]
        states = self._initial_states(batch, x) if state is None else self._check_state(state, batch)
        finals = []
        with parametrize.cached() if self.weight_dropout else contextlib.nullcontext():
            for layer, cell in enumerate(self.cells):
                x, layer_state = _one_step(cell, x, tuple(s[layer] for s in states))
                finals.append(layer_state)
        states = tuple(torch.stack(parts) for parts in zip(*finals))
        return x, states[0] if len(states) == 1 else states

    def _run(self, x: torch.Tensor, states: State, lengths: torch.Tensor | None, path: str):
        if path != "loop" and self.step_hook is not None:
            raise ValueError(f"step_hook needs path='loop' (path='{path}' has no per-step access)")
        if path == "fused":
            if not self.fused_mode:
                raise ValueError(f"path='fused': {type(self.cells[0]).__name__} has no fused kernel")
            outputs, states = self._fused(x, states, lengths)
        else:
            run_direction = self._step_by_step if path == "loop" else self._hand_bptt
            outputs, states = self._unroll(x, states, lengths, run_direction)
        return outputs, states

    def _fastest_path(self, x: torch.Tensor) -> str:
        """The rule behind path="auto" (measurements in benchmarks/RESULTS.md).

        On CPU a call to a fused kernel or a hand-BPTT Function costs about a millisecond of
        set-up whatever its length (1×512 LSTM, one step: fused 1.7 ms, hand BPTT 4.4 ms, the
        loop 0.6 ms; the loop stays ahead up to 5 steps), so short sequences (generation
        feeds one character at a time) take the loop. Longer ones take the fused kernel where
        the cell has one (cuDNN on GPU), except when training on CPU the cells and sizes in
        HAND_BPTT_TRAINS_FASTER_ON_CPU (HAND_BPTT_TRAINS_FASTER_ON_AVX512 on CPUs with AVX512,
        HAND_BPTT_TRAINS_FASTER_IN_PYTHON without the compiled loops,
        HAND_BPTT_TRAINS_FASTER_IN_BF16 under bfloat16 autocast); the other cells take hand BPTT.
        """
        on_cpu = x.device.type == "cpu"
        if self.step_hook is not None or (x.shape[1] <= SHORT_SEQUENCE and on_cpu):
            return "loop"
        if self.fused_mode:
            if on_cpu and torch.is_grad_enabled():
                if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
                    faster = HAND_BPTT_TRAINS_FASTER_IN_BF16
                elif kernels.ops():
                    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
                    faster = HAND_BPTT_TRAINS_FASTER_ON_AVX512 if avx512 else HAND_BPTT_TRAINS_FASTER_ON_CPU
                else:
                    faster = HAND_BPTT_TRAINS_FASTER_IN_PYTHON
                if self.hidden_size in faster.get(self.fused_mode, ()):
                    return "bptt"
            return "fused"
        return "bptt"

    def _initial_states(self, batch: int, like: torch.Tensor) -> State:
        if self.initial_state is None:
            return tuple(like.new_zeros(len(self.cells), batch, size) for size in self.state_sizes)
        return tuple(init.to(like.dtype)[:, None, :].expand(-1, batch, -1) for init in self.initial_state)

    def _check_state(self, state, batch: int) -> State:
        states = (state,) if isinstance(state, torch.Tensor) else tuple(state)
        expected = [(len(self.cells), batch, size) for size in self.state_sizes]
        if [tuple(s.shape) for s in states] != expected:
            raise ValueError(f"state must be {len(expected)} tensor(s) of shape "
                             f"{', '.join(map(str, expected))}, got {[tuple(s.shape) for s in states]}")
        return states

    def _unroll(self, x: torch.Tensor, states: State, lengths: torch.Tensor | None, run_direction):
        """Layers bottom to top, each direction by `run_direction(layer, direction, cell, x,
        state, valid) -> (outputs, final state)`; dropout between layers."""
        valid = None if lengths is None else torch.arange(x.shape[1], device=x.device) < lengths[:, None].to(x.device)
        layer_input = x
        finals = []  # per cell: its final state
        for layer in range(self.num_layers):
            direction_outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                state = tuple(s[index] for s in states)
                outputs, state = run_direction(layer, direction, self.cells[index], layer_input, state, valid)
                direction_outputs.append(outputs)
                finals.append(state)
            # One direction's outputs go on as they are: torch.cat would copy them whole (hand BPTT's
            # are a time-major buffer seen batch first, as nn.RNN/GRU/LSTM's are on the CPU).
            layer_input = direction_outputs[0] if self.num_directions == 1 else torch.cat(direction_outputs, dim=-1)
            if layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
        return layer_input, tuple(torch.stack(parts) for parts in zip(*finals))

    def _step_by_step(self, layer: int, direction: int, cell: Cell, x: torch.Tensor, state: State,
                      valid: torch.Tensor | None):
        """One direction of one layer as the explicit loop over `cell(x_t, state)`."""
        steps = x.shape[1]
        outputs = [None] * steps
        for t in range(steps) if direction == 0 else range(steps - 1, -1, -1):
            output, new_state = cell(x[:, t], state)
            if self.step_hook is not None:
                self.step_hook(layer, direction, t, output)
            if valid is not None:  # padded step: keep the state, emit zeros
                keep = valid[:, t, None]
                new_state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
                output = output * keep
            state = new_state
            outputs[t] = output
        return torch.stack(outputs, dim=1), state

    @staticmethod
    def _hand_bptt(layer: int, direction: int, cell: Cell, x: torch.Tensor, state: State,
                   valid: torch.Tensor | None):
        """One direction of one layer through `rnnkit.bptt`'s sequence-level autograd Functions."""
        return run_sequence(cell, x, state, valid, reverse=direction == 1)

    def _fused(self, x: torch.Tensor, states: State, lengths: torch.Tensor | None):
        weights = [p for cell in self.cells for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
        kernel = FUSED_KERNELS[self.fused_mode]
        hx = list(states) if self.fused_mode == "lstm" else states[0]
        options = (weights, True, self.num_layers, self.dropout, self.training, self.num_directions == 2)
        if lengths is None:
            outputs, *finals = kernel(x, hx, *options, True)
            return outputs, tuple(finals)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        sorted_hx = [h.index_select(1, packed.sorted_indices) for h in states]
        hx = sorted_hx if self.fused_mode == "lstm" else sorted_hx[0]
        data, *finals = kernel(packed.data, packed.batch_sizes, hx, *options)
        outputs, _ = pad_packed_sequence(
            PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
            batch_first=True, total_length=x.shape[1])
        return outputs, tuple(h.index_select(1, packed.unsorted_indices) for h in finals)


def _one_step(cell: Cell, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """cell(x, state), through the cell's fused one-step kernel where it has one."""
    fused_step = FUSED_STEPS.get(cell.fused_mode)
    if fused_step is None:
        return cell(x, state)
    if cell.fused_mode == "lstm":
        h, c = fused_step(x, state, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        return h, (h, c)
    h = fused_step(x, state[0], cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    return h, (h,)


def _lengths(lengths, mask, batch: int, steps: int) -> torch.Tensor | None:
    """Validate `lengths` or a left-aligned `mask`; None when every sequence is full."""
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.shape != (batch, steps):
            raise ValueError(f"mask must have shape (batch, time) = {(batch, steps)}, got {tuple(mask.shape)}")
        mask = mask.bool()
        lengths = mask.sum(dim=1)
        prefix = torch.arange(steps, device=mask.device) < lengths[:, None]
        if not torch.equal(mask, prefix):
            raise ValueError("mask must be left-aligned: True on each sequence's first steps, False after")
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (batch,) or lengths.dtype.is_floating_point:
        raise ValueError(f"lengths must be {batch} integers (one per sequence), got {lengths.tolist()}")
    if lengths.min() < 1 or lengths.max() > steps:
        raise ValueError(f"lengths must lie in 1..{steps} (the time steps of x), got {lengths.tolist()}")
    return lengths.long()
