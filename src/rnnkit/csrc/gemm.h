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

}  // namespace rnnkit
