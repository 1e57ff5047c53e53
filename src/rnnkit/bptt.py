"""Backpropagation through time by hand: one layer in one direction, as autograd Functions.

Of all the work in BPTT only the recursion along time is sequential. For an Elman layer,
with a_t the pre-activation and δ_t = ∂L/∂a_t,

    forward    a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   h_t = f(a_t)
    backward   δ_t = (∂L/∂h_t + W_hhᵀ δ_{t+1}) ⊙ f'(a_t)

and each step costs one (B, H)×(H, H) matrix product. Everything else is one large
product over all T·B rows at once, with X, Δ, H_prev the (T·B, ·) matrices of x_t, δ_t
and h_{t-1} for every step:

    W_ih x_t + b_ih + b_hh for all t = X W_ihᵀ + b      ∂L/∂W_ih = Σ_t δ_t x_tᵀ     = Δᵀ X
    ∂L/∂x_t for all t               = Δ W_ih           ∂L/∂W_hh = Σ_t δ_t h_{t-1}ᵀ = Δᵀ H_prev
    ∂L/∂b_ih = ∂L/∂b_hh = Σ_t δ_t                      ∂L/∂h_0  = W_hhᵀ δ_1

The Functions below do exactly that. The forward keeps what the backward needs (states,
activated gates) and builds no per-step autograd graph. The backward runs the recursion
step by step, one matrix product and a few pointwise operations on that step's (B, ·)
block each, then forms every weight and input gradient as one product over all steps.
In the equations, e_t is the gradient reaching a step's state from outside the recursion:
its output's gradient, plus the final state's at t = T. The backward is not itself
differentiable (no double backward).

Layout: time-major inside, (T, B, ·), so each step is a contiguous block of rows; state
buffers hold the initial state at index 0 and the state after step t at index t + 1. The
Elman and Jordan Functions are the exceptions: batch-major, see ElmanSequence's docstring.
The recurrent weights are transposed once per call into row-major copies: the per-step
products run faster on those than on transposed views.

Padding: `valid` (B, T) bool marks the steps that count (None: all). On any other step the
state is kept and the output is zero, as in `Recurrent`'s loop path; in the backward such
a step has δ_t = 0 and passes the gradient reaching its state on unchanged. Any mask works
forwards in time; `run_sequence` runs backwards in time by flipping the time axis.

The step-by-step recursions are the `_*_steps` functions below. On the CPU each Function runs
their C++ twin from `rnnkit.kernels` (rnnkit/csrc) when it is built: the same steps without the
interpreter between them. The Python ones remain the fallback and the readable version.

`run_sequence(cell, x, state, valid, reverse)` is the entry point: one layer, one direction,
any cell of `rnnkit.cells`, the same result as `Recurrent._loop` for that cell.
"""

import threading
from functools import cache

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from . import kernels
from .cells import Cell, ElmanCell, GRUCell, JordanCell, LayerNormLSTMCell, LSTMCell, MultiLagCell, State

ACTIVATE_ = {"tanh": torch.tanh_, "relu": torch.relu_}  # in place, on the pre-activation
DERIVATIVE = {  # f'(a) written with h = f(a), so only h needs keeping
    "tanh": lambda h: 1 - h * h,
    "relu": lambda h: (h > 0).to(h.dtype),
}


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """(B, T, F) → (T·B, F), contiguous: step t is rows t·B … t·B + B − 1."""
    return x.transpose(0, 1).reshape(-1, x.shape[-1])


def _step_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) bool → (T, B, 1) bool, to broadcast over one step's (B, F) rows."""
    return None if valid is None else valid.t()[..., None]


