// The sequential parts of ElmanSequence (with K lags) and JordanSequence (rnnkit/bptt.py),
// compiled: the same steps as the Python loops there, on raw pointers into the (batch, time,
// features) buffers, with gemm.h's products and activations.h's activations. At small sizes the
// per-step cost of ATen calls (views, dispatch, TensorIterator set-up: about 2–5 µs each, a dozen
// a step) is as large as the arithmetic.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>
#include <cstring>

#include "activations.h"
#include "bptt.h"
#include "gemm.h"

namespace {

using rnnkit::check_buffers;
using rnnkit::prefetch;
using rnnkit::StepProduct;
using rnnkit::StepSums;

// each of `rows` rows (row stride `stride`) ← f(its first n values)
template <typename T>
void activate(T* a, int64_t rows, int64_t n, int64_t stride, c10::string_view nonlinearity) {
  for (int64_t b = 0; b < rows; ++b) {
    T* row = a + b * stride;
    if (nonlinearity == "tanh") {
      rnnkit::tanh_inplace(row, n);
    } else {
      for (int64_t j = 0; j < n; ++j) row[j] = std::max(row[j], T(0));
    }
  }
}

// δ = ∂L/∂h ⊙ f'(a) ⊙ valid over n values, f' read off h = f(a): 1 − h² (tanh) or [h > 0] (relu)
template <typename T>
void times_slope(T* delta, const T* grad_h, const T* h, T valid, int64_t n, bool tanh) {
  if (tanh) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) delta[j] = grad_h[j] * (1 - h[j] * h[j]) * valid;
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) delta[j] = grad_h[j] * (h[j] > 0 ? valid : T(0));
  }
}

// What ∂L/∂s_t passes on to ∂L/∂s_{t-1} besides W_hhᵀ δ_t, for s_t = [h_t | s_{t-1} minus its
// last block]: earlier ← the older lags' gradients one block back (kept = 1), or all of ∂L/∂s_t
// on a padded step, which keeps the state (kept = 0)
template <typename T>
void pass_on(T* earlier, const T* grad_s, T kept, int64_t width, int64_t hidden) {
  for (int64_t j = 0; j < width - hidden; ++j) earlier[j] = kept * grad_s[hidden + j] + (1 - kept) * grad_s[j];
  for (int64_t j = width - hidden; j < width; ++j) earlier[j] = (1 - kept) * grad_s[j];
}

// ElmanSequence's buffers are batch-major, like its input and outputs: S (B, T, K·H) with
// S[:, t, :H] holding W_ih x_t + biases; s0 (B, K·H) the initial lagged state. Fills in
// s_t = [f(a_t) | s_{t-1} minus its last block] for t = 1 … T; step t's B rows lie T·K·H apart.
void elman_forward(at::Tensor S, const at::Tensor& s0, const at::Tensor& weight_hh_t,
                   const c10::optional<at::Tensor>& valid, c10::string_view nonlinearity) {
  const at::Tensor valid_steps = valid ? valid->contiguous() : at::Tensor();
  check_buffers("elman_forward", {&S, &s0, &weight_hh_t});
  const int64_t batch = S.size(0), steps = S.size(1), width = S.size(2), hidden = weight_hh_t.size(1);
  const int64_t row = steps * width;  // from one sequence's state at step t to the next one's
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "elman_forward", [&] {
    const StepProduct<scalar_t> step_product(weight_hh_t, batch);  // + s_{t-1} W_hhᵀ
    const bool* keep = valid ? valid_steps.data_ptr<bool>() : nullptr;
    for (int64_t t = 0; t < steps; ++t) {
      const scalar_t* before = t == 0 ? s0.data_ptr<scalar_t>() : S.data_ptr<scalar_t>() + (t - 1) * width;
      const int64_t before_row = t == 0 ? width : row;
      scalar_t* after = S.data_ptr<scalar_t>() + t * width;
      step_product(after, row, before, before_row, scalar_t(1));
      activate(after, batch, hidden, row, nonlinearity);
      for (int64_t b = 0; b < batch; ++b) {
        if (keep && !keep[b * steps + t]) {  // a padded step keeps the whole lagged state
          std::memcpy(after + b * row, before + b * before_row, width * sizeof(scalar_t));
        } else if (width > hidden) {  // K > 1: the older lags move one block on
          std::memcpy(after + b * row + hidden, before + b * before_row, (width - hidden) * sizeof(scalar_t));
        }
      }
    }
  });
}

