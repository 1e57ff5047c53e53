// The sequential parts of ElmanSequence (with K lags) and JordanSequence (rnnkit/bptt.py),
// compiled: the same ATen calls, step by step, as the Python loops there, without the Python
// interpreter between them (the activations are activations.h's). At small sizes that overhead
// is most of a step's time.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>

#include "activations.h"

namespace {

// a (batch, hidden), each row contiguous (a step's block of S or hs) ← f(a)
void activate_(at::Tensor& a, c10::string_view nonlinearity) {
  TORCH_CHECK(a.dim() == 2 && a.stride(1) == 1, "activate_ needs rows laid out contiguously");
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "activate_", [&] {
    for (int64_t b = 0; b < a.size(0); ++b) {
      scalar_t* row = a.data_ptr<scalar_t>() + b * a.stride(0);
      if (nonlinearity == "tanh") {
        rnnkit::tanh_inplace(row, a.size(1));
      } else {
        for (int64_t j = 0; j < a.size(1); ++j) row[j] = std::max(row[j], scalar_t(0));
      }
    }
  });
}

// S (T+1, B, K·H): S[0] the initial lagged state, S[t+1, :, :H] holding W_ih x_t + biases;
// fills in s_t = [f(a_t) | s_{t-1} minus its last block] for t = 1 … T.
void elman_forward(at::Tensor S, const at::Tensor& weight_hh_t, const c10::optional<at::Tensor>& keep,
                   c10::string_view nonlinearity) {
  const int64_t steps = S.size(0) - 1, width = S.size(2), hidden = weight_hh_t.size(1);
  for (int64_t t = 0; t < steps; ++t) {
    at::Tensor before = S[t], after = S[t + 1];
    at::Tensor h = after.narrow(1, 0, hidden);
    h.addmm_(before, weight_hh_t);
    activate_(h, nonlinearity);
    if (width > hidden) after.narrow(1, hidden, width - hidden).copy_(before.narrow(1, 0, width - hidden));
    if (keep) at::where_out(after, (*keep)[t], after, before);
  }
}

// G (T+1, B, K·H) with the gradients from outside; delta (T, B, H) holding f'(a_t) (0 on padded
// steps); valid (T, B, 1) floats or None. Ends with δ_t in delta and ∂L/∂s_t in G[t].
void elman_backward(at::Tensor G, at::Tensor delta, const at::Tensor& weight_hh,
                    const c10::optional<at::Tensor>& valid) {
  const int64_t steps = delta.size(0), hidden = delta.size(2), width = G.size(2);
  const c10::optional<at::Tensor> passed = valid ? c10::optional<at::Tensor>(1 - *valid) : valid;
  for (int64_t t = steps - 1; t >= 0; --t) {
    at::Tensor later = G[t + 1], now = G[t], delta_t = delta[t];
    delta_t.mul_(later.narrow(1, 0, hidden));
    now.addmm_(delta_t, weight_hh);
    if (width > hidden) {
      at::Tensor older = later.narrow(1, hidden, width - hidden);
      now.narrow(1, 0, width - hidden).add_(valid ? older * (*valid)[t] : older);
    }
    if (valid) now.addcmul_(later, (*passed)[t]);
  }
}

// hs (T, B, H) holding W_ih x_t + b_ih, ys (T+1, B, O) with y_0: fills in h_t and y_t.
void jordan_forward(at::Tensor hs, at::Tensor ys, const at::Tensor& weight_yh_t, const at::Tensor& weight_hy_t,
                    const at::Tensor& bias_hy, const c10::optional<at::Tensor>& keep,
                    c10::string_view nonlinearity) {
  const int64_t steps = hs.size(0);
  for (int64_t t = 0; t < steps; ++t) {
    at::Tensor h = hs[t], before = ys[t], after = ys[t + 1];
    h.addmm_(before, weight_yh_t);
    activate_(h, nonlinearity);
    at::addmm_out(after, bias_hy, h, weight_hy_t);
    if (keep) at::where_out(after, (*keep)[t], after, before);
  }
}

// G (T+1, B, O) with the gradients from outside, derivative (T, B, H) = f'(a_t) (0 on padded
// steps), valid (T, B, 1) floats or None: fills delta (T, B, H) with δ_t and G[t] with γ_t.
void jordan_backward(at::Tensor G, at::Tensor delta, const at::Tensor& derivative, const at::Tensor& weight_yh,
                     const at::Tensor& weight_hy, const c10::optional<at::Tensor>& valid) {
  const int64_t steps = delta.size(0);
  const c10::optional<at::Tensor> passed = valid ? c10::optional<at::Tensor>(1 - *valid) : valid;
  for (int64_t t = steps - 1; t >= 0; --t) {
    at::Tensor later = G[t + 1], now = G[t], delta_t = delta[t];
    at::mm_out(delta_t, later, weight_hy).mul_(derivative[t]);
    now.addmm_(delta_t, weight_yh);
    if (valid) now.addcmul_(later, (*passed)[t]);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("elman_forward(Tensor(a!) S, Tensor weight_hh_t, Tensor? keep, str nonlinearity) -> ()");
  m.def("elman_backward(Tensor(a!) G, Tensor(b!) delta, Tensor weight_hh, Tensor? valid) -> ()");
  m.def("jordan_forward(Tensor(a!) hs, Tensor(b!) ys, Tensor weight_yh_t, Tensor weight_hy_t, Tensor bias_hy, "
        "Tensor? keep, str nonlinearity) -> ()");
  m.def("jordan_backward(Tensor(a!) G, Tensor(b!) delta, Tensor derivative, Tensor weight_yh, Tensor weight_hy, "
        "Tensor? valid) -> ()");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("elman_forward", elman_forward);
  m.impl("elman_backward", elman_backward);
  m.impl("jordan_forward", jordan_forward);
  m.impl("jordan_backward", jordan_backward);
}