def _outputs(states: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Per-step outputs (T, B, F) → (B, T, F), zero on padded steps."""
    outputs = states.transpose(0, 1)
    return outputs if keep is None else outputs * keep.transpose(0, 1)


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN_PROJECTION_WORK = 1 << 26  # multiply-adds; the bench's small shape (2^24.6) gained nothing from oneDNN


def _project(xs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, out=None) -> torch.Tensor:
    """xs Wᵀ + b for all steps at once, W (out, in) as nn.Linear holds it (∂L/∂X = Δ W is
    _project(Δ, Wᵀ)), into `out` where given. In float32 on the CPU:
    - where the compiled loops' build has the panel kernel (csrc/gemm.h; AVX2 without AVX512),
      through it (rnnkit.kernels' linear, the bias added in registers). Alone, one thread, on the
      AVX2 EPYC, it took 0.89-0.96× the time of oneDNN's matmul at most of the bench's projection
      shapes, 1.04-1.05× at two, and at 2 threads 0.79-1.05×; in training steps (hand BPTT, paired
      medians, new ÷ old time) LSTM 0.99 / 0.87, LayerNorm-LSTM 0.92 / 0.92 at the medium / large
      shape, Elman, GRU and Jordan 0.96-1.05;
    - else, with no `out` to fill, from ONEDNN_PROJECTION_WORK multiply-adds through oneDNN's matmul
      (torch.ops.mkldnn._linear_pointwise, the op torch.compile's CPU backend calls). Alone, one
      thread, at the bench's LSTM shapes, it took 0.70, 0.82, 0.98× the time of MKL's torch.mm for
      X W_ihᵀ (small, medium, large) and 0.90, 0.86, 0.83× for Δ W_ih; for Δᵀ X, a long inner
      dimension, it was slower (1.11–1.21×), so the weight gradients stay with mm. In training
      steps it took 0.95× (LayerNorm-LSTM) and 0.97× (GRU) the time at the medium shape, 0.96×
      (LayerNorm-LSTM) at the large one, and no less at the small one.
      torch.backends.mkldnn.enabled = False turns this off.
    Otherwise mm, then the bias (addmm would first copy b into every row: one more pass over the
    largest buffer of the forward)."""
    if xs.dtype == torch.float32 and xs.device.type == "cpu":
        panel_linear = _panel_linear()
        if panel_linear is not None:
            return panel_linear(xs, weight, bias, out)
        if (out is None and _ONEDNN_LINEAR and torch.backends.mkldnn.enabled
                and xs.shape[0] * xs.shape[1] * weight.shape[0] >= ONEDNN_PROJECTION_WORK):
            return torch.ops.mkldnn._linear_pointwise(xs, weight, bias, "none", [], "")
    projected = torch.mm(xs, weight.t(), out=out)
    return projected if bias is None else projected.add_(bias)


def _grad_buffer(grad_outputs, grad_final, valid, width: int) -> torch.Tensor:
    """G (T+1, B, width): G[t+1] = the gradient reaching the state after step t from outside
    the recursion — the step's output gradient in its first F columns (none on padded steps,
    whose outputs are constant zeros), plus the final state's at t+1 = T. G[0] (the initial
    state) starts at zero. The backward loop adds the recurrent part in place."""
    batch, steps, features = grad_outputs.shape
    G = grad_outputs.new_empty(steps + 1, batch, width)
    G[0] = 0
    G[1:, :, features:] = 0
    if valid is None:
        G[1:, :, :features] = grad_outputs.transpose(0, 1)
    else:
        torch.mul(grad_outputs.transpose(0, 1), valid, out=G[1:, :, :features])
    G[steps] += grad_final
    return G


_SCRATCH = threading.local()


def _scratch(name: str, like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """An uninitialised tensor shaped like `like` (or `shape`, in its dtype and on its device) for a
    temporary `name` (one that no output or saved tensor holds), kept per thread for the next call
    of that shape. On the CPU a buffer over glibc's 32 MB mmap limit comes fresh from the kernel on
    every allocation, and smaller ones often do once the heap has been trimmed: a page fault for
    each 4 KB, 3 µs each on the bench's VM.
    Kept, the LayerNorm-LSTM's two (T, B, 4H) temporaries cut a training step's faults from 61.9k
    to 18.1k at the large bench shape, the GRU's three from 26.7k to 6.4k. CUDA's caching
    allocator already reuses memory."""
    shape = like.shape if shape is None else torch.Size(shape)
    if like.device.type != "cpu":
        return like.new_empty(shape)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype:
        buffer = buffers[name] = like.new_empty(shape)
    return buffer


def _lstm_gates_(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Activate LSTM gate pre-activations (B, 4H) in place, σ on i, f, o and tanh on g; return i, f, g, o."""
    hidden = z.shape[1] // 4
    z[:, :2 * hidden].sigmoid_()
    z[:, 2 * hidden:3 * hidden].tanh_()
    z[:, 3 * hidden:].sigmoid_()
    return z.chunk(4, dim=1)


def _lstm_step_backward(t, gates, kappa, cs, gamma, squashed, delta, Gh, Gc, keep, valid) -> None:
    """Step t of an LSTM's backward recursion once κ = ∂L/∂c_t is complete, from the activated
    gates[t], c_{t-1} = cs[t] and γ = ∂L/∂h_t for h_t = o ⊙ squashed: δ_t = ∂L/∂(gate
    pre-activations) into delta[t],
        δ = [κ ⊙ g ⊙ i(1 − i),  κ ⊙ c_{t-1} ⊙ f(1 − f),  κ ⊙ i ⊙ (1 − g²),  γ ⊙ squashed ⊙ o(1 − o)],
    κ ⊙ f into Gc[t]; a padded step (valid[t] = 0) has δ_t = 0 and passes κ and γ on unchanged."""
    i, f, g, _ = gates[t].chunk(4, dim=1)
    d_i, d_f, d_g, d_o = delta[t].chunk(4, dim=1)
    torch.mul(kappa, g, out=d_i)
    torch.mul(kappa, cs[t], out=d_f)
    torch.mul(gamma, squashed, out=d_o)
    delta[t].mul_(torch.addcmul(gates[t], gates[t], gates[t], value=-1))  # σ' = s(1 − s); g's block is redone:
    torch.mul(kappa, i, out=d_g).mul_(1 - g * g)
    torch.mul(kappa, f, out=Gc[t])
    if valid is not None:
        delta[t].mul_(valid[t])
        torch.where(keep[t], Gc[t], kappa, out=Gc[t])
        Gh[t].addcmul_(gamma, 1 - valid[t])


# The panel kernel's weight gradient against MKL's torch.mm(deltaᵀ, x), alone, paired medians of
# 15 rounds on the AVX2 EPYC (time ÷ mm's), delta (6400, M), x (6400, N): M = 1024, N = 256 (the
# LSTMs' gates at the bench's medium shape) 0.84-0.88 at one thread, 0.99 at two; M = 2048, N = 512
# 0.84-0.99 and 0.83; but M = N = 256 (Elman) 1.02-1.06 and 1.09-1.16, and (1600, 256) × (1600, 64)
# 0.99-1.04 and 1.14-1.32. In training steps (one thread, hand BPTT, both orders of a paired A/B):
# medium LSTM 0.949 / 0.959, LayerNorm-LSTM 0.954 / 0.937 and 0.958 / 1.002; large LSTM 0.985 / 0.904.
# At two threads (each thread packing its own columns of delta) the medium LSTM's step took 1.014 /
# 1.043 the time: MKL's own threads keep those products.
PANEL_GRADIENT_COLUMNS = 1024


@cache
def _panel_linear():
    """rnnkit.kernels' linear (csrc/projection.cpp) where the build has it (AVX2 without AVX512), else None."""
    compiled = kernels.ops()
    return None if compiled is None else getattr(compiled, "linear", None)


def _weight_gradient(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """deltaᵀ x: a weight gradient, summed over every step and sequence (the rows). In float32 on the
    CPU on one thread, for a delta of PANEL_GRADIENT_COLUMNS columns or more, through the panel kernel
    where the build has it (rnnkit.kernels' weight_gradient, csrc/projection.cpp), else torch.mm."""
    if (delta.dtype == torch.float32 and delta.device.type == "cpu" and delta.shape[1] >= PANEL_GRADIENT_COLUMNS
            and torch.get_num_threads() == 1):
        panel_weight_gradient = _panel_weight_gradient()
        if panel_weight_gradient is not None:
            return panel_weight_gradient(delta, x)
    return delta.t() @ x


def _recurrent_weight_gradient(delta: torch.Tensor, states: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Σ_t δ_t s_{t-1}ᵀ over every step and sequence, for batch-major delta (B, T, N) and states
    (B, T, W) with s_0 = initial (B, W). In the (B·T, ·) rows s_{t-1} is the row before δ_t's, except
    at t = 1, where the row before is the previous sequence's last state: one product over the
    shifted rows, then those B rows' terms swapped for s_0's."""
    gradient = _weight_gradient(delta.view(-1, delta.shape[2])[1:], states.view(-1, states.shape[2])[:-1])
    gradient.addmm_(delta[:, 0].t(), initial)
    gradient.addmm_(delta[1:, 0].t(), states[:-1, -1], alpha=-1)
    return gradient


@cache
def _panel_weight_gradient():
    """rnnkit.kernels' weight_gradient where the build has it (AVX2 without AVX512), else None."""
    compiled = kernels.ops()
    return None if compiled is None else getattr(compiled, "weight_gradient", None)


def _compiled(name: str, like: torch.Tensor):
    """The compiled loop `name` of rnnkit.kernels for tensors like `like`, or None (then the Python loop)."""
    compiled = kernels.ops() if like.device.type == "cpu" else None
    return None if compiled is None else getattr(compiled, name)


def _elman_forward_steps(S, s0, weight_hh_t, valid, nonlinearity) -> None:
    """ElmanSequence's forward recursion, batch-major: S[:, t] = s_t = [f(a_t) | s_{t-1} minus its last
    block], with S[:, t, :H] holding the input part of a_t beforehand (rnnkit/csrc/elman_jordan.cpp in C++)."""
    hidden = weight_hh_t.shape[1]
    before = s0
    for t in range(S.shape[1]):
        after = S[:, t]
        ACTIVATE_[nonlinearity](after[:, :hidden].addmm_(before, weight_hh_t))
        if S.shape[2] > hidden:  # K > 1: the older lags move one block on
            after[:, hidden:] = before[:, :-hidden]
        if valid is not None:  # a padded step keeps the whole lagged state
            torch.where(valid[:, t, None], after, before, out=after)
        before = after


def _elman_backward_steps(grad_outputs, carry, delta, sums, S, weight_hh, valid, nonlinearity) -> None:
    """ElmanSequence's backward recursion, t = T … 1, batch-major: carry holds the part of ∂L/∂s_t that
    comes from later steps (at first the final state's gradient) and ends as ∂L/∂s_0; delta[:, t] = δ_t,
    f'(a_t) read off h_t in S[:, t] (0 on a padded step, which has no a_t); sums = Σ_t δ_t, the biases'
    gradient (rnnkit/csrc/elman_jordan.cpp in C++, which adds each row while it is in cache)."""
    hidden = delta.shape[2]
    later = carry.clone()
    for t in reversed(range(S.shape[1])):
        kept = None if valid is None else valid[:, t, None]
        grad_h = later[:, :hidden]
        grad_h += grad_outputs[:, t] if kept is None else grad_outputs[:, t] * kept
        torch.mul(grad_h, DERIVATIVE[nonlinearity](S[:, t, :hidden]), out=delta[:, t])
        if kept is not None:
            delta[:, t] *= kept
        earlier = delta[:, t] @ weight_hh
        if S.shape[2] > hidden:  # the older lags' gradients move one block back
            earlier[:, :-hidden] += later[:, hidden:] if kept is None else later[:, hidden:] * kept
        if kept is not None:  # a padded step keeps the state: its gradient passes through
            earlier.addcmul_(later, 1 - kept)
        later = earlier
    carry.copy_(later)
    torch.sum(delta, (0, 1), out=sums)


def _jordan_forward_steps(hs, ys, y0, weight_yh_t, weight_hy_t, bias_hy, valid, nonlinearity) -> None:
    """JordanSequence's forward recursion, batch-major: hs[:, t] turns from W_ih x_t + b_ih into h_t, and
    ys[:, t] is y_t (rnnkit/csrc/elman_jordan.cpp in C++)."""
    before = y0
    for t in range(hs.shape[1]):
        h = ACTIVATE_[nonlinearity](hs[:, t].addmm_(before, weight_yh_t))
        ys[:, t] = torch.addmm(bias_hy, h, weight_hy_t)
        if valid is not None:  # a padded step keeps y
            torch.where(valid[:, t, None], ys[:, t], before, out=ys[:, t])
        before = ys[:, t]


def _jordan_backward_steps(grad_outputs, carry, G, delta, sums, hs, weight_yh, weight_hy, valid, nonlinearity) -> None:
    """JordanSequence's backward recursion, t = T … 1, batch-major: carry holds the part of ∂L/∂y_t that comes
    from later steps (at first the final output's gradient) and ends as ∂L/∂y_0; G[:, t] = γ_t and
    delta[:, t] = δ_t, both 0 on a padded step, f'(a_t) read off h_t = hs[:, t]; sums (H + O) the biases'
    gradients [Σ_t δ_t, Σ_t γ_t] (rnnkit/csrc/elman_jordan.cpp in C++, which adds each row while it is in cache)."""
    later = carry.clone()
    for t in reversed(range(hs.shape[1])):
        kept = None if valid is None else valid[:, t, None]
        gamma = later + (grad_outputs[:, t] if kept is None else grad_outputs[:, t] * kept)
        G[:, t] = gamma if kept is None else gamma * kept  # a padded step does not use W_hy
        delta[:, t] = (G[:, t] @ weight_hy) * DERIVATIVE[nonlinearity](hs[:, t])
        earlier = delta[:, t] @ weight_yh
        if kept is not None:  # a padded step keeps y: its gradient passes through
            earlier.addcmul_(gamma, 1 - kept)
        later = earlier
    carry.copy_(later)
    hidden = delta.shape[2]
    torch.sum(delta, (0, 1), out=sums[:hidden])
    torch.sum(G, (0, 1), out=sums[hidden:])


def _lstm_forward_steps(gates, hs, cs, tanh_cs, weight_hh_t, keep) -> None:
    """LSTMSequence's forward recursion: gates[t] turns from W_ih x_t + biases into the activated
    gates, hs[t + 1] and cs[t + 1] into h_t and c_t, tanh_cs[t] into tanh c_t (rnnkit/csrc/lstm.cpp in C++)."""
    for t in range(gates.shape[0]):
        i, f, g, o = _lstm_gates_(gates[t].addmm_(hs[t], weight_hh_t))
        torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, g)
        torch.mul(o, torch.tanh(cs[t + 1], out=tanh_cs[t]), out=hs[t + 1])
        if keep is not None:
            torch.where(keep[t], cs[t + 1], cs[t], out=cs[t + 1])
            torch.where(keep[t], hs[t + 1], hs[t], out=hs[t + 1])


def _lstm_backward_steps(gates, cs, tanh_cs, weight_hh, keep, Gh, Gc, delta, sums) -> None:
    """LSTMSequence's backward recursion, steps t = T … 1: Gh[t] ends as γ_t, Gc[t] as κ_t and delta[t − 1]
    as δ_t; Gh[0] and Gc[0] as ∂L/∂h_0 and ∂L/∂c_0 = κ_1 ⊙ f_1; sums = Σ_t δ_t, the biases' gradient
    (rnnkit/csrc/lstm.cpp in C++, which adds each row while it is in cache)."""
    hidden = cs.shape[2]
    valid = None if keep is None else keep.to(cs.dtype)
    for t in reversed(range(gates.shape[0])):
        o = gates[t, :, 3 * hidden:]
        gamma, kappa, tanh_c = Gh[t + 1], Gc[t + 1], tanh_cs[t]
        gamma_o = gamma * o if valid is None else gamma * o * valid[t]  # padded: h_t is not o ⊙ tanh c_t
        kappa.addcmul_(gamma_o, 1 - tanh_c * tanh_c)  # κ_t
        _lstm_step_backward(t, gates, kappa, cs, gamma, tanh_c, delta, Gh, Gc, keep, valid)
        Gh[t].addmm_(delta[t], weight_hh)
    torch.sum(delta, (0, 1), out=sums)


def _gru_forward_steps(from_x, m_n, rz, n, hs, weight_hh_t, bias_hh, keep) -> None:
    """GRUSequence's forward recursion: m_n[t] = the last block of W_hh h_{t-1} + b_hh, rz[t] = [r_t, z_t],
    n[t] = n_t and hs[t + 1] = h_t (rnnkit/csrc/gru.cpp in C++)."""
    hidden = n.shape[2]
    from_h = hs.new_empty(hs.shape[1], 3 * hidden)  # W_hh h_{t-1} + b_hh, one step at a time
    for t in range(n.shape[0]):
        torch.addmm(bias_hh, hs[t], weight_hh_t, out=from_h)
        torch.add(from_x[t, :, :2 * hidden], from_h[:, :2 * hidden], out=rz[t]).sigmoid_()
        r, z = rz[t].chunk(2, dim=1)
        m_n[t] = from_h[:, 2 * hidden:]
        torch.addcmul(from_x[t, :, 2 * hidden:], r, m_n[t], out=n[t]).tanh_()
        torch.lerp(n[t], hs[t], z, out=hs[t + 1])  # n + z ⊙ (h_{t-1} − n)
        if keep is not None:
            torch.where(keep[t], hs[t + 1], hs[t], out=hs[t + 1])


def _gru_backward_steps(m_n, rz, n, hs, weight_hh, keep, G, delta, delta_x_n, sums) -> None:
    """GRUSequence's backward recursion, steps t = T … 1: G[t] ends as γ_t (G[0] as ∂L/∂h_0), delta[t − 1]
    as δ_t, delta_x_n[t − 1] as γ_t ⊙ ν_t and sums (4H) as [Σ_t δ_t, Σ_t γ_t ⊙ ν_t], the bias gradients'
    parts (rnnkit/csrc/gru.cpp in C++, which adds each row while it is in cache)."""
    hidden = n.shape[2]
    valid = None if keep is None else keep.to(n.dtype)
    for t in reversed(range(n.shape[0])):
        r, z = rz[t].chunk(2, dim=1)
        slope_r, slope_z = torch.addcmul(rz[t], rz[t], rz[t], value=-1).chunk(2, dim=1)  # σ' = s(1 − s)
        d_r, d_z, d_n = delta[t].chunk(3, dim=1)
        gamma = G[t + 1] if valid is None else G[t + 1] * valid[t]  # padded: h_t is kept, no gates
        gamma_nu = torch.mul(gamma, 1 - z, out=delta_x_n[t]).mul_(1 - n[t] * n[t])
        torch.mul(gamma_nu, r, out=d_n)
        torch.mul(gamma_nu, m_n[t], out=d_r).mul_(slope_r)
        torch.sub(hs[t], n[t], out=d_z).mul_(gamma).mul_(slope_z)
        G[t].addcmul_(gamma, z).addmm_(delta[t], weight_hh)
        if valid is not None:  # a padded step keeps h: its gradient passes through
            G[t].addcmul_(G[t + 1], 1 - valid[t])
    torch.sum(delta, (0, 1), out=sums[:3 * hidden])
    torch.sum(delta_x_n, (0, 1), out=sums[3 * hidden:])


def _layer_norm_backward_rows(delta, us, mean, rstd, weight, grad_u, grad_weight, grad_bias) -> None:
    """The backward of LN(u) = w ⊙ û + b over each row of us (N, F), from δ = ∂L/∂LN(u): ∂L/∂u
    into grad_u, Σ_rows δ ⊙ û into grad_weight, Σ_rows δ into grad_bias."""
    width = us.shape[-1]
    grad_input, grad_gain, _ = torch.ops.aten.native_layer_norm_backward(
        delta, us, [width], mean.view(-1, 1), rstd.view(-1, 1), weight, None, [True, True, False])
    grad_u.copy_(grad_input)
    grad_weight.copy_(grad_gain)
    torch.sum(delta, 0, out=grad_bias)  # ATen's needs the bias itself for this one


def _layer_norm_lstm_forward_steps(us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, hs, cs, c_mean, c_rstd, tanh_ls,
                                   weight_hh_t, ln_ih_weight, bias, ln_hh_weight, ln_c_weight, ln_c_bias, keep,
                                   eps) -> None:
    """LayerNormLSTMSequence's forward recursion, t = 1 … T, into the buffers; what
    rnnkit/csrc/lnlstm.cpp's lnlstm_forward does in C++. gates[t] gets LN_ih(u_t) + LN_hh(v_t) + bias
    and ends as the activated gates. torch.native_layer_norm does mean, variance, normalisation and
    gain in one kernel and hands back the mean and 1/std: a step makes a dozen calls instead of
    twenty-odd."""
    hidden = hs.shape[-1]
    gates_size = (4 * hidden,)
    for t in range(gates.shape[0]):
        gates[t], u_mean[t], u_rstd[t] = torch.native_layer_norm(us[t], gates_size, ln_ih_weight, bias, eps)
        torch.mm(hs[t], weight_hh_t, out=vs[t])
        v_normed, v_mean[t], v_rstd[t] = torch.native_layer_norm(vs[t], gates_size, ln_hh_weight, None, eps)
        i, f, g, o = _lstm_gates_(gates[t].add_(v_normed))
        torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, g)
        ell, c_mean[t], c_rstd[t] = torch.native_layer_norm(cs[t + 1], (hidden,), ln_c_weight, ln_c_bias, eps)
        torch.tanh(ell, out=tanh_ls[t])
        torch.mul(o, tanh_ls[t], out=hs[t + 1])
        if keep is not None:
            torch.where(keep[t], cs[t + 1], cs[t], out=cs[t + 1])
            torch.where(keep[t], hs[t + 1], hs[t], out=hs[t + 1])


def _layer_norm_lstm_backward_steps(us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, cs, c_mean, c_rstd, tanh_ls,
                                    weight_hh, ln_ih_weight, ln_hh_weight, ln_c_weight, keep, Gh, Gc, grad_u, grad_v,
                                    grad_ln_ih_weight, grad_bias, grad_ln_hh_weight, grad_ln_c_weight,
                                    grad_ln_c_bias) -> None:
    """LayerNormLSTMSequence's backward recursion, t = T … 1: fills ∂L/∂v_t, leaves γ_t in Gh[t] and
    κ_t in Gc[t]; then ∂L/∂u_t for all steps at once, and the gradients of the gains and biases.
    What rnnkit/csrc/lnlstm.cpp's lnlstm_backward does in C++ (there row by row, δ_t never stored)."""
    layer_norm_backward = torch.ops.aten.native_layer_norm_backward
    steps, batch, hidden = tanh_ls.shape
    gates_size, input_only = [4 * hidden], [True, False, False]
    valid = None if keep is None else keep.to(cs.dtype)
    delta, grad_l = torch.empty_like(gates), torch.empty_like(tanh_ls)  # δ_t, ∂L/∂ℓ_t
    c_normalised = cs[1:]  # c_t as normalised: a padded step's c_t is overwritten after, but its ∂L/∂ℓ_t is 0
    for t in reversed(range(steps)):
        o = gates[t, :, 3 * hidden:]
        gamma, kappa, tanh_l = Gh[t + 1], Gc[t + 1], tanh_ls[t]
        gamma_o = gamma * o if valid is None else gamma * o * valid[t]  # padded: h_t is not o ⊙ tanh ℓ_t
        torch.mul(gamma_o, 1 - tanh_l * tanh_l, out=grad_l[t])
        kappa += layer_norm_backward(grad_l[t], c_normalised[t], [hidden], c_mean[t], c_rstd[t], ln_c_weight,
                                     None, input_only)[0]  # κ_t
        _lstm_step_backward(t, gates, kappa, cs, gamma, tanh_l, delta, Gh, Gc, keep, valid)
        grad_v[t] = layer_norm_backward(delta[t], vs[t], gates_size, v_mean[t], v_rstd[t], ln_hh_weight, None,
                                        input_only)[0]
        Gh[t].addmm_(grad_v[t], weight_hh)
    rows = (-1, 4 * hidden)
    _layer_norm_backward_rows(delta.view(rows), us.view(rows), u_mean, u_rstd, ln_ih_weight, grad_u.view(rows),
                              grad_ln_ih_weight, grad_bias)
    v_hat = (vs - v_mean).mul_(v_rstd)
    c_hat = (c_normalised - c_mean).mul_(c_rstd)
    torch.sum(delta * v_hat, (0, 1), out=grad_ln_hh_weight)
    torch.sum(grad_l * c_hat, (0, 1), out=grad_ln_c_weight)
    torch.sum(grad_l, (0, 1), out=grad_ln_c_bias)


class ElmanSequence(Function):
    """Elman layer over a sequence; with weight_hh = [W_1 | … | W_K] of shape (H, K·H) it is
    the K-lag `MultiLagCell` (K = 1 is `ElmanCell`).

    The state is the lagged-state vector s_t = [h_t | h_{t-1} | … | h_{t-K+1}], (B, K·H), so
    the K recurrent products are one, and ∂L/∂W_hh is one product over all steps.

    Forward, t = 1 … T:
        a_t = W_ih x_t + b_ih + W_hh s_{t-1} + b_hh,   h_t = f(a_t),   s_t = [h_t | s_{t-1} minus its last block]
    Backward, with e_t the gradient from outside (the output's, in the first block; the final state's):
        ∂L/∂s_t = e_t + W_hhᵀ δ_{t+1} + [∂L/∂s_{t+1} minus its first block | 0]
        δ_t     = (first block of ∂L/∂s_t) ⊙ f'(a_t),   f' = 1 − h_t² (tanh) or [h_t > 0] (relu)
        ∂L/∂W_hh = Σ_t δ_t s_{t-1}ᵀ   ∂L/∂W_ih = Σ_t δ_t x_tᵀ   ∂L/∂b_ih = ∂L/∂b_hh = Σ_t δ_t
        ∂L/∂x_t  = W_ihᵀ δ_t         ∂L/∂s_0 as above

    Unlike the other Functions it works batch-major, in the caller's layout: the states S
    (B, T, K·H) take the input projection X W_ihᵀ straight from x's (B·T, I) rows, the outputs
    are S itself (K = 1) and ∂L/∂x comes out as (B, T, I), so neither x, the output gradient nor
    ∂L/∂x is copied into another layout (up to 4% of a training step at the bench's shapes,
    measured against the time-major version it replaced; benchmarks/RESULTS.md).
    ∂L/∂W_hh is one product over the (B·T, ·) rows shifted by one, corrected at t = 1
    (_recurrent_weight_gradient).

    apply(x (B, T, I), state (B, K·H), weight_ih, weight_hh, bias_ih, bias_hh, valid, nonlinearity)
      -> outputs (B, T, H), final state (B, K·H)
    """

    @staticmethod
    def forward(ctx, x, state, weight_ih, weight_hh, bias_ih, bias_hh, valid=None, nonlinearity="tanh"):
        batch, steps, _ = x.shape
        hidden, width = weight_hh.shape
        xs = x.reshape(batch * steps, -1)
        s0 = state.contiguous()
        # Every step's input part at once, where h_t will be; the loop adds W_hh s_{t-1}.
        projected = _project(xs, weight_ih, bias_ih + bias_hh).view(batch, steps, hidden)
        if width == hidden:
            S = projected
        else:
            S = x.new_empty(batch, steps, width)
            S[:, :, :hidden] = projected
        valid = None if valid is None else valid.contiguous()
        forward_steps = _compiled("elman_forward", x) or _elman_forward_steps
        forward_steps(S, s0, weight_hh.t().contiguous(), valid, nonlinearity)
        ctx.save_for_backward(xs, s0, S, weight_ih, weight_hh, valid)
        ctx.nonlinearity = nonlinearity
        outputs = S[:, :, :hidden]
        return (outputs if valid is None else outputs * valid[..., None]), S[:, -1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_final):
        xs, s0, S, weight_ih, weight_hh, valid = ctx.saved_tensors
        batch, steps, _ = S.shape
        hidden = weight_hh.shape[0]
        carry = grad_final.contiguous().clone()  # ends as ∂L/∂s_0
        delta = _scratch("elman delta", S, (batch, steps, hidden))  # δ_t, written by the recursion
        grad_bias = S.new_empty(hidden)  # Σ_t δ_t, added up by the recursion
        backward_steps = _compiled("elman_backward", S) or _elman_backward_steps
        backward_steps(grad_outputs.contiguous(), carry, delta, grad_bias, S, weight_hh,
                       None if valid is None else valid.to(S.dtype), ctx.nonlinearity)
        deltas = delta.view(-1, hidden)
        grad_x = _project(deltas, weight_ih.t()).view(batch, steps, -1) if ctx.needs_input_grad[0] else None
        return (grad_x, carry, _weight_gradient(deltas, xs), _recurrent_weight_gradient(delta, S, s0), grad_bias,
                grad_bias, None, None)


MultiLagSequence = ElmanSequence  # the same Function: K = weight_hh.shape[1] // weight_hh.shape[0]


class JordanSequence(Function):
    """Jordan layer over a sequence: the recurrence runs through the output y, not h.

    Forward, t = 1 … T:
        a_t = W_ih x_t + b_ih + W_yh y_{t-1},   h_t = f(a_t),   y_t = W_hy h_t + b_hy
    Backward:
        γ_t = ∂L/∂y_t = e_t + W_yhᵀ δ_{t+1}
        δ_t = (W_hyᵀ γ_t) ⊙ f'(a_t)
        ∂L/∂W_hy = Σ_t γ_t h_tᵀ       ∂L/∂b_hy = Σ_t γ_t     ∂L/∂W_yh = Σ_t δ_t y_{t-1}ᵀ
        ∂L/∂W_ih = Σ_t δ_t x_tᵀ       ∂L/∂b_ih = Σ_t δ_t     ∂L/∂x_t  = W_ihᵀ δ_t
        ∂L/∂y_0  = W_yhᵀ δ_1
    Each step is two matrix products each way (y_{t-1} → h_t → y_t).

    Batch-major, like ElmanSequence and for the same reason: x, the outputs and ∂L/∂x keep the
    caller's (B, T, ·) layout, uncopied; ∂L/∂W_yh, like Elman's ∂L/∂W_hh, is one product over the
    rows shifted by one, corrected at t = 1 (_recurrent_weight_gradient).

    apply(x (B, T, I), y0 (B, O), weight_ih, bias_ih, weight_yh, weight_hy, bias_hy, valid, nonlinearity)
      -> outputs (B, T, O), final y (B, O)
    """

    @staticmethod
    def forward(ctx, x, y0, weight_ih, bias_ih, weight_yh, weight_hy, bias_hy, valid=None, nonlinearity="tanh"):
        batch, steps, _ = x.shape
        xs = x.reshape(batch * steps, -1)
        y0 = y0.contiguous()
        hs = _project(xs, weight_ih, bias_ih).view(batch, steps, -1)  # a_t less W_yh y_{t-1}
        ys = x.new_empty(batch, steps, weight_hy.shape[0])
        valid = None if valid is None else valid.contiguous()
        forward_steps = _compiled("jordan_forward", x) or _jordan_forward_steps
        forward_steps(hs, ys, y0, weight_yh.t().contiguous(), weight_hy.t().contiguous(), bias_hy, valid, nonlinearity)
        ctx.save_for_backward(xs, y0, hs, ys, weight_ih, weight_yh, weight_hy, valid)
        ctx.nonlinearity = nonlinearity
        return (ys if valid is None else ys * valid[..., None]), ys[:, -1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_final):
        xs, y0, hs, ys, weight_ih, weight_yh, weight_hy, valid = ctx.saved_tensors
        batch, steps, hidden = hs.shape
        outputs = ys.shape[2]
        carry = grad_final.contiguous().clone()  # ends as ∂L/∂y_0
        G = _scratch("jordan gamma", ys)  # γ_t, written by the recursion
        delta = _scratch("jordan delta", hs)  # δ_t, likewise
        sums = hs.new_empty(hidden + outputs)  # the biases' gradients, added up by the recursion
        backward_steps = _compiled("jordan_backward", hs) or _jordan_backward_steps
        backward_steps(grad_outputs.contiguous(), carry, G, delta, sums, hs, weight_yh, weight_hy,
                       None if valid is None else valid.to(hs.dtype), ctx.nonlinearity)
        deltas = delta.view(-1, hidden)
        grad_x = _project(deltas, weight_ih.t()).view(batch, steps, -1) if ctx.needs_input_grad[0] else None
        return (grad_x, carry, _weight_gradient(deltas, xs), sums[:hidden], _recurrent_weight_gradient(delta, ys, y0),
                _weight_gradient(G.view(-1, outputs), hs.view(-1, hidden)), sums[hidden:], None, None)


class LSTMSequence(Function):
    """LSTM layer over a sequence, gates in `torch.nn.LSTM` order (i, f, g, o).

    Forward, t = 1 … T, with σ on i, f, o and tanh on g:
        [i, f, g, o]_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t,   h_t = o_t ⊙ tanh(c_t)
    Backward, with δ_t = ∂L/∂(gate pre-activations) and κ_{T+1} ⊙ f_{T+1} read as ∂L/∂c_T:
        γ_t = ∂L/∂h_t = e_t + W_hhᵀ δ_{t+1}
        κ_t = ∂L/∂c_t = γ_t ⊙ o_t ⊙ (1 − tanh² c_t) + κ_{t+1} ⊙ f_{t+1}
        δ_t = [κ_t ⊙ g_t ⊙ i_t(1 − i_t),  κ_t ⊙ c_{t-1} ⊙ f_t(1 − f_t),
               κ_t ⊙ i_t ⊙ (1 − g_t²),   γ_t ⊙ tanh c_t ⊙ o_t(1 − o_t)]
        ∂L/∂W_hh = Σ_t δ_t h_{t-1}ᵀ   ∂L/∂W_ih = Σ_t δ_t x_tᵀ   ∂L/∂b_ih = ∂L/∂b_hh = Σ_t δ_t
        ∂L/∂x_t = W_ihᵀ δ_t           ∂L/∂h_0 = W_hhᵀ δ_1      ∂L/∂c_0 = κ_1 ⊙ f_1

    apply(x (B, T, I), h0 (B, H), c0 (B, H), weight_ih, weight_hh, bias_ih, bias_hh, valid)
      -> outputs (B, T, H), final h (B, H), final c (B, H)
    """

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, valid=None):
        batch, steps, _ = x.shape
        hidden = h0.shape[-1]
        keep = _step_mask(valid)
        xs = _time_major(x)
        gates = _project(xs, weight_ih, bias_ih + bias_hh).view(steps, batch, 4 * hidden)
        hs, cs = x.new_empty(2, steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        tanh_cs = torch.empty_like(hs[1:])
        forward_steps = _compiled("lstm_forward", x) or _lstm_forward_steps
        forward_steps(gates, hs, cs, tanh_cs, weight_hh.t().contiguous(), keep)
        ctx.save_for_backward(xs, gates, hs, cs, tanh_cs, weight_ih, weight_hh, keep)
        return _outputs(hs[1:], keep), hs[steps], cs[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_h, grad_c):
        xs, gates, hs, cs, tanh_cs, weight_ih, weight_hh, keep = ctx.saved_tensors
        steps, batch, hidden = tanh_cs.shape
        valid = None if keep is None else keep.to(hs.dtype)
        Gh = _grad_buffer(grad_outputs, grad_h, valid, hidden)  # Gh[t] ends as γ_t
        Gc = torch.zeros_like(Gh)  # Gc[t] ends as κ_t
        Gc[steps] = grad_c
        delta = torch.empty_like(gates)
        grad_bias = gates.new_empty(4 * hidden)  # Σ_t δ_t, added up by the recursion
        backward_steps = _compiled("lstm_backward", gates) or _lstm_backward_steps
        backward_steps(gates, cs, tanh_cs, weight_hh, keep, Gh, Gc, delta, grad_bias)
        delta = delta.view(-1, 4 * hidden)
        grad_x = (_project(delta, weight_ih.t()).view(steps, batch, -1).transpose(0, 1)
                  if ctx.needs_input_grad[0] else None)
        return (grad_x, Gh[0], Gc[0], _weight_gradient(delta, xs), _weight_gradient(delta, hs[:-1].view(-1, hidden)),
                grad_bias, grad_bias, None)


class LayerNormLSTMSequence(Function):
    """Layer-normalised LSTM (Ba, Kiros & Hinton 2016) over a sequence, gates in order (i, f, g, o).

    LN(v) = w ⊙ v̂ + b with v̂ = (v − mean v) / sqrt(var v + eps) over the features, each LN with
    its own gain w and bias b. Forward, t = 1 … T, with u_t = W_ih x_t and v_t = W_hh h_{t-1}:
        [i, f, g, o]_t = act(LN_ih(u_t) + LN_hh(v_t) + bias)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t,   ℓ_t = LN_c(c_t),   h_t = o_t ⊙ tanh(ℓ_t)
    Backward, with δ_t = ∂L/∂(gate pre-activations), LN'ᵀ(d) = r ⊙ (d − mean d − v̂ ⊙ mean(d ⊙ v̂))
    the gradient through v ↦ v̂, and κ_{T+1} ⊙ f_{T+1} read as ∂L/∂c_T:
        γ_t = ∂L/∂h_t = e_t + W_hhᵀ ∂L/∂v_{t+1}
        ∂L/∂ℓ_t = γ_t ⊙ o_t ⊙ (1 − tanh² ℓ_t)
        κ_t = ∂L/∂c_t = LN'ᵀ(w_c ⊙ ∂L/∂ℓ_t) + κ_{t+1} ⊙ f_{t+1}
        δ_t = [κ_t ⊙ g_t ⊙ i_t(1 − i_t),  κ_t ⊙ c_{t-1} ⊙ f_t(1 − f_t),
               κ_t ⊙ i_t ⊙ (1 − g_t²),   γ_t ⊙ tanh ℓ_t ⊙ o_t(1 − o_t)]
        ∂L/∂v_t = LN'ᵀ(w_hh ⊙ δ_t)          ∂L/∂u_t = LN'ᵀ(w_ih ⊙ δ_t)
        ∂L/∂W_hh = Σ_t ∂L/∂v_t h_{t-1}ᵀ     ∂L/∂W_ih = Σ_t ∂L/∂u_t x_tᵀ     ∂L/∂x_t = W_ihᵀ ∂L/∂u_t
        ∂L/∂bias = ∂L/∂b_ih = ∂L/∂b_hh = Σ_t δ_t,  ∂L/∂w_ih = Σ_t δ_t ⊙ û_t,  ∂L/∂w_hh = Σ_t δ_t ⊙ v̂_t
        ∂L/∂b_c = Σ_t ∂L/∂ℓ_t,  ∂L/∂w_c = Σ_t ∂L/∂ℓ_t ⊙ ĉ_t,  ∂L/∂h_0 = W_hhᵀ ∂L/∂v_1,  ∂L/∂c_0 = κ_1 ⊙ f_1
    LN_ih does not depend on the recursion, but the loops do it row by row, in the passes that
    already read and write each step's gates (the Python backward does it over all steps at once).

    apply(x (B, T, I), h0 (B, H), c0 (B, H), weight_ih, weight_hh, bias, ln_ih_weight, ln_ih_bias,
          ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, valid, eps)
      -> outputs (B, T, H), final h (B, H), final c (B, H)
    """

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias, ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias,
                ln_c_weight, ln_c_bias, valid=None, eps=1e-5):
        batch, steps, _ = x.shape
        hidden = h0.shape[-1]
        keep = _step_mask(valid)
        xs = _time_major(x)
        us = _project(xs, weight_ih).view(steps, batch, 4 * hidden)
        gates, vs = torch.empty_like(us), torch.empty_like(us)
        u_mean, u_rstd, v_mean, v_rstd, c_mean, c_rstd = x.new_empty(6, steps, batch, 1)
        hs, cs = x.new_empty(2, steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        tanh_ls = torch.empty_like(hs[1:])
        forward_steps = _compiled("lnlstm_forward", x) or _layer_norm_lstm_forward_steps
        # the sum of the three biases as LN_ih's bias: added in the same pass
        forward_steps(us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, hs, cs, c_mean, c_rstd, tanh_ls,
                      weight_hh.t().contiguous(), ln_ih_weight, bias + ln_ih_bias + ln_hh_bias, ln_hh_weight,
                      ln_c_weight, ln_c_bias, keep, eps)
        ctx.eps = eps
        ctx.save_for_backward(xs, us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, hs, cs, c_mean, c_rstd, tanh_ls,
                              weight_ih, weight_hh, ln_ih_weight, ln_hh_weight, ln_c_weight, keep)
        return _outputs(hs[1:], keep), hs[steps], cs[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_h, grad_c):
        (xs, us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, hs, cs, c_mean, c_rstd, tanh_ls,
         weight_ih, weight_hh, ln_ih_weight, ln_hh_weight, ln_c_weight, keep) = ctx.saved_tensors
        steps, batch, hidden = tanh_ls.shape
        valid = None if keep is None else keep.to(hs.dtype)
        Gh = _grad_buffer(grad_outputs, grad_h, valid, hidden)  # Gh[t] ends as γ_t
        Gc = torch.zeros_like(Gh)  # Gc[t] ends as κ_t
        Gc[steps] = grad_c
        grad_u, grad_v = _scratch("lnlstm grad_u", gates), _scratch("lnlstm grad_v", gates)  # ∂L/∂u_t, ∂L/∂v_t
        # LN_ih's bias gradient Σ_t δ_t is every bias's
        grad_ln_ih_weight, grad_bias, grad_ln_hh_weight = hs.new_empty(3, 4 * hidden)
        grad_ln_c_weight, grad_ln_c_bias = hs.new_empty(2, hidden)
        backward_steps = _compiled("lnlstm_backward", hs) or _layer_norm_lstm_backward_steps
        backward_steps(us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, cs, c_mean, c_rstd, tanh_ls, weight_hh,
                       ln_ih_weight, ln_hh_weight, ln_c_weight, keep, Gh, Gc, grad_u, grad_v, grad_ln_ih_weight,
                       grad_bias, grad_ln_hh_weight, grad_ln_c_weight, grad_ln_c_bias)
        grad_u, grad_v = grad_u.view(-1, 4 * hidden), grad_v.view(-1, 4 * hidden)
        grad_weight_hh = _weight_gradient(grad_v, hs[:-1].view(-1, hidden))
        grad_x = (_project(grad_u, weight_ih.t()).view(steps, batch, -1).transpose(0, 1)
                  if ctx.needs_input_grad[0] else None)
        return (grad_x, Gh[0], Gc[0], _weight_gradient(grad_u, xs), grad_weight_hh, grad_bias,
                grad_ln_ih_weight, grad_bias, grad_ln_hh_weight, grad_bias, grad_ln_c_weight, grad_ln_c_bias,
                None, None)


class GRUSequence(Function):
    """GRU layer over a sequence, gates in `torch.nn.GRU` order (r, z, n).

    Forward, t = 1 … T, with [x_r, x_z, x_n] = W_ih x_t + b_ih and [m_r, m_z, m_n] = W_hh h_{t-1} + b_hh:
        r_t = σ(x_r + m_r),   z_t = σ(x_z + m_z),   n_t = tanh(x_n + r_t ⊙ m_n)
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    Backward, with ν_t = (1 − z_t)(1 − n_t²) = ∂h_t/∂(n pre-activation), δ_t = ∂L/∂[m_r, m_z, m_n]
    and δˣ_t = ∂L/∂[x_r, x_z, x_n]:
        γ_t = ∂L/∂h_t = e_t + W_hhᵀ δ_{t+1} + γ_{t+1} ⊙ z_{t+1}
        δ_t  = γ_t ⊙ [ν_t ⊙ m_n ⊙ r_t(1 − r_t),  (h_{t-1} − n_t) ⊙ z_t(1 − z_t),  ν_t ⊙ r_t]
        δˣ_t = δ_t with its last block γ_t ⊙ ν_t
        ∂L/∂W_hh = Σ_t δ_t h_{t-1}ᵀ   ∂L/∂b_hh = Σ_t δ_t   ∂L/∂W_ih = Σ_t δˣ_t x_tᵀ   ∂L/∂b_ih = Σ_t δˣ_t
        ∂L/∂x_t = W_ihᵀ δˣ_t          ∂L/∂h_0 = W_hhᵀ δ_1 + γ_1 ⊙ z_1

    apply(x (B, T, I), h0 (B, H), weight_ih, weight_hh, bias_ih, bias_hh, valid)
      -> outputs (B, T, H), final h (B, H)
    """

    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh, valid=None):
        batch, steps, _ = x.shape
        hidden = h0.shape[-1]
        keep = _step_mask(valid)
        xs = _time_major(x)
        # W_ih x_t + b_ih, read by the forward recursion alone: kept for the next call, as backward's temporaries
        from_x = _project(xs, weight_ih, bias_ih, out=_scratch("gru from_x", xs, (steps * batch, 3 * hidden)))
        from_x = from_x.view(steps, batch, 3 * hidden)
        m_n = x.new_empty(steps, batch, hidden)  # the last block of W_hh h_{t-1} + b_hh
        rz = x.new_empty(steps, batch, 2 * hidden)
        n = x.new_empty(steps, batch, hidden)
        hs = x.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        forward_steps = _compiled("gru_forward", x) or _gru_forward_steps
        forward_steps(from_x, m_n, rz, n, hs, weight_hh.t().contiguous(), bias_hh, keep)
        ctx.save_for_backward(xs, m_n, rz, n, hs, weight_ih, weight_hh, keep)
        return _outputs(hs[1:], keep), hs[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_final):
        xs, m_n, rz, n, hs, weight_ih, weight_hh, keep = ctx.saved_tensors
        steps, batch, hidden = n.shape
        valid = None if keep is None else keep.to(hs.dtype)
        G = _grad_buffer(grad_outputs, grad_final, valid, hidden)  # G[t] ends as γ_t
        delta = _scratch("gru delta", n, (steps, batch, 3 * hidden))  # δ_t
        delta_x_n = _scratch("gru delta_x_n", n)  # γ_t ⊙ ν_t, the last block of δˣ_t
        sums = n.new_empty(4 * hidden)  # [Σ δ_t, Σ γ_t ⊙ ν_t]
        backward_steps = _compiled("gru_backward", n) or _gru_backward_steps
        backward_steps(m_n, rz, n, hs, weight_hh, keep, G, delta, delta_x_n, sums)
        delta = delta.view(-1, 3 * hidden)
        grad_weight_hh = _weight_gradient(delta, hs[:-1].view(-1, hidden))
        delta_x = delta  # δ becomes δˣ: only their last blocks differ
        delta_x[:, 2 * hidden:] = delta_x_n.view(-1, hidden)
        grad_x = (_project(delta_x, weight_ih.t()).view(steps, batch, -1).transpose(0, 1)
                  if ctx.needs_input_grad[0] else None)
        grad_bias_ih = torch.cat((sums[:2 * hidden], sums[3 * hidden:]))
        return grad_x, G[0], _weight_gradient(delta_x, xs), grad_weight_hh, grad_bias_ih, sums[:3 * hidden], None


