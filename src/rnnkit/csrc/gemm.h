// Matrix products on raw pointers for the compiled loops: BLAS's gemm, which libtorch_cpu exports
// (MKL's on x86, the routine ATen's own addmm ends in), a kernel of our own on a weight packed once
// (the AVX2 build), and oneDNN's for a loop's large per-step products (StepProduct, at the end
// chooses). Per step of a loop, an ATen product costs a few µs of views, checks and dispatch on top
// of the arithmetic, as much as the arithmetic at small sizes.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

// The panel kernel below is written for AVX2 with FMA, and measured only on a CPU without AVX512
// (whose build keeps MKL's and oneDNN's kernels, which use the wider registers).
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define RNNKIT_PANEL_PRODUCTS 1
#include <immintrin.h>
#endif

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
// (2^25) 0.95×. Where the build has the panel kernel (AVX2 without AVX512), a float product takes
// it instead on one thread, and below kParallelProductWork on more: it reads B packed once per loop,
// where sgemm packs it anew at every call. On the AVX2 EPYC, one thread, GFLOP/s panels / sgemm:
// (32, 64)·(64, 256) 65 / 62, (64, 256)·(256, 256) 70 / 60, (64, 256)·(256, 1024) 70 / 57,
// (32, 512)·(512, 512) 78 / 61, (32, 512)·(512, 2048) 62-83 / 44; training steps (bench shapes,
// new ÷ old time, paired medians) small 0.96-1.01, medium 0.90-0.995, large 0.89-0.96. Other
// products, doubles, and a build or a session without oneDNN take BLAS's sgemm, on the calling
// thread alone below kParallelProductWork while the StepProduct lives.
#ifdef __AVX512F__
constexpr int64_t kPackedProductWork = int64_t(1) << 23;
#else
constexpr int64_t kPackedProductWork = int64_t(1) << 25;
#endif

#ifdef RNNKIT_PANEL_PRODUCTS
// C (rows, n) = A (rows, k) · B + beta C for B packed in panels of kPanelWidth columns (see
// PackedPanels), `Rows` rows of C at a time: 2·Rows accumulators and B's two vectors fill 14 of
// the 16 AVX registers, and each multiply-add reads one broadcast value of A.
constexpr int64_t kPanelWidth = 16;
constexpr int64_t kBlockRows = 6;

template <int Rows>
void panel_block(float* C, int64_t ldc, const float* A, int64_t lda, const float* panels, int64_t k, int64_t n,
                 bool accumulate, const float* bias) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t first = 0; first < n; first += kPanelWidth) {
    const float* panel = panels + first * k;  // (k, kPanelWidth), zero beyond column n
    // the last panel's columns beyond n are masked off (every loop unrolled, so that the sums stay in registers)
    const int64_t columns = std::min(kPanelWidth, n - first);
    const __m256i left_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(columns)), lane);
    const __m256i right_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(columns) - 8), lane);
    const __m256 start_left = bias ? _mm256_maskload_ps(bias + first, left_mask) : _mm256_setzero_ps();
    const __m256 start_right = bias ? _mm256_maskload_ps(bias + first + 8, right_mask) : _mm256_setzero_ps();
    __m256 sum[Rows][2];
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      sum[r][0] = start_left;
      sum[r][1] = start_right;
    }
    for (int64_t kk = 0; kk < k; ++kk) {
      const __m256 left = _mm256_load_ps(panel + kk * kPanelWidth), right = _mm256_load_ps(panel + kk * kPanelWidth + 8);
#pragma GCC unroll 8
      for (int r = 0; r < Rows; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * lda + kk);
        sum[r][0] = _mm256_fmadd_ps(a, left, sum[r][0]);
        sum[r][1] = _mm256_fmadd_ps(a, right, sum[r][1]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      float* c = C + r * ldc + first;
      if (columns == kPanelWidth) {
        if (accumulate) {
          sum[r][0] = _mm256_add_ps(sum[r][0], _mm256_loadu_ps(c));
          sum[r][1] = _mm256_add_ps(sum[r][1], _mm256_loadu_ps(c + 8));
        }
        _mm256_storeu_ps(c, sum[r][0]);
        _mm256_storeu_ps(c + 8, sum[r][1]);
      } else {
        if (accumulate) {
          sum[r][0] = _mm256_add_ps(sum[r][0], _mm256_maskload_ps(c, left_mask));
          sum[r][1] = _mm256_add_ps(sum[r][1], _mm256_maskload_ps(c + 8, right_mask));
        }
        _mm256_maskstore_ps(c, left_mask, sum[r][0]);
        _mm256_maskstore_ps(c + 8, right_mask, sum[r][1]);
      }
    }
  }
}

