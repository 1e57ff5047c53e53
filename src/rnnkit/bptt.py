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
activated gates) and builds no per-step autograd graph; the backward computes the
pointwise factors that do not depend on the recursion (f'(a_t), gate derivatives) for all
steps at once before its loop, so each backward step is one matrix product and a few
pointwise operations. The backward is not itself differentiable (no double backward).

Layout: time-major inside, (T, B, ·), so each step is a contiguous block of rows. State
buffers hold the initial state at index 0 and the state after step t at index t + 1.

Padding: `valid` (B, T) bool marks the steps that count (None: all). On any other step the
state is kept and the output is zero, as in `Recurrent`'s loop path; in the backward such
a step has δ_t = 0 and passes the gradient reaching its state on unchanged. Any mask works
forwards in time; `run_sequence` runs backwards in time by flipping the time axis.

`run_sequence(cell, x, state, valid, reverse)` is the entry point: one layer, one direction,
any cell of `rnnkit.cells`, the same result as `Recurrent._loop` for that cell.
"""

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .cells import Cell, ElmanCell, GRUCell, JordanCell, LSTMCell, MultiLagCell, State

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


def _grad_buffer(grad_outputs, grad_final, valid, width: int) -> torch.Tensor:
    """G (T+1, B, width): G[t+1] = the gradient reaching the state after step t from outside
    the recursion — the step's output gradient in its first F columns (none on padded steps,
    whose outputs are constant zeros), plus the final state's at t+1 = T. G[0] (the initial
    state) starts at zero. The backward loop adds the recurrent part in place."""
    batch, steps, features = grad_outputs.shape
    G = grad_outputs.new_zeros(steps + 1, batch, width)
    G[1:, :, :features] = grad_outputs.transpose(0, 1)
    if valid is not None:
        G[1:, :, :features] *= valid
    G[steps] += grad_final
    return G


class ElmanSequence(Function):
    """Elman layer over a sequence; with weight_hh = [W_1 | … | W_K] of shape (H, K·H) it is
    the K-lag `MultiLagCell` (K = 1 is `ElmanCell`).

    The state is the lagged-state vector s_t = [h_t | h_{t-1} | … | h_{t-K+1}], (B, K·H), so
    the K recurrent products are one, and ∂L/∂W_hh is one product over all steps.

    Forward, t = 1 … T:
        a_t = W_ih x_t + b_ih + W_hh s_{t-1} + b_hh,   h_t = f(a_t),   s_t = [h_t | s_{t-1} minus its last block]
    Backward, with g_t = ∂L/∂s_t from outside the recursion (output in the first block, final state):
        ∂L/∂s_t = g_t + W_hhᵀ δ_{t+1} + [∂L/∂s_{t+1} minus its first block | 0]
        δ_t     = (first block of ∂L/∂s_t) ⊙ f'(a_t),   f' = 1 − h_t² (tanh) or [h_t > 0] (relu)
        ∂L/∂W_hh = Σ_t δ_t s_{t-1}ᵀ   ∂L/∂W_ih = Σ_t δ_t x_tᵀ   ∂L/∂b_ih = ∂L/∂b_hh = Σ_t δ_t
        ∂L/∂x_t  = W_ihᵀ δ_t         ∂L/∂s_0 as above

    apply(x (B, T, I), state (B, K·H), weight_ih, weight_hh, bias_ih, bias_hh, valid, nonlinearity)
      -> outputs (B, T, H), final state (B, K·H)
    """

    @staticmethod
    def forward(ctx, x, state, weight_ih, weight_hh, bias_ih, bias_hh, valid=None, nonlinearity="tanh"):
        batch, steps, _ = x.shape
        hidden, width = weight_hh.shape
        keep = _step_mask(valid)
        xs = _time_major(x)
        S = x.new_empty(steps + 1, batch, width)
        S[0] = state
        # Every step's input part at once, written where h_t will be; the loop adds W_hh s_{t-1}.
        torch.addmm(bias_ih + bias_hh, xs, weight_ih.t(), out=S[1:, :, :hidden].view(-1, hidden))
        for t in range(steps):
            ACTIVATE_[nonlinearity](S[t + 1, :, :hidden].addmm_(S[t], weight_hh.t()))
            if width > hidden:  # the older lags move one block on
                S[t + 1, :, hidden:] = S[t, :, :-hidden]
            if keep is not None:
                torch.where(keep[t], S[t + 1], S[t], out=S[t + 1])
        ctx.save_for_backward(xs, S, weight_ih, weight_hh, keep)
        ctx.nonlinearity = nonlinearity
        return _outputs(S[1:, :, :hidden], keep), S[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_final):
        xs, S, weight_ih, weight_hh, keep = ctx.saved_tensors
        hidden, width = weight_hh.shape
        steps, batch = S.shape[0] - 1, S.shape[1]
        valid = None if keep is None else keep.to(S.dtype)
        G = _grad_buffer(grad_outputs, grad_final, valid, width)  # G[t] ends as ∂L/∂s_t
        delta = DERIVATIVE[ctx.nonlinearity](S[1:, :, :hidden])  # f'(a_t), then δ_t in place
        if valid is not None:
            delta *= valid  # a padded step has no a_t: δ_t = 0
        for t in reversed(range(steps)):
            G[t].addmm_(delta[t].mul_(G[t + 1, :, :hidden]), weight_hh)
            if width > hidden:
                G[t, :, :-hidden] += G[t + 1, :, hidden:] if valid is None else G[t + 1, :, hidden:] * valid[t]
            if valid is not None:  # a padded step keeps the state: its gradient passes through
                G[t].addcmul_(G[t + 1], 1 - valid[t])
        delta = delta.view(-1, hidden)
        grad_x = (delta @ weight_ih).view(steps, batch, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_bias = delta.sum(0)
        return (grad_x, G[0], delta.t() @ xs, delta.t() @ S[:-1].view(-1, width),
                grad_bias, grad_bias, None, None)


MultiLagSequence = ElmanSequence  # the same Function: K = weight_hh.shape[1] // weight_hh.shape[0]


class JordanSequence(Function):
    """Jordan layer over a sequence: the recurrence runs through the output y, not h.

    Forward, t = 1 … T:
        a_t = W_ih x_t + b_ih + W_yh y_{t-1},   h_t = f(a_t),   y_t = W_hy h_t + b_hy
    Backward, with g_t = ∂L/∂y_t from outside the recursion (output, final state):
        γ_t = ∂L/∂y_t = g_t + W_yhᵀ δ_{t+1}
        δ_t = (W_hyᵀ γ_t) ⊙ f'(a_t)
        ∂L/∂W_hy = Σ_t γ_t h_tᵀ       ∂L/∂b_hy = Σ_t γ_t     ∂L/∂W_yh = Σ_t δ_t y_{t-1}ᵀ
        ∂L/∂W_ih = Σ_t δ_t x_tᵀ       ∂L/∂b_ih = Σ_t δ_t     ∂L/∂x_t  = W_ihᵀ δ_t
        ∂L/∂y_0  = W_yhᵀ δ_1
    Each step is two matrix products each way (y_{t-1} → h_t → y_t).

    apply(x (B, T, I), y0 (B, O), weight_ih, bias_ih, weight_yh, weight_hy, bias_hy, valid, nonlinearity)
      -> outputs (B, T, O), final y (B, O)
    """

    @staticmethod
    def forward(ctx, x, y0, weight_ih, bias_ih, weight_yh, weight_hy, bias_hy, valid=None, nonlinearity="tanh"):
        batch, steps, _ = x.shape
        keep = _step_mask(valid)
        xs = _time_major(x)
        hs = torch.addmm(bias_ih, xs, weight_ih.t()).view(steps, batch, -1)  # a_t less W_yh y_{t-1}
        ys = x.new_empty(steps + 1, batch, weight_hy.shape[0])
        ys[0] = y0
        for t in range(steps):
            h = ACTIVATE_[nonlinearity](hs[t].addmm_(ys[t], weight_yh.t()))
            torch.addmm(bias_hy, h, weight_hy.t(), out=ys[t + 1])
            if keep is not None:
                torch.where(keep[t], ys[t + 1], ys[t], out=ys[t + 1])
        ctx.save_for_backward(xs, hs, ys, weight_ih, weight_yh, weight_hy, keep)
        ctx.nonlinearity = nonlinearity
        return _outputs(ys[1:], keep), ys[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_final):
        xs, hs, ys, weight_ih, weight_yh, weight_hy, keep = ctx.saved_tensors
        steps, batch, hidden = hs.shape
        valid = None if keep is None else keep.to(hs.dtype)
        G = _grad_buffer(grad_outputs, grad_final, valid, ys.shape[-1])  # G[t] ends as γ_t
        derivative = DERIVATIVE[ctx.nonlinearity](hs)
        if valid is not None:
            derivative *= valid
        delta = torch.empty_like(hs)
        for t in reversed(range(steps)):
            torch.mm(G[t + 1], weight_hy, out=delta[t]).mul_(derivative[t])
            G[t].addmm_(delta[t], weight_yh)
            if valid is not None:
                G[t].addcmul_(G[t + 1], 1 - valid[t])
        gamma = G[1:] if valid is None else G[1:] * valid  # a padded step does not use W_hy
        gamma, delta = gamma.reshape(steps * batch, -1), delta.view(-1, hidden)
        grad_x = (delta @ weight_ih).view(steps, batch, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        return (grad_x, G[0], delta.t() @ xs, delta.sum(0), delta.t() @ ys[:-1].view(steps * batch, -1),
                gamma.t() @ hs.view(-1, hidden), gamma.sum(0), None, None)


class LSTMSequence(Function):
    """LSTM layer over a sequence, gates in `torch.nn.LSTM` order (i, f, g, o).

    Forward, t = 1 … T, with σ on i, f, o and tanh on g:
        [i, f, g, o]_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t,   h_t = o_t ⊙ tanh(c_t)
    Backward, with g_t = ∂L/∂h_t and ∂L/∂c_T from outside, δ_t = ∂L/∂(gate pre-activations):
        γ_t = ∂L/∂h_t = g_t + W_hhᵀ δ_{t+1}
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
        gates = torch.addmm(bias_ih + bias_hh, xs, weight_ih.t()).view(steps, batch, 4 * hidden)
        hs, cs = x.new_empty(2, steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        tanh_cs = torch.empty_like(hs[1:])
        for t in range(steps):
            z = gates[t].addmm_(hs[t], weight_hh.t())
            z[:, :2 * hidden].sigmoid_()  # i, f
            z[:, 2 * hidden:3 * hidden].tanh_()  # g
            z[:, 3 * hidden:].sigmoid_()  # o
            i, f, g, o = z.chunk(4, dim=1)
            torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, g)
            torch.mul(o, torch.tanh(cs[t + 1], out=tanh_cs[t]), out=hs[t + 1])
            if keep is not None:
                torch.where(keep[t], cs[t + 1], cs[t], out=cs[t + 1])
                torch.where(keep[t], hs[t + 1], hs[t], out=hs[t + 1])
        ctx.save_for_backward(xs, gates, hs, cs, tanh_cs, weight_ih, weight_hh, keep)
        return _outputs(hs[1:], keep), hs[steps], cs[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_h, grad_c):
        xs, gates, hs, cs, tanh_cs, weight_ih, weight_hh, keep = ctx.saved_tensors
        steps, batch, hidden = tanh_cs.shape
        valid = None if keep is None else keep.to(hs.dtype)
        # The pointwise factors of the recursion, for all steps at once.
        i, f, g, o = gates.chunk(4, dim=2)
        dh_dc = o * (1 - tanh_cs * tanh_cs)  # ∂h_t/∂c_t
        dh_do = tanh_cs * o * (1 - o)  # ∂h_t/∂(o pre-activation)
        dc_difg = torch.stack([g * i * (1 - i), cs[:-1] * f * (1 - f), i * (1 - g * g)], dim=2)
        dc_dc = f.clone()  # ∂c_t/∂c_{t-1}
        if valid is not None:  # a padded step: no gates, c and h pass through
            dh_dc *= valid
            dh_do *= valid
            dc_difg *= valid[..., None]
            dc_dc.mul_(valid).add_(1 - valid)
        Gh = _grad_buffer(grad_outputs, grad_h, valid, hidden)  # Gh[t] ends as γ_t
        Gc = torch.zeros_like(Gh)  # Gc[t] ends as κ_t
        Gc[steps] = grad_c
        delta = torch.empty_like(gates)
        for t in reversed(range(steps)):
            gamma, kappa = Gh[t + 1], Gc[t + 1].addcmul_(Gh[t + 1], dh_dc[t])
            torch.mul(kappa[:, None], dc_difg[t], out=delta[t, :, :3 * hidden].view(batch, 3, hidden))
            torch.mul(gamma, dh_do[t], out=delta[t, :, 3 * hidden:])
            torch.mul(kappa, dc_dc[t], out=Gc[t])
            Gh[t].addmm_(delta[t], weight_hh)
            if valid is not None:
                Gh[t].addcmul_(gamma, 1 - valid[t])
        delta = delta.view(-1, 4 * hidden)
        grad_x = (delta @ weight_ih).view(steps, batch, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_bias = delta.sum(0)
        return (grad_x, Gh[0], Gc[0], delta.t() @ xs, delta.t() @ hs[:-1].view(-1, hidden),
                grad_bias, grad_bias, None)


class GRUSequence(Function):
    """GRU layer over a sequence, gates in `torch.nn.GRU` order (r, z, n).

    Forward, t = 1 … T, with [x_r, x_z, x_n] = W_ih x_t + b_ih and [m_r, m_z, m_n] = W_hh h_{t-1} + b_hh:
        r_t = σ(x_r + m_r),   z_t = σ(x_z + m_z),   n_t = tanh(x_n + r_t ⊙ m_n)
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    Backward, with g_t = ∂L/∂h_t from outside, ν_t = (1 − z_t)(1 − n_t²) = ∂h_t/∂(n pre-activation),
    δ_t = ∂L/∂[m_r, m_z, m_n] and δˣ_t = ∂L/∂[x_r, x_z, x_n]:
        γ_t = ∂L/∂h_t = g_t + W_hhᵀ δ_{t+1} + γ_{t+1} ⊙ z_{t+1}
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
        from_x = torch.addmm(bias_ih, xs, weight_ih.t()).view(steps, batch, 3 * hidden)
        from_h = torch.empty_like(from_x)  # m_t = W_hh h_{t-1} + b_hh
        rz = x.new_empty(steps, batch, 2 * hidden)
        n = x.new_empty(steps, batch, hidden)
        hs = x.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        for t in range(steps):
            torch.addmm(bias_hh, hs[t], weight_hh.t(), out=from_h[t])
            torch.add(from_x[t, :, :2 * hidden], from_h[t, :, :2 * hidden], out=rz[t]).sigmoid_()
            r, z = rz[t].chunk(2, dim=1)
            torch.addcmul(from_x[t, :, 2 * hidden:], r, from_h[t, :, 2 * hidden:], out=n[t]).tanh_()
            torch.lerp(n[t], hs[t], z, out=hs[t + 1])  # n + z ⊙ (h_{t-1} − n)
            if keep is not None:
                torch.where(keep[t], hs[t + 1], hs[t], out=hs[t + 1])
        ctx.save_for_backward(xs, from_h, rz, n, hs, weight_ih, weight_hh, keep)
        return _outputs(hs[1:], keep), hs[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_final):
        xs, from_h, rz, n, hs, weight_ih, weight_hh, keep = ctx.saved_tensors
        steps, batch, hidden = n.shape
        valid = None if keep is None else keep.to(hs.dtype)
        # The pointwise factors of the recursion, for all steps at once.
        r, z = rz.chunk(2, dim=2)
        nu = (1 - z) * (1 - n * n)
        dh_dm = torch.stack([nu * from_h[..., 2 * hidden:] * r * (1 - r), (hs[:-1] - n) * z * (1 - z), nu * r], dim=2)
        dh_dh = z.clone()  # ∂h_t/∂h_{t-1} outside W_hh
        if valid is not None:  # a padded step: no gates, h passes through
            nu *= valid
            dh_dm *= valid[..., None]
            dh_dh.mul_(valid).add_(1 - valid)
        G = _grad_buffer(grad_outputs, grad_final, valid, hidden)  # G[t] ends as γ_t
        delta = torch.empty_like(from_h)
        for t in reversed(range(steps)):
            torch.mul(G[t + 1, :, None], dh_dm[t], out=delta[t].view(batch, 3, hidden))
            G[t].addcmul_(G[t + 1], dh_dh[t]).addmm_(delta[t], weight_hh)
        delta_x = delta.clone()
        torch.mul(G[1:], nu, out=delta_x[..., 2 * hidden:])
        delta, delta_x = delta.view(-1, 3 * hidden), delta_x.view(-1, 3 * hidden)
        grad_x = (delta_x @ weight_ih).view(steps, batch, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        return (grad_x, G[0], delta_x.t() @ xs, delta.t() @ hs[:-1].view(-1, hidden),
                delta_x.sum(0), delta.sum(0), None)


def run_sequence(cell: Cell, x: torch.Tensor, state: State, valid: torch.Tensor | None = None,
                 reverse: bool = False) -> tuple[torch.Tensor, State]:
    """Run `cell` over x (B, T, input_size) from `state` (the cell's state tuple, each (B, size)).

    valid: None, or (B, T) bool, True on the steps that count; a step that does not keeps
    the state and outputs zeros. reverse: run from t = T−1 down to 0 (the backward direction
    of a bidirectional layer); done here by flipping the time axis around the forward Function.
    Returns outputs (B, T, cell.output_size) and the final state tuple — what
    `Recurrent._loop` computes for this cell in this direction.
    """
    if reverse:
        x = x.flip(1)
        valid = None if valid is None else valid.flip(1)
    if isinstance(cell, (ElmanCell, MultiLagCell)):
        outputs, final = ElmanSequence.apply(x, torch.cat(state, dim=-1), cell.weight_ih, cell.weight_hh,
                                             cell.bias_ih, cell.bias_hh, valid, cell.nonlinearity)
        final = final.split(cell.hidden_size, dim=-1)
    elif isinstance(cell, JordanCell):
        outputs, *final = JordanSequence.apply(x, *state, cell.weight_ih, cell.bias_ih, cell.weight_yh,
                                               cell.weight_hy, cell.bias_hy, valid, cell.nonlinearity)
    elif isinstance(cell, LSTMCell):
        outputs, *final = LSTMSequence.apply(x, *state, cell.weight_ih, cell.weight_hh,
                                             cell.bias_ih, cell.bias_hh, valid)
    elif isinstance(cell, GRUCell):
        outputs, *final = GRUSequence.apply(x, *state, cell.weight_ih, cell.weight_hh,
                                            cell.bias_ih, cell.bias_hh, valid)
    else:
        raise TypeError(f"run_sequence has no hand-derived BPTT for {type(cell).__name__}")
    return (outputs.flip(1) if reverse else outputs), tuple(final)
