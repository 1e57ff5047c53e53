// The sequential part of GRUSequence (rnnkit/bptt.py), compiled: per step, gemm.h's product
// W_hh h_{t-1} + b_hh, then one pass per batch row for the gates (activations.h) and the update,
// and backwards for δ_t. The Python loop there does the same in about ten tensor calls a step.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "activations.h"
#include "bptt.h"
#include "gemm.h"

namespace {

using rnnkit::check_buffers;
using rnnkit::StepProduct;

// One batch row of a forward step, in one pass: r, z = σ(x_rz + m_rz), n = tanh(x_n + r ⊙ m_n) and
// h = n + z (h_{t-1} − n), rounded as torch.lerp rounds it; m_n is kept for backward. With a pass
// for the gates, one for n and one for h, the forward loop at B=64, H=256, T=100 took 48 ms; in
// one pass 38 ms, about the time of its products alone.
template <typename T>
void row_forward(const T* x, const T* m, const T* h_prev, T* r, T* z, T* m_n, T* n, T* h, int64_t hidden) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    for (; j + 8 <= hidden; j += 8) {
      const __m256 r8 = rnnkit::sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(m + j)));
      const __m256 z8 =
          rnnkit::sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x + hidden + j), _mm256_loadu_ps(m + hidden + j)));
      const __m256 m_n8 = _mm256_loadu_ps(m + 2 * hidden + j);
      const __m256 n8 = rnnkit::tanh8(_mm256_fmadd_ps(r8, m_n8, _mm256_loadu_ps(x + 2 * hidden + j)));
      const __m256 h_prev8 = _mm256_loadu_ps(h_prev + j), difference = _mm256_sub_ps(h_prev8, n8);
      const __m256 h8 = _mm256_blendv_ps(_mm256_fnmadd_ps(difference, _mm256_sub_ps(one, z8), h_prev8),
                                         _mm256_fmadd_ps(z8, difference, n8), _mm256_cmp_ps(z8, half, _CMP_LT_OQ));
      _mm256_storeu_ps(r + j, r8);
      _mm256_storeu_ps(z + j, z8);
      _mm256_storeu_ps(m_n + j, m_n8);
      _mm256_storeu_ps(n + j, n8);
      _mm256_storeu_ps(h + j, h8);
    }
  }
#endif
  for (; j < hidden; ++j) {
    r[j] = rnnkit::sigmoid(x[j] + m[j]);
    z[j] = rnnkit::sigmoid(x[hidden + j] + m[hidden + j]);
    m_n[j] = m[2 * hidden + j];
    n[j] = std::tanh(x[2 * hidden + j] + r[j] * m_n[j]);
    const T difference = h_prev[j] - n[j];
    h[j] = z[j] < T(0.5) ? n[j] + z[j] * difference : h_prev[j] - difference * (T(1) - z[j]);
  }
}

template <typename T>
void forward_loop(const T* from_x, T* m, T* m_n, T* rz, T* n, T* hs, const StepProduct<T>& step_product,
                  const T* bias_hh, const bool* keep, int64_t steps, int64_t batch, int64_t hidden) {
  const int64_t width = 3 * hidden;
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t b = 0; b < batch; ++b) std::copy_n(bias_hh, width, m + b * width);
    step_product(m, width, hs + t * batch * hidden, hidden, T(1));  // + h_{t-1} W_hhᵀ
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = t * batch + b;
      const T* h_prev = hs + row * hidden;
      T *r = rz + row * 2 * hidden, *h = hs + (row + batch) * hidden;
      row_forward(from_x + row * width, m + b * width, h_prev, r, r + hidden, m_n + row * hidden, n + row * hidden, h,
                  hidden);
      if (keep && !keep[row]) std::copy_n(h_prev, hidden, h);  // padded step: the state is kept
    }
  }
}

template <typename T>
void backward_loop(const T* m_n, const T* rz, const T* n, const T* hs, const StepProduct<T>& step_product,
                   const bool* keep, T* G, T* delta, T* delta_x_n, T* sums, int64_t steps, int64_t batch,
                   int64_t hidden) {
  const int64_t width = 3 * hidden;
  rnnkit::StepSums<T> bias_sums(4 * hidden);  // [Σ δ_t, Σ γ_t ⊙ ν_t]
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* step_sums = bias_sums.step();
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = t * batch + b;
      const T valid = (keep && !keep[row]) ? T(0) : T(1);
      const T *r = rz + row * 2 * hidden, *z = r + hidden, *n_t = n + row * hidden;
      const T *m_n_t = m_n + row * hidden, *h_prev = hs + row * hidden;
      const T* later = G + (row + batch) * hidden;  // γ_t before the padding mask
      T *now = G + row * hidden, *d = delta + row * width, *gamma_nu = delta_x_n + row * hidden;
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) {
        const T gamma = later[j] * valid;  // padded: h_t is kept, no gates
        gamma_nu[j] = gamma * (T(1) - z[j]) * (T(1) - n_t[j] * n_t[j]);
        d[2 * hidden + j] = gamma_nu[j] * r[j];
        d[j] = gamma_nu[j] * m_n_t[j] * (r[j] * (T(1) - r[j]));
        d[hidden + j] = (h_prev[j] - n_t[j]) * gamma * (z[j] * (T(1) - z[j]));
        now[j] += gamma * z[j];
        step_sums[j] += d[j];
        step_sums[hidden + j] += d[hidden + j];
        step_sums[2 * hidden + j] += d[2 * hidden + j];
        step_sums[3 * hidden + j] += gamma_nu[j];
      }
    }
    step_product(G + t * batch * hidden, hidden, delta + t * batch * width, width, T(1));  // + δ_t W_hh
    for (int64_t b = 0; keep && b < batch; ++b) {  // a padded step keeps h: its gradient passes through
      const int64_t row = t * batch + b;
      if (keep[row]) continue;
      for (int64_t j = 0; j < hidden; ++j) G[row * hidden + j] += G[(row + batch) * hidden + j];
    }
    bias_sums.end_step();
  }
  bias_sums.write(0, 4 * hidden, sums);
}