// grad_outputs (B, T, H); carry (B, K·H) holding the final state's gradient, which ends as
// ∂L/∂s_0; S the forward's states; valid (B, T) floats or None. Fills delta (B, T, H) with
// δ_t = (∂L/∂h_t) ⊙ f'(a_t), f' read off h_t (0 on padded steps), and sums (H) with Σ_t δ_t, the
// biases' gradient. carry holds the part of ∂L/∂s_t from later steps: step t adds its output's
// gradient, then passes W_hhᵀ δ_t, the older lags' gradients (one block back) and, on a padded
// step, ∂L/∂s_t itself on to s_{t-1}.
void elman_backward(const at::Tensor& grad_outputs_given, at::Tensor carry, at::Tensor delta, at::Tensor sums,
                    const at::Tensor& S, const at::Tensor& weight_hh_given, const c10::optional<at::Tensor>& valid,
                    c10::string_view nonlinearity) {
  const at::Tensor grad_outputs = grad_outputs_given.contiguous();
  const at::Tensor weight_hh = weight_hh_given.contiguous();  // a parameter: no copy unless it is a view
  const at::Tensor valid_steps = valid ? valid->contiguous() : at::Tensor();
  check_buffers("elman_backward", {&grad_outputs, &carry, &delta, &sums, &S, &weight_hh});
  const int64_t batch = S.size(0), steps = S.size(1), width = S.size(2), hidden = delta.size(2);
  TORCH_CHECK(sums.numel() == hidden, "elman_backward: sums needs ", hidden, " values");
  const bool tanh = nonlinearity == "tanh";
  // Without lags or padding the new carry is W_hhᵀ δ_t alone: the product overwrites it in place.
  const bool passes_on = width > hidden || valid;
  at::Tensor next = passes_on ? at::empty_like(carry) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "elman_backward", [&] {
    const StepProduct<scalar_t> step_product(weight_hh, batch);  // δ_t W_hh
    const scalar_t* valid_rows = valid ? valid_steps.data_ptr<scalar_t>() : nullptr;
    scalar_t *later = carry.data_ptr<scalar_t>(), *earlier = passes_on ? next.data_ptr<scalar_t>() : later;
    const scalar_t* grad_outputs_data = grad_outputs.data_ptr<scalar_t>();
    const scalar_t* S_data = S.data_ptr<scalar_t>();
    StepSums<scalar_t> delta_sums(hidden);
    for (int64_t t = steps - 1; t >= 0; --t) {
      scalar_t* delta_t = delta.data_ptr<scalar_t>() + t * hidden;
      for (int64_t b = 0; b < batch; ++b) {
        // A step's rows lie a whole sequence apart (batch-major buffers), unread since the forward:
        // asked for two rows ahead, they arrive in time (backward 0.91× the time at B=64, H=256).
        if (b + 2 < batch) {
          prefetch(grad_outputs_data + ((b + 2) * steps + t) * hidden, hidden);
          prefetch(S_data + (b + 2) * steps * width + t * width, hidden);
        }
        const scalar_t kept = valid_rows ? valid_rows[b * steps + t] : 1;
        scalar_t* grad_s = later + b * width;  // its first block becomes ∂L/∂h_t
        const scalar_t* grad_h = grad_outputs_data + (b * steps + t) * hidden;
        for (int64_t j = 0; j < hidden; ++j) grad_s[j] += grad_h[j] * kept;
        times_slope(delta_t + b * steps * hidden, grad_s, S_data + b * steps * width + t * width, kept, hidden, tanh);
        delta_sums.add(0, delta_t + b * steps * hidden, hidden);
        if (passes_on) pass_on(earlier + b * width, grad_s, kept, width, hidden);
      }
      step_product(earlier, width, delta_t, steps * hidden, scalar_t(passes_on));
      std::swap(later, earlier);
      delta_sums.end_step();
    }
    delta_sums.write(0, hidden, sums.data_ptr<scalar_t>());
    scalar_t* result = carry.data_ptr<scalar_t>();
    if (later != result) std::memcpy(result, later, carry.numel() * sizeof(scalar_t));
  });
}

