// The sequential part of GRUSequence (rnnkit/bptt.py), compiled: per step, gemm.h's product
// W_hh h_{t-1} + b_hh, then one pass per batch row for the gates (activations.h) and the update,
// and backwards for δ_t. The Python loop there does the same in about ten tensor calls a step.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>

#include "activations.h"
#include "bptt.h"
#include "gemm.h"

namespace {

using rnnkit::check_buffers;
using rnnkit::product;

template <typename T>
void forward_loop(const T* from_x, T* from_h, T* rz, T* n, T* hs, const T* weight_hh_t, const T* bias_hh,
                  const bool* keep, int64_t steps, int64_t batch, int64_t hidden) {
  const int64_t width = 3 * hidden;
  for (int64_t t = 0; t < steps; ++t) {
    T* m_t = from_h + t * batch * width;
    for (int64_t b = 0; b < batch; ++b) std::copy_n(bias_hh, width, m_t + b * width);
    product(m_t, width, hs + t * batch * hidden, hidden, weight_hh_t, width, batch, width, hidden, T(1));
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = t * batch + b;
      const T *x = from_x + row * width, *m = from_h + row * width, *h_prev = hs + row * hidden;
      T *gates = rz + row * 2 * hidden, *n_t = n + row * hidden, *h = hs + (row + batch) * hidden;
#pragma omp simd
      for (int64_t j = 0; j < 2 * hidden; ++j) gates[j] = x[j] + m[j];
      rnnkit::sigmoid_inplace(gates, 2 * hidden);
      const T *r = gates, *z = gates + hidden;
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) n_t[j] = x[2 * hidden + j] + r[j] * m[2 * hidden + j];
      rnnkit::tanh_inplace(n_t, hidden);
      if (keep && !keep[row]) {  // padded step: the state is kept
        std::copy_n(h_prev, hidden, h);
        continue;
      }
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) {  // n + z (h_{t-1} − n), as torch.lerp rounds it
        const T difference = h_prev[j] - n_t[j];
        h[j] = z[j] < T(0.5) ? n_t[j] + z[j] * difference : h_prev[j] - difference * (T(1) - z[j]);
      }
    }
  }
}

template <typename T>
void backward_loop(const T* from_h, const T* rz, const T* n, const T* hs, const T* weight_hh, const bool* keep, T* G,
                   T* delta, T* delta_x_n, int64_t steps, int64_t batch, int64_t hidden) {
  const int64_t width = 3 * hidden;
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = t * batch + b;
      const T valid = (keep && !keep[row]) ? T(0) : T(1);
      const T *r = rz + row * 2 * hidden, *z = r + hidden, *n_t = n + row * hidden;
      const T *m_n = from_h + row * width + 2 * hidden, *h_prev = hs + row * hidden;
      const T* later = G + (row + batch) * hidden;  // γ_t before the padding mask
      T *now = G + row * hidden, *d = delta + row * width, *gamma_nu = delta_x_n + row * hidden;
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) {
        const T gamma = later[j] * valid;  // padded: h_t is kept, no gates
        gamma_nu[j] = gamma * (T(1) - z[j]) * (T(1) - n_t[j] * n_t[j]);
        d[2 * hidden + j] = gamma_nu[j] * r[j];
        d[j] = gamma_nu[j] * m_n[j] * (r[j] * (T(1) - r[j]));
        d[hidden + j] = (h_prev[j] - n_t[j]) * gamma * (z[j] * (T(1) - z[j]));
        now[j] += gamma * z[j];
      }
    }
    product(G + t * batch * hidden, hidden, delta + t * batch * width, width, weight_hh, hidden, batch, hidden, width,
            T(1));
    for (int64_t b = 0; keep && b < batch; ++b) {  // a padded step keeps h: its gradient passes through
      const int64_t row = t * batch + b;
      if (keep[row]) continue;
      for (int64_t j = 0; j < hidden; ++j) G[row * hidden + j] += G[(row + batch) * hidden + j];
    }
  }
}