// from_x (T, B, 3H) = W_ih x_t + b_ih, hs (T+1, B, H) holding h_0: fills in m_n (T, B, H), the last
// block of W_hh h_{t-1} + b_hh (the one backward reads), rz (T, B, 2H) = [r_t, z_t], n (T, B, H) = n_t
// and h_t, t = 1 … T. The whole W_hh h_{t-1} + b_hh goes to one (B, 3H) buffer that each step
// overwrites: it stays in cache, where a (T, B, 3H) one would be written out to memory.
void gru_forward(const at::Tensor& from_x, at::Tensor m_n, at::Tensor rz, at::Tensor n, at::Tensor hs,
                 const at::Tensor& weight_hh_t, const at::Tensor& bias_hh_given, const c10::optional<at::Tensor>& keep) {
  const at::Tensor bias_hh = bias_hh_given.contiguous();  // a parameter: no copy unless it is a view
  check_buffers("gru_forward", {&from_x, &m_n, &rz, &n, &hs, &weight_hh_t, &bias_hh});
  const at::Tensor kept = keep ? keep->to(at::kBool).contiguous() : at::Tensor();
  const int64_t steps = from_x.size(0), batch = from_x.size(1), hidden = hs.size(2);
  TORCH_CHECK(from_x.size(2) == 3 * hidden && m_n.sizes() == n.sizes() && n.size(0) == steps &&
                  weight_hh_t.size(0) == hidden && weight_hh_t.size(1) == 3 * hidden && bias_hh.numel() == 3 * hidden,
              "gru_forward: from_x (T, B, 3H), m_n and n (T, B, H), weight_hh_t (H, 3H), bias_hh (3H) for states "
              "(T+1, B, H)");
  const at::Tensor from_h_step = at::empty({batch, 3 * hidden}, from_x.options());
  AT_DISPATCH_FLOATING_TYPES(from_x.scalar_type(), "gru_forward", [&] {
    forward_loop<scalar_t>(from_x.data_ptr<scalar_t>(), from_h_step.data_ptr<scalar_t>(), m_n.data_ptr<scalar_t>(),
                           rz.data_ptr<scalar_t>(), n.data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(),
                           StepProduct<scalar_t>(weight_hh_t, batch), bias_hh.data_ptr<scalar_t>(),
                           keep ? kept.data_ptr<bool>() : nullptr, steps, batch, hidden);
  });
}

// G (T+1, B, H) with the gradients from outside: ends with γ_t in G[t] (∂L/∂h_0 in G[0]), δ_t in
// delta[t − 1] (T, B, 3H), the last block of δˣ_t, γ_t ⊙ ν_t, in delta_x_n[t − 1] (T, B, H), and their
// sums over every step and row, the bias gradients' parts, in sums (4H) = [Σ δ_t, Σ γ_t ⊙ ν_t]: added
// while each row is in cache, where torch.sum afterwards read δ (T, B, 3H) twice from memory.
void gru_backward(const at::Tensor& m_n, const at::Tensor& rz, const at::Tensor& n, const at::Tensor& hs,
                  const at::Tensor& weight_hh_given, const c10::optional<at::Tensor>& keep, at::Tensor G,
                  at::Tensor delta, at::Tensor delta_x_n, at::Tensor sums) {
  const at::Tensor weight_hh = weight_hh_given.contiguous();  // a parameter: no copy unless it is a view
  check_buffers("gru_backward", {&m_n, &rz, &n, &hs, &weight_hh, &G, &delta, &delta_x_n, &sums});
  const at::Tensor kept = keep ? keep->to(at::kBool).contiguous() : at::Tensor();
  const int64_t steps = n.size(0), batch = n.size(1), hidden = n.size(2);
  TORCH_CHECK(weight_hh.size(0) == 3 * hidden && weight_hh.size(1) == hidden && m_n.sizes() == n.sizes() &&
                  delta.size(0) == steps && delta.size(1) == batch && delta.size(2) == 3 * hidden &&
                  sums.numel() == 4 * hidden,
              "gru_backward: weight_hh (3H, H), m_n shaped as n (T, B, H), delta (T, B, 3H), sums (4H)");
  AT_DISPATCH_FLOATING_TYPES(n.scalar_type(), "gru_backward", [&] {
    backward_loop<scalar_t>(m_n.data_ptr<scalar_t>(), rz.data_ptr<scalar_t>(), n.data_ptr<scalar_t>(),
                            hs.data_ptr<scalar_t>(), StepProduct<scalar_t>(weight_hh, batch),
                            keep ? kept.data_ptr<bool>() : nullptr, G.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                            delta_x_n.data_ptr<scalar_t>(), sums.data_ptr<scalar_t>(), steps, batch, hidden);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("gru_forward(Tensor from_x, Tensor(a!) m_n, Tensor(b!) rz, Tensor(c!) n, Tensor(d!) hs, "
        "Tensor weight_hh_t, Tensor bias_hh, Tensor? keep) -> ()");
  m.def("gru_backward(Tensor m_n, Tensor rz, Tensor n, Tensor hs, Tensor weight_hh, Tensor? keep, "
        "Tensor(a!) G, Tensor(b!) delta, Tensor(c!) delta_x_n, Tensor(d!) sums) -> ()");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("gru_forward", gru_forward);
  m.impl("gru_backward", gru_backward);
}
