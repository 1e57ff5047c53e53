// Matrix products on raw pointers for the compiled loops: BLAS's gemm, which libtorch_cpu exports
// (MKL's on x86, the routine ATen's own addmm ends in), and for a loop's large per-step products
// oneDNN's (StepProduct, at the end). Per step of a loop, an ATen product costs a few µs of views,
// checks and dispatch on top of the arithmetic, as much as the arithmetic at small sizes.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

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
class SmallProductsOnOneThread {
 public:
  explicit SmallProductsOnOneThread(int64_t work)
      : previous_(work < kParallelProductWork ? MKL_Set_Num_Threads_Local(1) : -1) {}
  ~SmallProductsOnOneThread() {
    if (previous_ >= 0) MKL_Set_Num_Threads_Local(previous_);
  }
  SmallProductsOnOneThread(const SmallProductsOnOneThread&) = delete;
  SmallProductsOnOneThread& operator=(const SmallProductsOnOneThread&) = delete;

 private:
  const int previous_;
};

// A loop's per-step product with one matrix, C (m, n) = A (m, k) · B (k, n) + beta C, B the same
// at every step. From kPackedProductWork multiply-adds, in float, it runs through oneDNN's matmul
// with B packed once for the loop: mkldnn::_reorder_linear_weight and mkldnn::_linear_pointwise,
// the ops torch.compile's CPU backend calls, which libtorch registers wherever it is built with
// oneDNN (nn.LSTM's CPU kernel is oneDNN's too). MKL's sgemm repacks B at every call. Measured
// per product, one thread (AMD EPYC, AVX512; oneDNN ÷ MKL time): (32, 512)·(512, 2048) 0.74,
// (32, 2048)·(2048, 512) 0.79, (32, 512)·(512, 512) 0.85, (64, 256)·(256, 1024) 0.86, but
// (64, 256)·(256, 256) 1.05 and (32, 64)·(64, 256) 2.5: oneDNN's call costs about 20 µs more.
// Without AVX512 (the build for an AVX2 CPU, rnnkit.kernels) the gain starts later: on an AMD
// EPYC with AVX2 alone, one thread, (32, 512)·(512, 2048) 0.79, (32, 2048)·(2048, 512) 0.87, but
// (64, 256)·(256, 1024) 0.96 and (64, 1024)·(1024, 256) 1.03; in training steps at B=64, H=256
// (2^24 a product) LSTM took 1.07× and GRU 1.05× the time through oneDNN, at B=32, H=512 LSTM
// (2^25) 0.95×. Smaller products, doubles, and a build or a session without oneDNN take BLAS's
// sgemm, on the calling thread alone below kParallelProductWork while the StepProduct lives.
#ifdef __AVX512F__
constexpr int64_t kPackedProductWork = int64_t(1) << 23;
#else
constexpr int64_t kPackedProductWork = int64_t(1) << 25;
#endif

template <typename T>
class StepProduct {
 public:
  // B (k, n), contiguous; m the rows of every A and C
  StepProduct(const at::Tensor& B, int64_t m)
      : B_(B.data_ptr<T>()), m_(m), k_(B.size(0)), n_(B.size(1)), threads_(m * k_ * n_) {
    if constexpr (std::is_same_v<T, float>) {
      if (m * k_ * n_ < kPackedProductWork || !at::globalContext().userEnabledMkldnn()) return;
      auto& dispatcher = c10::Dispatcher::singleton();
      const auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
      linear_ = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
      add_linear_ = dispatcher.findSchema({"mkldnn::_linear_pointwise", "binary"});
      if (!reorder || !linear_ || !add_linear_) return;
      std::vector<c10::IValue> stack{B.t(), m};  // linear's weight is (out, in): Bᵀ
      reorder->callBoxed(stack);
      packed_ = stack[0].toTensor();
    }
  }

  // C = A · B + beta C (beta 0 or 1), rows lda and ldc apart
  void operator()(T* C, int64_t ldc, const T* A, int64_t lda, T beta) const {
    if (!packed_.defined()) {
      product(C, ldc, A, lda, B_, n_, m_, n_, k_, beta);
      return;
    }
    const auto options = at::TensorOptions().dtype(packed_.dtype());
    const at::Tensor a = at::from_blob(const_cast<T*>(A), {m_, k_}, {lda, 1}, options);
    std::vector<c10::IValue> stack;
    if (beta == T(0)) {
      stack = {a, packed_, c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      linear_->callBoxed(stack);
    } else {
      stack = {a, at::from_blob(C, {m_, n_}, {ldc, 1}, options), packed_, c10::IValue(), std::string("add")};
      add_linear_->callBoxed(stack);
    }
    const T* result = stack[0].toTensor().data_ptr<T>();  // contiguous (m, n)
    if (ldc == n_) {
      std::memcpy(C, result, m_ * n_ * sizeof(T));
    } else {
      for (int64_t row = 0; row < m_; ++row) std::memcpy(C + row * ldc, result + row * n_, n_ * sizeof(T));
    }
  }

 private:
  const T* B_;
  const int64_t m_, k_, n_;
  const SmallProductsOnOneThread threads_;
  std::optional<c10::OperatorHandle> linear_, add_linear_;
  at::Tensor packed_;
};

}  // namespace rnnkit