def _run_elman(cell, x, state, valid):
    outputs, final = ElmanSequence.apply(x, torch.cat(state, dim=-1), cell.weight_ih, cell.weight_hh,
                                         cell.bias_ih, cell.bias_hh, valid, cell.nonlinearity)
    return outputs, final.split(cell.hidden_size, dim=-1)


def _run_jordan(cell, x, state, valid):
    outputs, y = JordanSequence.apply(x, *state, cell.weight_ih, cell.bias_ih, cell.weight_yh, cell.weight_hy,
                                      cell.bias_hy, valid, cell.nonlinearity)
    return outputs, (y,)


def _run_lstm(cell, x, state, valid):
    outputs, h, c = LSTMSequence.apply(x, *state, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                       valid)
    return outputs, (h, c)


def _run_gru(cell, x, state, valid):
    outputs, h = GRUSequence.apply(x, *state, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, valid)
    return outputs, (h,)


def _run_layer_norm_lstm(cell, x, state, valid):
    outputs, h, c = LayerNormLSTMSequence.apply(
        x, *state, cell.weight_ih, cell.weight_hh, cell.bias, cell.ln_ih_weight, cell.ln_ih_bias,
        cell.ln_hh_weight, cell.ln_hh_bias, cell.ln_c_weight, cell.ln_c_bias, valid, cell.eps)
    return outputs, (h, c)