// from_x (T, B, 3H) = W_ih x_t + b_ih, hs (T+1, B, H) holding h_0: fills in from_h (T, B, 3H) =
// W_hh h_{t-1} + b_hh, rz (T, B, 2H) = [r_t, z_t], n (T, B, H) = n_t and h_t, t = 1 … T.
void gru_forward(const at::Tensor& from_x, at::Tensor from_h, at::Tensor rz, at::Tensor n, at::Tensor hs,
                 const at::Tensor& weight_hh_t, const at::Tensor& bias_hh_given, const c10::optional<at::Tensor>& keep) {
  const at::Tensor bias_hh = bias_hh_given.contiguous();  // a parameter: no copy unless it is a view
  check_buffers("gru_forward", {&from_x, &from_h, &rz, &n, &hs, &weight_hh_t, &bias_hh});
  const at::Tensor kept = keep ? keep->to(at::kBool).contiguous() : at::Tensor();
  const int64_t steps = from_x.size(0), batch = from_x.size(1), hidden = hs.size(2);
  TORCH_CHECK(from_x.size(2) == 3 * hidden && from_h.sizes() == from_x.sizes() && weight_hh_t.size(0) == hidden &&
                  weight_hh_t.size(1) == 3 * hidden && bias_hh.numel() == 3 * hidden,
              "gru_forward: from_x, from_h (T, B, 3H), weight_hh_t (H, 3H), bias_hh (3H) for states (T+1, B, H)");
  const rnnkit::StepProducts step_products(batch * 3 * hidden * hidden);
  AT_DISPATCH_FLOATING_TYPES(from_x.scalar_type(), "gru_forward", [&] {
    forward_loop<scalar_t>(from_x.data_ptr<scalar_t>(), from_h.data_ptr<scalar_t>(), rz.data_ptr<scalar_t>(),
                           n.data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(), weight_hh_t.data_ptr<scalar_t>(),
                           bias_hh.data_ptr<scalar_t>(), keep ? kept.data_ptr<bool>() : nullptr, steps, batch, hidden);
  });
}

// G (T+1, B, H) with the gradients from outside: ends with γ_t in G[t] (∂L/∂h_0 in G[0]), δ_t in
// delta[t − 1] (T, B, 3H) and the last block of δˣ_t, γ_t ⊙ ν_t, in delta_x_n[t − 1] (T, B, H).
void gru_backward(const at::Tensor& from_h, const at::Tensor& rz, const at::Tensor& n, const at::Tensor& hs,
                  const at::Tensor& weight_hh_given, const c10::optional<at::Tensor>& keep, at::Tensor G,
                  at::Tensor delta, at::Tensor delta_x_n) {
  const at::Tensor weight_hh = weight_hh_given.contiguous();  // a parameter: no copy unless it is a view
  check_buffers("gru_backward", {&from_h, &rz, &n, &hs, &weight_hh, &G, &delta, &delta_x_n});
  const at::Tensor kept = keep ? keep->to(at::kBool).contiguous() : at::Tensor();
  const int64_t steps = n.size(0), batch = n.size(1), hidden = n.size(2);
  TORCH_CHECK(weight_hh.size(0) == 3 * hidden && weight_hh.size(1) == hidden && delta.sizes() == from_h.sizes(),
              "gru_backward: weight_hh (3H, H) and delta shaped as from_h");
  const rnnkit::StepProducts step_products(batch * 3 * hidden * hidden);
  AT_DISPATCH_FLOATING_TYPES(n.scalar_type(), "gru_backward", [&] {
    backward_loop<scalar_t>(from_h.data_ptr<scalar_t>(), rz.data_ptr<scalar_t>(), n.data_ptr<scalar_t>(),
                            hs.data_ptr<scalar_t>(), weight_hh.data_ptr<scalar_t>(),
                            keep ? kept.data_ptr<bool>() : nullptr, G.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                            delta_x_n.data_ptr<scalar_t>(), steps, batch, hidden);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("gru_forward(Tensor from_x, Tensor(a!) from_h, Tensor(b!) rz, Tensor(c!) n, Tensor(d!) hs, "
        "Tensor weight_hh_t, Tensor bias_hh, Tensor? keep) -> ()");
  m.def("gru_backward(Tensor from_h, Tensor rz, Tensor n, Tensor hs, Tensor weight_hh, Tensor? keep, "
        "Tensor(a!) G, Tensor(b!) delta, Tensor(c!) delta_x_n) -> ()");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("gru_forward", gru_forward);
  m.impl("gru_backward", gru_backward);
}
