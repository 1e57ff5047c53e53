// Pieces shared by the compiled BPTT loops (elman_jordan.cpp, lstm.cpp, gru.cpp, lnlstm.cpp);
// language_model_step.cpp's writing loop uses prefetch too.
#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <initializer_list>

namespace rnnkit {

// The loops write their buffers in place through raw pointers, so each must be a contiguous CPU
// tensor, all of one floating dtype, as rnnkit/bptt.py makes them.
inline void check_buffers(const char* name, std::initializer_list<const at::Tensor*> buffers) {
  const at::ScalarType dtype = (*buffers.begin())->scalar_type();
  for (const at::Tensor* buffer : buffers)
    TORCH_CHECK(buffer->is_contiguous() && buffer->device().is_cpu() && buffer->scalar_type() == dtype, name,
                ": every buffer must be a contiguous CPU tensor of one floating dtype");
}

// sums += row, n values: the loops add a bias gradient up row by row while each row of δ is in
// cache (torch.sum afterwards read all of δ again from memory)
template <typename T>
inline void add_row(T* sums, const T* row, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) sums[j] += row[j];
}

// Asks for v[0..n) to be brought into cache ahead of its use: a backward loop reads each row of
// the forward's buffers once, long after the forward wrote it, from the last step to the first,
// so the hardware's prefetcher, which follows ascending addresses, does not see the rows coming.
template <typename T>
inline void prefetch(const T* v, int64_t n) {
  for (int64_t j = 0; j < n; j += 64 / sizeof(T)) __builtin_prefetch(v + j, 0, 2);
}

// One batch row of an LSTM's backward step once κ = ∂L/∂c_t (kappa) is complete, from the
// activated gates z = [i, f, g, o], c_{t-1} and γ = ∂L/∂h_t for h_t = o ⊙ squashed:
//   δ = [κ ⊙ g ⊙ i(1 − i),  κ ⊙ c_{t-1} ⊙ f(1 − f),  κ ⊙ i ⊙ (1 − g²),  γ ⊙ squashed ⊙ o(1 − o)],
//   ∂L/∂c_{t-1} += κ ⊙ f (kappa_before);
// a padded step (valid = 0) has δ = 0 and passes κ and γ on unchanged (gamma_before).
template <typename T>
inline void lstm_row_backward(const T* z, const T* kappa, const T* c_prev, const T* gamma, const T* squashed,
                              T valid, int64_t hidden, T* delta, T* kappa_before, T* gamma_before) {
  const T *i = z, *f = z + hidden, *g = z + 2 * hidden, *o = z + 3 * hidden;
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T k = kappa[j];
    delta[j] = k * g[j] * i[j] * (T(1) - i[j]) * valid;
    delta[hidden + j] = k * c_prev[j] * f[j] * (T(1) - f[j]) * valid;
    delta[2 * hidden + j] = k * i[j] * (T(1) - g[j] * g[j]) * valid;
    delta[3 * hidden + j] = gamma[j] * squashed[j] * o[j] * (T(1) - o[j]) * valid;
    kappa_before[j] = k * (f[j] * valid + (T(1) - valid));
    gamma_before[j] += gamma[j] * (T(1) - valid);
  }
}

}  // namespace rnnkit