// JordanSequence's buffers are batch-major too: hs (B, T, H) holding W_ih x_t + b_ih, ys (B, T, O), y0
// (B, O) the initial output. Fills in h_t and y_t = W_hy h_t + b_hy (y_{t-1} on a padded step); step t's
// B rows lie T·H (hs) and T·O (ys) apart.
void jordan_forward(at::Tensor hs, at::Tensor ys, const at::Tensor& y0, const at::Tensor& weight_yh_t,
                    const at::Tensor& weight_hy_t, const at::Tensor& bias_hy_given,
                    const c10::optional<at::Tensor>& valid, c10::string_view nonlinearity) {
  const at::Tensor bias_hy = bias_hy_given.contiguous();  // a parameter: no copy unless it is a view
  const at::Tensor valid_steps = valid ? valid->contiguous() : at::Tensor();
  check_buffers("jordan_forward", {&hs, &ys, &y0, &weight_yh_t, &weight_hy_t, &bias_hy});
  const int64_t batch = hs.size(0), steps = hs.size(1), hidden = hs.size(2), outputs = ys.size(2);
  const int64_t h_row = steps * hidden, y_row = steps * outputs;  // from one sequence's step t to the next one's
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "jordan_forward", [&] {
    const StepProduct<scalar_t> from_output(weight_yh_t, batch), to_output(weight_hy_t, batch);
    const scalar_t* bias = bias_hy.data_ptr<scalar_t>();
    const bool* keep = valid ? valid_steps.data_ptr<bool>() : nullptr;
    for (int64_t t = 0; t < steps; ++t) {
      const scalar_t* before = t == 0 ? y0.data_ptr<scalar_t>() : ys.data_ptr<scalar_t>() + (t - 1) * outputs;
      const int64_t before_row = t == 0 ? outputs : y_row;
      scalar_t* h = hs.data_ptr<scalar_t>() + t * hidden;
      scalar_t* after = ys.data_ptr<scalar_t>() + t * outputs;
      // the next step's input parts, a whole sequence apart and unread since the projection wrote them,
      // asked for a step ahead (a forward pass, projection included, took 0.94× the time at the large shape)
      for (int64_t b = 0; t + 1 < steps && b < batch; ++b) prefetch(h + b * h_row + hidden, hidden);
      from_output(h, h_row, before, before_row, scalar_t(1));  // + y_{t-1} W_yhᵀ
      activate(h, batch, hidden, h_row, nonlinearity);
      for (int64_t b = 0; b < batch; ++b) std::memcpy(after + b * y_row, bias, outputs * sizeof(scalar_t));
      to_output(after, y_row, h, h_row, scalar_t(1));  // + h_t W_hyᵀ
      for (int64_t b = 0; keep && b < batch; ++b) {
        if (!keep[b * steps + t])  // a padded step keeps y
          std::memcpy(after + b * y_row, before + b * before_row, outputs * sizeof(scalar_t));
      }
    }
  });
}

