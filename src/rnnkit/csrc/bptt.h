// Pieces shared by the compiled BPTT loops (elman_jordan.cpp, lstm.cpp, gru.cpp, lnlstm.cpp);
// language_model_step.cpp's writing loop uses prefetch too.
#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace rnnkit {

// The loops write their buffers in place through raw pointers, so each must be a contiguous CPU
// tensor, all of one floating dtype, as rnnkit/bptt.py makes them.
inline void check_buffers(const char* name, std::initializer_list<const at::Tensor*> buffers) {
  const at::ScalarType dtype = (*buffers.begin())->scalar_type();
  for (const at::Tensor* buffer : buffers)
    TORCH_CHECK(buffer->is_contiguous() && buffer->device().is_cpu() && buffer->scalar_type() == dtype, name,
                ": every buffer must be a contiguous CPU tensor of one floating dtype");
}

// Sums over every step and row of the backward's rows (a bias gradient Σ_t δ_t, a gain's), added
// while each row is in cache (torch.sum afterwards read all of δ again from memory): a step's rows
// in T (add, or step()[j] += in a loop of one's own), the steps in double (end_step), so that many
// steps of a large batch lose no more than a few roundings.
template <typename T>
class StepSums {
 public:
  explicit StepSums(int64_t n) : step_(n, T(0)), total_(n, 0.0) {}

  T* step() { return step_.data(); }

  // step()[at + j] += row[j], j < n
  void add(int64_t at, const T* row, int64_t n) {
    T* sums = step_.data() + at;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) sums[j] += row[j];
  }

  void end_step() {
    for (size_t i = 0; i < step_.size(); ++i) {
      total_[i] += step_[i];
      step_[i] = T(0);
    }
  }

  // the totals from `at` on, n of them, into out
  void write(int64_t at, int64_t n, T* out) const {
    for (int64_t i = 0; i < n; ++i) out[i] = T(total_[at + i]);
  }

 private:
  std::vector<T> step_;
  std::vector<double> total_;
};

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
