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

// x (M, K) · weight (N, K)ᵀ + bias (N), float32 on the CPU, as torch.nn.functional.linear. W is packed
// once per call (a copy of its size); ATen's threads share the rows of x.
at::Tensor linear(const at::Tensor& x_given, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_given) {
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
  const rnnkit::PackedPanels panels(packed_from.data_ptr<float>(), k, n);
  at::Tensor out = at::empty({m, n}, x.options());
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("linear", linear);
}
#endif
