"""A plain Elman RNN in NumPy with backpropagation through time derived by hand.

This module is the test oracle: float64 throughout, no autograd, every step
written out. For inputs x_1..x_T (one row each) and integer targets y_1..y_T:

    a_t = U x_t + W h_{t-1} + b
    h_t = tanh(a_t)
    o_t = V h_t + c
    p_t = softmax(o_t)
    L   = sum_t -log p_t[y_t]          (summed over time, not averaged)

with h_0 a trainable initial state. Backward, writing e_t = p_t - onehot(y_t)
(the gradient of -log softmax wrt the logits o_t) and δ_t = dL/da_t:

    dL/dV  = sum_t e_t h_tᵀ             dL/dc = sum_t e_t
    δ_t    = (Vᵀ e_t + Wᵀ δ_{t+1}) ⊙ (1 - h_t²)      with δ_{T+1} = 0
    dL/dU  = sum_t δ_t x_tᵀ             dL/dW = sum_t δ_t h_{t-1}ᵀ
    dL/db  = sum_t δ_t                  dL/dh_0 = Wᵀ δ_1
"""

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class Params:
    """Weights of the RNN (or gradients of the loss wrt them, same shapes).

    U (H×I) input->hidden, W (H×H) hidden->hidden, V (K×H) hidden->output,
    b (H,) hidden bias, c (K,) output bias, h0 (H,) initial hidden state.
    """

    U: np.ndarray
    W: np.ndarray
    V: np.ndarray
    b: np.ndarray
    c: np.ndarray
    h0: np.ndarray

    @classmethod
    def init(cls, input_size, hidden_size, output_size, rng, scale=0.1):
        """Small Gaussian weights, zero biases and zero initial state."""
        H, I, K = hidden_size, input_size, output_size
        return cls(
            U=rng.standard_normal((H, I)) * scale,
            W=rng.standard_normal((H, H)) * scale,
            V=rng.standard_normal((K, H)) * scale,
            b=np.zeros(H),
            c=np.zeros(K),
            h0=np.zeros(H),
        )

    @classmethod
    def zeros_like(cls, other):
        return cls(**{name: np.zeros_like(array) for name, array in other})

    def __iter__(self):
        """Yield (name, array) pairs in the fixed order U, W, V, b, c, h0."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def as_dict(self):
        return dict(self)

    def copy(self):
        return Params(**{name: array.copy() for name, array in self})


def softmax(o):
    """exp(o) / sum(exp(o)) over the last axis; subtracting the max avoids overflow."""
    e = np.exp(o - np.max(o, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def forward(params, inputs, targets):
    """Run the RNN over `inputs` (T, I) and score it against `targets` (T,) ints.

    Returns (loss, cache): loss is the summed cross-entropy as a float; cache
    holds hs (T+1, H) with hs[0] = h0, and probs (T, K) with probs[t] = p_{t+1}.
    """
    T = len(inputs)
    hs = np.zeros((T + 1, params.h0.shape[0]))
    hs[0] = params.h0
    for t in range(T):
        hs[t + 1] = np.tanh(params.U @ inputs[t] + params.W @ hs[t] + params.b)
    probs = softmax(hs[1:] @ params.V.T + params.c)
    loss = -np.sum(np.log(probs[np.arange(T), targets]))
    return float(loss), {"hs": hs, "probs": probs}


def backward(params, inputs, targets, cache):
    """Gradients of the summed loss wrt every parameter (h0 included), as a Params."""
    hs, probs = cache["hs"], cache["probs"]
    T = len(inputs)
    grads = Params.zeros_like(params)

    errors = probs.copy()  # e_t = p_t - onehot(y_t)
    errors[np.arange(T), targets] -= 1.0
    grads.V = errors.T @ hs[1:]
    grads.c = errors.sum(axis=0)

    from_future = np.zeros_like(params.h0)  # Wᵀ δ_{t+1}: what h_t owes to later steps
    for t in reversed(range(T)):
        h, h_prev = hs[t + 1], hs[t]
        delta = (params.V.T @ errors[t] + from_future) * (1.0 - h * h)
        grads.U += np.outer(delta, inputs[t])
        grads.W += np.outer(delta, h_prev)
        grads.b += delta
        from_future = params.W.T @ delta
    grads.h0 = from_future  # h0 feeds only step 1, so its gradient is Wᵀ δ_1
    return grads


def clip_by_global_norm(grads, max_norm):
    """Rescale all gradients together so their joint L2 norm is at most max_norm.

    Returns (clipped Params, norm before clipping). Scaling everything by one
    factor keeps the update's direction, unlike clipping each entry.
    """
    total_norm = float(np.sqrt(sum(np.sum(g * g) for _, g in grads)))
    scale = max_norm / total_norm if total_norm > max_norm else 1.0
    return Params(**{name: g * scale for name, g in grads}), total_norm


def numerical_gradient(params, inputs, targets, eps=1e-6):
    """Central differences (L(θ+ε) - L(θ-ε)) / 2ε for every entry of every parameter."""
    grads = Params.zeros_like(params)
    probe = params.copy()
    for name, array in probe:
        grad = getattr(grads, name)
        for i in np.ndindex(array.shape):
            original = array[i]
            array[i] = original + eps
            loss_plus, _ = forward(probe, inputs, targets)
            array[i] = original - eps
            loss_minus, _ = forward(probe, inputs, targets)
            array[i] = original
            grad[i] = (loss_plus - loss_minus) / (2 * eps)
    return grads


class Adagrad:
    """Per-entry adaptive steps as in min-char-rnn:

        mem += g²
        θ   -= lr · g / sqrt(mem + 1e-8)

    Entries that keep getting large gradients take ever smaller steps.
    """

    def __init__(self, params, learning_rate):
        self.learning_rate = learning_rate
        self.memory = Params.zeros_like(params)

    def step(self, params, grads):
        """Update `params` in place."""
        for name, g in grads:
            mem, param = getattr(self.memory, name), getattr(params, name)
            mem += g * g
            param -= self.learning_rate * g / np.sqrt(mem + 1e-8)
