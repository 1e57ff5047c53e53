// The whole-sequence products of hand BPTT (rnnkit/bptt.py's _project): X Wᵀ + b for every step at
// once, and Δ W for ∂L/∂X, with gemm.h's panel kernel. Only in the build that has it (AVX2 without
// AVX512); elsewhere _project takes oneDNN's or MKL's product.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "bptt.h"
#include "gemm.h"

#ifdef RNNKIT_PANEL_PRODUCTS
namespace {

// x (M, K) · weight (N, K)ᵀ + bias (N), float32 on the CPU, as torch.nn.functional.linear, into `out`
// (M, N) where given (contiguous), else a new tensor. W is packed once per call (a copy of its size);
// ATen's threads share the rows of x.
at::Tensor linear(const at::Tensor& x_given, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_given,
                  const c10::optional<at::Tensor>& out_given) {
  TORCH_CHECK(x_given.dim() == 2 && weight.dim() == 2 && x_given.size(1) == weight.size(1), "rnnkit linear: x (M, K) "
              "and weight (N, K), got ", x_given.sizes(), " and ", weight.sizes());
  const at::Tensor x = x_given.contiguous(), packed_from = weight.t().contiguous();  // (K, N)
  const at::Tensor bias = bias_given ? bias_given->contiguous() : at::Tensor();
  rnnkit::check_buffers("linear", {&x, &packed_from});
  TORCH_CHECK(x.scalar_type() == at::kFloat, "rnnkit linear: float32 only");
  TORCH_CHECK(!bias.defined() || (bias.scalar_type() == at::kFloat && bias.device().is_cpu()),
              "rnnkit linear: the bias must be float32 on the CPU");
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(!bias.defined() || bias.numel() == n, "rnnkit linear: the bias needs ", n, " values");
  at::Tensor out = out_given ? *out_given : at::empty({m, n}, x.options());
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.device().is_cpu() && out.is_contiguous() &&
                  out.dim() == 2 && out.size(0) == m && out.size(1) == n,
              "rnnkit linear: out must be a contiguous float32 (", m, ", ", n, ") tensor on the CPU, got ", out.sizes());
  const rnnkit::PackedPanels panels(packed_from.data_ptr<float>(), k, n);
  const float* a = x.data_ptr<float>();
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* c = out.data_ptr<float>();
  // a thread takes whole tasks of 96 rows, and at least 2^23 multiply-adds (~100 µs) of them: waking
  // a sleeping thread costs about as much (OpenMP's passive waiting, which the rnnkit command sets)
  constexpr int64_t kTaskRows = 16 * rnnkit::kBlockRows;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 23) / std::max<int64_t>(1, kTaskRows * k * n));
  at::parallel_for(0, (m + kTaskRows - 1) / kTaskRows, grain, [&](int64_t first, int64_t last) {
    const int64_t row = first * kTaskRows;
    panels(c + row * n, n, a + row * k, k, std::min(m, last * kTaskRows) - row, false, b);
  });
  return out;
}

// to (n, ldt) = fromᵀ for from (k, n), rows ldf apart: tiles of 8 × 8 transposed in registers (a plain
// loop reads or writes one element per row, rows 1 KB apart at the bench's shapes, which share a
// handful of the L1 cache's sets), the edges element by element
void transpose(float* to, int64_t ldt, const float* from, int64_t ldf, int64_t k, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      __m256 r[8], t[8];
      for (int q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(from + (i + q) * ldf + j);
      for (int q = 0; q < 8; q += 2) {
        t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
        t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
      }
      for (int q = 0; q < 8; q += 4) {
        r[q] = _mm256_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int q = 0; q < 4; ++q) {
        _mm256_storeu_ps(to + (j + q) * ldt + i, _mm256_permute2f128_ps(r[q], r[q + 4], 0x20));
        _mm256_storeu_ps(to + (j + q + 4) * ldt + i, _mm256_permute2f128_ps(r[q], r[q + 4], 0x31));
      }
    }
    for (; j < n; ++j)
      for (int q = 0; q < 8; ++q) to[j * ldt + i + q] = from[(i + q) * ldf + j];
  }
  for (; i < k; ++i)
    for (int64_t j = 0; j < n; ++j) to[j * ldt + i] = from[i * ldf + j];
}

// deltaᵀ · x for delta (K, M) and x (K, N): a weight gradient, summed over the K rows of every step,
// float32 on the CPU. Computed as its transpose, xᵀ · delta, kGradientBlock rows at a time: each
// block of delta packed into panels (read row by row, in order), each block of x transposed, the
// panel kernel accumulating. ATen's threads share delta's columns, each packing its own panels.
at::Tensor weight_gradient(const at::Tensor& delta_given, const at::Tensor& x_given) {
  TORCH_CHECK(delta_given.dim() == 2 && x_given.dim() == 2 && delta_given.size(0) == x_given.size(0),
              "rnnkit weight_gradient: delta (K, M) and x (K, N), got ", delta_given.sizes(), " and ", x_given.sizes());
  const at::Tensor delta = delta_given.contiguous(), x = x_given.contiguous();
  rnnkit::check_buffers("weight_gradient", {&delta, &x});
  TORCH_CHECK(x.scalar_type() == at::kFloat, "rnnkit weight_gradient: float32 only");
  const int64_t rows = delta.size(0), m = delta.size(1), n = x.size(1);
  at::Tensor gradient_t = at::empty({n, m}, x.options());  // (N, M), the first block sets it
  if (rows == 0) return gradient_t.zero_().t().contiguous();
  constexpr int64_t kGradientBlock = 256;
  const float* d = delta.data_ptr<float>();
  const float* a = x.data_ptr<float>();
  float* c = gradient_t.data_ptr<float>();
  // a thread takes whole panels, and at least 2^23 multiply-adds (~100 µs) of them (as linear's tasks)
  const int64_t panel_count = (m + rnnkit::kPanelWidth - 1) / rnnkit::kPanelWidth;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 23) / std::max<int64_t>(1, rows * rnnkit::kPanelWidth * n));
  at::parallel_for(0, panel_count, grain, [&](int64_t begin, int64_t end) {
    const int64_t column = begin * rnnkit::kPanelWidth, width = std::min(m, end * rnnkit::kPanelWidth) - column;
    std::vector<float> x_block_t(n * kGradientBlock);  // (n, kGradientBlock)
    rnnkit::PackedPanels panels(kGradientBlock, width);
    for (int64_t first = 0; first < rows; first += kGradientBlock) {
      const int64_t k = std::min(kGradientBlock, rows - first);
      transpose(x_block_t.data(), kGradientBlock, a + first * n, n, k, n);
      panels.pack(d + first * m + column, m, k);
      panels(c + column, m, x_block_t.data(), kGradientBlock, n, first > 0);
    }
  });
  return gradient_t.t().contiguous();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias, Tensor(a!)? out=None) -> Tensor");
  m.def("weight_gradient(Tensor delta, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("linear", linear);
  m.impl("weight_gradient", weight_gradient);
}
#endif