// grad_outputs (B, T, O); carry (B, O) holding the final output's gradient, which ends as ∂L/∂y_0;
// hs the forward's h_t (B, T, H); valid (B, T) floats or None. Fills G (B, T, O) with γ_t = ∂L/∂y_t
// (0 on a padded step, which does not use W_hy), delta (B, T, H) with δ_t (0 on a padded step) and
// sums (H + O) with the biases' gradients [Σ_t δ_t, Σ_t γ_t]. carry holds the part of ∂L/∂y_t from
// later steps: step t adds its output's gradient, then passes W_yhᵀ δ_t (and, on a padded step, which
// keeps y, γ_t itself) on to y_{t-1}.
void jordan_backward(const at::Tensor& grad_outputs_given, at::Tensor carry, at::Tensor G, at::Tensor delta,
                     at::Tensor sums, const at::Tensor& hs, const at::Tensor& weight_yh_given,
                     const at::Tensor& weight_hy_given, const c10::optional<at::Tensor>& valid,
                     c10::string_view nonlinearity) {
  const at::Tensor grad_outputs = grad_outputs_given.contiguous();
  // parameters: no copy unless they are views
  const at::Tensor weight_yh = weight_yh_given.contiguous(), weight_hy = weight_hy_given.contiguous();
  const at::Tensor valid_steps = valid ? valid->contiguous() : at::Tensor();
  check_buffers("jordan_backward", {&grad_outputs, &carry, &G, &delta, &sums, &hs, &weight_yh, &weight_hy});
  const int64_t batch = hs.size(0), steps = hs.size(1), hidden = hs.size(2), outputs = G.size(2);
  const int64_t h_row = steps * hidden, y_row = steps * outputs;
  TORCH_CHECK(sums.numel() == hidden + outputs, "jordan_backward: sums needs ", hidden + outputs, " values");
  const bool tanh = nonlinearity == "tanh";
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "jordan_backward", [&] {
    const StepProduct<scalar_t> through_output(weight_hy, batch), through_state(weight_yh, batch);
    const scalar_t* valid_rows = valid ? valid_steps.data_ptr<scalar_t>() : nullptr;
    const scalar_t *grad_outputs_data = grad_outputs.data_ptr<scalar_t>(), *hs_data = hs.data_ptr<scalar_t>();
    scalar_t* later = carry.data_ptr<scalar_t>();
    StepSums<scalar_t> bias_sums(hidden + outputs);  // [Σ δ_t, Σ γ_t]
    for (int64_t t = steps - 1; t >= 0; --t) {
      scalar_t* gamma_t = G.data_ptr<scalar_t>() + t * outputs;
      scalar_t* delta_t = delta.data_ptr<scalar_t>() + t * hidden;
      for (int64_t b = 0; b < batch; ++b) {
        // a step's rows lie a whole sequence apart: asked for two rows ahead, as in Elman's loop
        if (b + 2 < batch) prefetch(grad_outputs_data + ((b + 2) * steps + t) * outputs, outputs);
        const scalar_t kept = valid_rows ? valid_rows[b * steps + t] : 1;
        const scalar_t* grad_y = grad_outputs_data + (b * steps + t) * outputs;
        scalar_t *gamma = gamma_t + b * y_row, *grad_later = later + b * outputs;
        for (int64_t j = 0; j < outputs; ++j) {
          const scalar_t grad = grad_later[j] + grad_y[j] * kept;  // a padded step's output is a constant 0
          gamma[j] = grad * kept;
          if (valid_rows) grad_later[j] = grad * (1 - kept);  // passed on whole by a padded step, then + δ_t W_yh
        }
        bias_sums.add(hidden, gamma, outputs);
      }
      through_output(delta_t, h_row, gamma_t, y_row, scalar_t(0));  // ∂L/∂h_t = γ_t W_hy
      for (int64_t b = 0; b < batch; ++b) {
        if (b + 2 < batch) prefetch(hs_data + (b + 2) * h_row + t * hidden, hidden);
        scalar_t* delta_row = delta_t + b * h_row;
        times_slope(delta_row, delta_row, hs_data + b * h_row + t * hidden,
                    valid_rows ? valid_rows[b * steps + t] : scalar_t(1), hidden, tanh);
        bias_sums.add(0, delta_row, hidden);
      }
      through_state(later, outputs, delta_t, h_row, scalar_t(valid_rows != nullptr));  // ∂L/∂y_{t-1} (+)= δ_t W_yh
      bias_sums.end_step();
    }
    bias_sums.write(0, hidden + outputs, sums.data_ptr<scalar_t>());
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("elman_forward(Tensor(a!) S, Tensor s0, Tensor weight_hh_t, Tensor? valid, str nonlinearity) -> ()");
  m.def("elman_backward(Tensor grad_outputs, Tensor(a!) carry, Tensor(b!) delta, Tensor(c!) sums, Tensor S, "
        "Tensor weight_hh, Tensor? valid, str nonlinearity) -> ()");
  m.def("jordan_forward(Tensor(a!) hs, Tensor(b!) ys, Tensor y0, Tensor weight_yh_t, Tensor weight_hy_t, "
        "Tensor bias_hy, Tensor? valid, str nonlinearity) -> ()");
  m.def("jordan_backward(Tensor grad_outputs, Tensor(a!) carry, Tensor(b!) G, Tensor(c!) delta, Tensor(d!) sums, "
        "Tensor hs, Tensor weight_yh, Tensor weight_hy, Tensor? valid, str nonlinearity) -> ()");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("elman_forward", elman_forward);
  m.impl("elman_backward", elman_backward);
  m.impl("jordan_forward", jordan_forward);
  m.impl("jordan_backward", jordan_backward);
}
