// The sequential part of LSTMSequence (rnnkit/bptt.py), compiled: per step, gemm.h's product
// W_hh h_{t-1} into the gate buffer, then one pass per batch row for the activations
// (activations.h), the cell update and, backwards, the δ recursion. The Python loop there does
// the same in about ten tensor calls a step, whose set-up costs more than the arithmetic at
// small sizes (B=32, H=64: the Python loop made hand BPTT half as fast as torch's fused LSTM).
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>

#include "activations.h"
#include "bptt.h"
#include "gemm.h"

namespace {

using rnnkit::check_buffers;
using rnnkit::StepProduct;

template <typename T>
void forward_loop(T* gates, T* hs, T* cs, T* tanh_cs, const StepProduct<T>& step_product, const bool* keep,
                  int64_t steps, int64_t batch, int64_t hidden) {
  const int64_t width = 4 * hidden;
  for (int64_t t = 0; t < steps; ++t) {
    T* z_t = gates + t * batch * width;
    step_product(z_t, width, hs + t * batch * hidden, hidden, T(1));  // + h_{t-1} W_hhᵀ
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = t * batch + b;
      T* z = z_t + b * width;
      T *i = z, *f = z + hidden, *g = z + 2 * hidden, *o = z + 3 * hidden;
      rnnkit::sigmoid_inplace(i, 2 * hidden);  // i and f
      rnnkit::tanh_inplace(g, hidden);
      rnnkit::sigmoid_inplace(o, hidden);
      const T *c_prev = cs + row * hidden, *h_prev = hs + row * hidden;
      T *c = cs + (row + batch) * hidden, *h = hs + (row + batch) * hidden, *tanh_c = tanh_cs + row * hidden;
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) tanh_c[j] = c[j] = f[j] * c_prev[j] + i[j] * g[j];
      rnnkit::tanh_inplace(tanh_c, hidden);
      if (keep && !keep[row]) {  // padded step: the state is kept
        std::copy_n(c_prev, hidden, c);
        std::copy_n(h_prev, hidden, h);
        continue;
      }
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) h[j] = o[j] * tanh_c[j];
    }
  }
}

template <typename T>
void backward_loop(const T* gates, const T* cs, const T* tanh_cs, const StepProduct<T>& step_product,
                   const bool* keep, T* Gh, T* Gc, T* delta, T* sums, int64_t steps, int64_t batch, int64_t hidden) {
  const int64_t width = 4 * hidden;
  rnnkit::StepSums<T> delta_sums(width);
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = t * batch + b;
      const T valid = (keep && !keep[row]) ? T(0) : T(1);
      const T *z = gates + row * width, *o = z + 3 * hidden, *tanh_c = tanh_cs + row * hidden;
      const T* gamma = Gh + (row + batch) * hidden;  // γ_t
      T* kappa = Gc + (row + batch) * hidden;        // κ_{t+1} ⊙ f_{t+1}, becomes κ_t
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) kappa[j] += gamma[j] * o[j] * valid * (T(1) - tanh_c[j] * tanh_c[j]);
      rnnkit::lstm_row_backward(z, kappa, cs + row * hidden, gamma, tanh_c, valid, hidden, delta + row * width,
                                Gc + row * hidden, Gh + row * hidden);
      delta_sums.add(0, delta + row * width, width);
    }
    step_product(Gh + t * batch * hidden, hidden, delta + t * batch * width, width, T(1));  // + δ_t W_hh
    delta_sums.end_step();
  }
  delta_sums.write(0, width, sums);
}

// gates (T, B, 4H) holding W_ih x_t + biases, hs and cs (T+1, B, H) holding h_0 and c_0: fills
// in the activated gates, h_t, c_t and tanh(c_t) into tanh_cs (T, B, H), t = 1 … T.
void lstm_forward(at::Tensor gates, at::Tensor hs, at::Tensor cs, at::Tensor tanh_cs, const at::Tensor& weight_hh_t,
                  const c10::optional<at::Tensor>& keep) {
  check_buffers("lstm_forward", {&gates, &hs, &cs, &tanh_cs, &weight_hh_t});
  const at::Tensor kept = keep ? keep->to(at::kBool).contiguous() : at::Tensor();
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = hs.size(2);
  TORCH_CHECK(gates.size(2) == 4 * hidden && weight_hh_t.size(0) == hidden && weight_hh_t.size(1) == 4 * hidden,
              "lstm_forward: gates (T, B, 4H) and weight_hh_t (H, 4H) for states (T+1, B, H)");
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward", [&] {
    forward_loop<scalar_t>(gates.data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                           tanh_cs.data_ptr<scalar_t>(), StepProduct<scalar_t>(weight_hh_t, batch),
                           keep ? kept.data_ptr<bool>() : nullptr, steps, batch, hidden);
  });
}

// Gh (T+1, B, H) with the gradients from outside, Gc (T+1, B, H) with ∂L/∂c_T in Gc[T]: for the
// steps t = T … 1, ends with γ_t in Gh[t], κ_t in Gc[t] and δ_t in delta[t − 1], and Σ_t δ_t, the
// biases' gradient, in sums (4H); Gh[0] and Gc[0] end as ∂L/∂h_0 and ∂L/∂c_0 = κ_1 ⊙ f_1.
void lstm_backward(const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& tanh_cs,
                   const at::Tensor& weight_hh_given, const c10::optional<at::Tensor>& keep, at::Tensor Gh,
                   at::Tensor Gc, at::Tensor delta, at::Tensor sums) {
  const at::Tensor weight_hh = weight_hh_given.contiguous();  // a parameter: no copy unless it is a view
  check_buffers("lstm_backward", {&gates, &cs, &tanh_cs, &weight_hh, &Gh, &Gc, &delta, &sums});
  const at::Tensor kept = keep ? keep->to(at::kBool).contiguous() : at::Tensor();
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = cs.size(2);
  TORCH_CHECK(weight_hh.size(0) == 4 * hidden && weight_hh.size(1) == hidden && delta.sizes() == gates.sizes() &&
                  sums.numel() == 4 * hidden,
              "lstm_backward: weight_hh (4H, H), delta shaped as gates, sums (4H)");
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    backward_loop<scalar_t>(gates.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(), tanh_cs.data_ptr<scalar_t>(),
                            StepProduct<scalar_t>(weight_hh, batch), keep ? kept.data_ptr<bool>() : nullptr,
                            Gh.data_ptr<scalar_t>(), Gc.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                            sums.data_ptr<scalar_t>(), steps, batch, hidden);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("lstm_forward(Tensor(a!) gates, Tensor(b!) hs, Tensor(c!) cs, Tensor(d!) tanh_cs, Tensor weight_hh_t, "
        "Tensor? keep) -> ()");
  m.def("lstm_backward(Tensor gates, Tensor cs, Tensor tanh_cs, Tensor weight_hh, Tensor? keep, Tensor(a!) Gh, "
        "Tensor(b!) Gc, Tensor(c!) delta, Tensor(d!) sums) -> ()");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("lstm_forward", lstm_forward);
  m.impl("lstm_backward", lstm_backward);
}