# Cell class → run(cell, x, state, valid) -> (outputs, final state tuple), forwards in time. By exact
# class: a subclass may change the equations.
SEQUENCES = {
    ElmanCell: _run_elman,
    MultiLagCell: _run_elman,
    JordanCell: _run_jordan,
    LSTMCell: _run_lstm,
    GRUCell: _run_gru,
    LayerNormLSTMCell: _run_layer_norm_lstm,
}


def run_sequence(cell: Cell, x: torch.Tensor, state: State, valid: torch.Tensor | None = None,
                 reverse: bool = False) -> tuple[torch.Tensor, State]:
    """Run `cell` over x (B, T, input_size) from `state` (the cell's state tuple, each (B, size)).

    valid: None, or (B, T) bool, True on the steps that count; a step that does not keeps
    the state and outputs zeros. reverse: run from t = T−1 down to 0 (the backward direction
    of a bidirectional layer); done here by flipping the time axis around the forward Function.
    Returns outputs (B, T, cell.output_size) and the final state tuple — what
    `Recurrent._loop` computes for this cell in this direction.
    """
    run = SEQUENCES.get(parametrize.type_before_parametrizations(cell))
    if run is None:
        raise TypeError(f"run_sequence has no hand-derived BPTT for {type(cell).__name__}")
    if reverse:
        x = x.flip(1)
        valid = None if valid is None else valid.flip(1)
    if torch.is_autocast_enabled(x.device.type):
        # The hand-written backward does not mix dtypes: under autocast (TrainConfig.precision
        # bf16) the Functions run in their weights' dtype (float32).
        dtype = next(cell.parameters()).dtype
        with torch.autocast(x.device.type, enabled=False):
            outputs, final = run(cell, x.to(dtype), tuple(s.to(dtype) for s in state), valid)
    else:
        outputs, final = run(cell, x, state, valid)
    return (outputs.flip(1) if reverse else outputs), tuple(final)