// B (k, n) copied into panels of kPanelWidth columns, each (k, kPanelWidth) row-major and 64-byte
// aligned, the last one zero-padded: a step's product then reads B in the order it is used, which
// MKL's sgemm arranges anew (packs) at every call. A loop's weight is packed once; a weight
// gradient packs its blocks of rows one after the other into the same room.
class PackedPanels {
 public:
  // room for B of up to `capacity` rows (pack() fills it)
  PackedPanels(int64_t capacity, int64_t n)
      : capacity_(capacity), n_(n), panels_(at::empty({(n + kPanelWidth - 1) / kPanelWidth * capacity * kPanelWidth},
                                                      at::TensorOptions().dtype(at::kFloat))) {}
  PackedPanels(const float* B, int64_t k, int64_t n) : PackedPanels(k, n) { pack(B, n, k); }

  // B (k, n), rows ldb apart
  void pack(const float* B, int64_t ldb, int64_t k) {
    TORCH_CHECK(k <= capacity_, "PackedPanels: ", k, " rows, room for ", capacity_);
    k_ = k;
    float* packed = panels_.data_ptr<float>();
    for (int64_t kk = 0; kk < k; ++kk) {  // B row by row, read in order
      const float* from = B + kk * ldb;
      int64_t first = 0;
      for (; first + kPanelWidth <= n_; first += kPanelWidth) {
        float* to = packed + first * k + kk * kPanelWidth;
        _mm256_store_ps(to, _mm256_loadu_ps(from + first));
        _mm256_store_ps(to + 8, _mm256_loadu_ps(from + first + 8));
      }
      if (first < n_) {
        float* to = packed + first * k + kk * kPanelWidth;
        std::memcpy(to, from + first, (n_ - first) * sizeof(float));
        std::fill(to + (n_ - first), to + kPanelWidth, 0.0f);
      }
    }
  }

  // C (m, n) = A (m, k) · B + beta C, or + bias (n) in every row, rows lda and ldc apart, in as
  // few blocks of rows as kBlockRows allows, of even sizes: a block of one or two rows keeps too
  // few multiply-adds in flight to hide their latency (m = 32: 6, 6, 5, 5, 5, 5 rather than 6 × 5 and 2)
  void operator()(float* C, int64_t ldc, const float* A, int64_t lda, int64_t m, bool accumulate,
                  const float* bias = nullptr) const {
    const float* panels = panels_.data_ptr<float>();
    const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;
    for (int64_t block = 0, row = 0; block < blocks; ++block) {
      const int64_t rows = (m - row) / (blocks - block);
      float* c = C + row * ldc;
      const float* a = A + row * lda;
      switch (rows) {
        case 6: panel_block<6>(c, ldc, a, lda, panels, k_, n_, accumulate, bias); break;
        case 5: panel_block<5>(c, ldc, a, lda, panels, k_, n_, accumulate, bias); break;
        case 4: panel_block<4>(c, ldc, a, lda, panels, k_, n_, accumulate, bias); break;
        case 3: panel_block<3>(c, ldc, a, lda, panels, k_, n_, accumulate, bias); break;
        case 2: panel_block<2>(c, ldc, a, lda, panels, k_, n_, accumulate, bias); break;
        default: panel_block<1>(c, ldc, a, lda, panels, k_, n_, accumulate, bias); break;
      }
      row += rows;
    }
  }

 private:
  const int64_t capacity_, n_;
  int64_t k_ = 0;
  at::Tensor panels_;
};
#endif

template <typename T>
class StepProduct {
 public:
  // B (k, n), contiguous; m the rows of every A and C
  StepProduct(const at::Tensor& B, int64_t m) : B_(B.data_ptr<T>()), m_(m), k_(B.size(0)), n_(B.size(1)) {
    if constexpr (std::is_same_v<T, float>) {
#ifdef RNNKIT_PANEL_PRODUCTS
      if (m * k_ * n_ < kParallelProductWork || at::get_num_threads() == 1) {
        panels_.emplace(B_, k_, n_);
        return;
      }
#endif
      if (m * k_ * n_ >= kPackedProductWork && at::globalContext().userEnabledMkldnn()) {
        auto& dispatcher = c10::Dispatcher::singleton();
        const auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
        linear_ = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
        add_linear_ = dispatcher.findSchema({"mkldnn::_linear_pointwise", "binary"});
        if (reorder && linear_ && add_linear_) {
          std::vector<c10::IValue> stack{B.t(), m};  // linear's weight is (out, in): Bᵀ
          reorder->callBoxed(stack);
          packed_ = stack[0].toTensor();
          return;
        }
      }
    }
    blas_threads_.emplace(m * k_ * n_);  // the products go to BLAS
  }

  // C = A · B + beta C (beta 0 or 1), rows lda and ldc apart
  void operator()(T* C, int64_t ldc, const T* A, int64_t lda, T beta) const {
#ifdef RNNKIT_PANEL_PRODUCTS
    if constexpr (std::is_same_v<T, float>) {
      if (panels_) {
        (*panels_)(C, ldc, A, lda, m_, beta != T(0));
        return;
      }
    }
#endif
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
  std::optional<SmallProductsOnOneThread> blas_threads_;
  std::optional<c10::OperatorHandle> linear_, add_linear_;
  at::Tensor packed_;
#ifdef RNNKIT_PANEL_PRODUCTS
  std::optional<PackedPanels> panels_;
#endif
};

}  // namespace rnnkit
