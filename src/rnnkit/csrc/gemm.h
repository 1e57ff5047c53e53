// Matrix products on raw pointers for the compiled loops: BLAS's gemm, which libtorch_cpu exports
// (MKL's on x86, the routine ATen's own addmm ends in). Per step of a loop, an ATen product costs
// a few µs of views, checks and dispatch on top of the arithmetic, as much as the arithmetic at
// small sizes.
#pragma once
#include <cstdint>
#include <type_traits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
int MKL_Set_Num_Threads_Local(int threads);  // MKL's threads for the calling thread; 0: the global setting
}

namespace rnnkit {

// Row-major C (m, n) = A (m, k) · B (k, n) + beta C, with row strides lda, ldb, ldc. BLAS is
// column-major: it computes Cᵀ = Bᵀ Aᵀ, whose column-major layout is C's row-major one.
template <typename T>
void product(T* C, int64_t ldc, const T* A, int64_t lda, const T* B, int64_t ldb, int64_t m, int64_t n, int64_t k,
             T beta) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "BLAS products are float or double");
  const char no = 'N';
  const int M = n, N = m, K = k, LDA = ldb, LDB = lda, LDC = ldc;
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&no, &no, &M, &N, &K, &one, B, &LDA, A, &LDB, &beta, C, &LDC);
  } else {
    dgemm_(&no, &no, &M, &N, &K, &one, B, &LDA, A, &LDB, &beta, C, &LDC);
  }
}

// A loop whose per-step products are smaller than this (multiply-adds) runs them on the calling
// thread alone: at 2 threads with OpenMP's passive waiting (which the rnnkit command sets) MKL
// wakes its second thread for every product, about 100 µs, more than a small product takes.
// Measured at 2 threads, passive waiting, forward + backward at B=32, H=64 (products of 0.5M):
// LSTM 17.7 → 9.2 ms, GRU 17.4 → 8.0 ms a step with MKL on one thread; at B=64, H=256 (16.8M)
// the second thread paid (LSTM 207 against 257 ms).
constexpr int64_t kParallelProductWork = int64_t(1) << 22;

// While it lives, BLAS products on this thread run on it alone if `work` (a step's product) is
// below kParallelProductWork.
class StepProducts {
 public:
  explicit StepProducts(int64_t work) : previous_(work < kParallelProductWork ? MKL_Set_Num_Threads_Local(1) : -1) {}
  ~StepProducts() {
    if (previous_ >= 0) MKL_Set_Num_Threads_Local(previous_);
  }
  StepProducts(const StepProducts&) = delete;
  StepProducts& operator=(const StepProducts&) = delete;

 private:
  const int previous_;
};

}  // namespace rnnkit
