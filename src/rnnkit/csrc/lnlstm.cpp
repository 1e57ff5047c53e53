// The sequential part of LayerNormLSTMSequence (rnnkit/bptt.py), compiled: the loop over time
// steps, forwards and backwards, with each step's pointwise work (layer norms, gate
// activations, cell update) done in one pass per batch row instead of a dozen tensor calls.
// The step's products are gemm.h's, its activations activations.h's.
// The equations, the buffers and their layout are those of the Python Function, which stays
// the readable statement of the algorithm and the fallback where this file cannot be built;
// the time-batched products before and after these loops are done there, in Python. LN_ih does
// not depend on the recursion, but its forward and backward run inside the loops all the same:
// in the row passes that already read and write each step's gates.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "activations.h"
#include "bptt.h"
#include "gemm.h"

namespace {

using rnnkit::check_buffers;
using rnnkit::prefetch;

// A row's sums (a layer norm's moments and its backward's) in vector registers, with GCC's vector
// extension: one register of T, 64 bytes where the build has AVX512, 32 with AVX, else 16 (vectors
// wider than the build's registers GCC keeps on the stack: on AVX2 the 64-byte sums of squares
// were added through memory at every step). GCC compiles `#pragma omp simd reduction(+ : sum)` to
// one running vector, a chain of dependent adds, whose lanes it then adds one after the other (16
// dependent scalar adds in the disassembly). Here two vectors run side by side and the lanes fold
// pairwise.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif
template <typename T, int Bytes = kVectorBytes>
struct VectorOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <typename T>
using Vec = typename VectorOf<T>::type;
template <typename T>
constexpr int64_t kLanes = kVectorBytes / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// the sum of x's lanes: halves added until one lane is left
template <typename T, int Bytes = kVectorBytes>
inline T fold(typename VectorOf<T, Bytes>::type x) {
  if constexpr (Bytes == sizeof(T)) {
    return x[0];
  } else {
    typename VectorOf<T, Bytes / 2>::type low, high;
    std::memcpy(&low, &x, Bytes / 2);
    std::memcpy(&high, reinterpret_cast<const char*>(&x) + Bytes / 2, Bytes / 2);
    return fold<T, Bytes / 2>(low + high);
  }
}

// mean and 1/sqrt(var + eps) of v[0..n), the biased variance as torch.native_layer_norm takes it
template <typename T>
inline void moments(const T* v, int64_t n, double eps, T& mean, T& rstd) {
  constexpr int64_t lanes = kLanes<T>;
  Vec<T> sum_a = {}, sum_b = {};
  int64_t j = 0;
  for (; j + 2 * lanes <= n; j += 2 * lanes) {
    sum_a += load(v + j);
    sum_b += load(v + j + lanes);
  }
  T sum = fold<T>(sum_a + sum_b);
  for (; j < n; ++j) sum += v[j];
  const T m = sum / n;
  Vec<T> squares_a = {}, squares_b = {};
  for (j = 0; j + 2 * lanes <= n; j += 2 * lanes) {
    const Vec<T> a = load(v + j) - m, b = load(v + j + lanes) - m;
    squares_a += a * a;
    squares_b += b * b;
  }
  T squares = fold<T>(squares_a + squares_b);
  for (; j < n; ++j) squares += (v[j] - m) * (v[j] - m);
  mean = m;
  rstd = T(1.0 / std::sqrt(double(squares) / n + eps));
}

// Step t: v_t = h_{t-1} W_hhᵀ for the whole batch, one product; then each batch row in one pass
// while it is in cache: both layer norms of the gates and the biases, the activations, c_t, LN_c
// and h_t.
template <typename T>
void forward_loop(const at::Tensor& us, at::Tensor& u_mean, at::Tensor& u_rstd, at::Tensor& gates, at::Tensor& vs,
                  at::Tensor& v_mean, at::Tensor& v_rstd, at::Tensor& hs, at::Tensor& cs, at::Tensor& c_mean,
                  at::Tensor& c_rstd, at::Tensor& tanh_ls, const at::Tensor& weight_hh_t,
                  const at::Tensor& ln_ih_weight, const at::Tensor& bias, const at::Tensor& ln_hh_weight,
                  const at::Tensor& ln_c_weight, const at::Tensor& ln_c_bias, const c10::optional<at::Tensor>& keep,
                  double eps) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = hs.size(2), width = 4 * hidden;
  const T *w_ih = ln_ih_weight.data_ptr<T>(), *b = bias.data_ptr<T>(), *w_hh = ln_hh_weight.data_ptr<T>();
  const T *w_c = ln_c_weight.data_ptr<T>(), *b_c = ln_c_bias.data_ptr<T>();
  const bool* kept = keep ? keep->data_ptr<bool>() : nullptr;
  const T* u0 = us.data_ptr<T>();
  T *z0 = gates.data_ptr<T>(), *v0 = vs.data_ptr<T>(), *h0 = hs.data_ptr<T>(), *c0 = cs.data_ptr<T>();
  T *tanh_l0 = tanh_ls.data_ptr<T>(), *um = u_mean.data_ptr<T>(), *ur = u_rstd.data_ptr<T>();
  T *vm = v_mean.data_ptr<T>(), *vr = v_rstd.data_ptr<T>(), *cm = c_mean.data_ptr<T>(), *cr = c_rstd.data_ptr<T>();
  const rnnkit::StepProduct<T> step_product(weight_hh_t, batch);  // v_t = h_{t-1} W_hhᵀ
  for (int64_t t = 0; t < steps; ++t) {
    step_product(v0 + t * batch * width, width, h0 + t * batch * hidden, hidden, T(0));
    for (int64_t row = t * batch; row < (t + 1) * batch; ++row) {
      if (row + 1 < steps * batch) prefetch(u0 + (row + 1) * width, width);
      const T *u = u0 + row * width, *v = v0 + row * width;
      T* z = z0 + row * width;  // LN_ih(u_t) + LN_hh(v_t) + biases, then i, f, g, o
      moments(u, width, eps, um[row], ur[row]);
      moments(v, width, eps, vm[row], vr[row]);
      const T u_m = um[row], u_r = ur[row], v_m = vm[row], v_r = vr[row];
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) z[j] = w_ih[j] * (u[j] - u_m) * u_r + b[j] + w_hh[j] * (v[j] - v_m) * v_r;
      rnnkit::sigmoid_inplace(z, 2 * hidden);
      rnnkit::tanh_inplace(z + 2 * hidden, hidden);
      rnnkit::sigmoid_inplace(z + 3 * hidden, hidden);
      const T *i = z, *f = z + hidden, *g = z + 2 * hidden, *o = z + 3 * hidden;
      const T* c_prev = c0 + row * hidden;
      T* c = c0 + (row + batch) * hidden;
      T* h = h0 + (row + batch) * hidden;
      T* tanh_l = tanh_l0 + row * hidden;
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) c[j] = f[j] * c_prev[j] + i[j] * g[j];
      moments(c, hidden, eps, cm[row], cr[row]);
      const T c_m = cm[row], c_r = cr[row];
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) tanh_l[j] = w_c[j] * (c[j] - c_m) * c_r + b_c[j];  // ℓ_t
      rnnkit::tanh_inplace(tanh_l, hidden);
      if (kept && !kept[row]) {  // padded step: the state is kept
        std::copy_n(h0 + row * hidden, hidden, h);
        std::copy_n(c_prev, hidden, c);
        continue;
      }
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) h[j] = o[j] * tanh_l[j];
    }
  }
}

// Step t = T … 1: each batch row in one pass (∂L/∂ℓ_t, κ_t, δ_t, then ∂L/∂v_t and ∂L/∂u_t through
// LN_hh and LN_ih), summing the gains' and biases' gradients as it goes; then γ_{t-1} += ∂L/∂v_t W_hh
// for the whole batch, one product. δ_t is needed only within its row.
template <typename T>
void backward_loop(const at::Tensor& us, const at::Tensor& u_mean, const at::Tensor& u_rstd, const at::Tensor& gates,
                   const at::Tensor& vs, const at::Tensor& v_mean, const at::Tensor& v_rstd, const at::Tensor& cs,
                   const at::Tensor& c_mean, const at::Tensor& c_rstd, const at::Tensor& tanh_ls,
                   const at::Tensor& weight_hh, const at::Tensor& ln_ih_weight, const at::Tensor& ln_hh_weight,
                   const at::Tensor& ln_c_weight, const c10::optional<at::Tensor>& keep, at::Tensor& Gh,
                   at::Tensor& Gc, at::Tensor& grad_u, at::Tensor& grad_v, at::Tensor& grad_ln_ih_weight,
                   at::Tensor& grad_bias, at::Tensor& grad_ln_hh_weight, at::Tensor& grad_ln_c_weight,
                   at::Tensor& grad_ln_c_bias) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = cs.size(2), width = 4 * hidden;
  // Σ δ ⊙ û, Σ δ, Σ δ ⊙ v̂, Σ ∂L/∂ℓ ⊙ ĉ and Σ ∂L/∂ℓ
  rnnkit::StepSums<T> sums(3 * width + 2 * hidden);
  T *sum_w_ih = sums.step(), *sum_bias = sum_w_ih + width, *sum_w_hh = sum_bias + width;
  T *sum_w_c = sum_w_hh + width, *sum_b_c = sum_w_c + hidden;
  std::vector<T> row_scratch(width + hidden);
  T *d = row_scratch.data(), *dl = d + width;  // δ_t and ∂L/∂ℓ_t of the row at hand
  const T *w_ih = ln_ih_weight.data_ptr<T>(), *w_hh = ln_hh_weight.data_ptr<T>(), *w_c = ln_c_weight.data_ptr<T>();
  const bool* kept = keep ? keep->data_ptr<bool>() : nullptr;
  const T *u0 = us.data_ptr<T>(), *z0 = gates.data_ptr<T>(), *v0 = vs.data_ptr<T>(), *c0 = cs.data_ptr<T>();
  const T *tanh_l0 = tanh_ls.data_ptr<T>(), *um = u_mean.data_ptr<T>(), *ur = u_rstd.data_ptr<T>();
  const T *vm = v_mean.data_ptr<T>(), *vr = v_rstd.data_ptr<T>(), *cm = c_mean.data_ptr<T>(), *cr = c_rstd.data_ptr<T>();
  T *gh0 = Gh.data_ptr<T>(), *gc0 = Gc.data_ptr<T>(), *du0 = grad_u.data_ptr<T>(), *dv0 = grad_v.data_ptr<T>();
  const rnnkit::StepProduct<T> step_product(weight_hh, batch);  // γ_{t-1} += ∂L/∂v_t W_hh
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t row = t * batch; row < (t + 1) * batch; ++row) {
      const int64_t next = row + 1 < (t + 1) * batch ? row + 1 : row + 1 - 2 * batch;  // the row after this one
      if (next >= 0) {
        for (const T* buffer : {z0, u0, v0}) prefetch(buffer + next * width, width);
        for (const T* buffer : {tanh_l0, c0 + batch * hidden, c0}) prefetch(buffer + next * hidden, hidden);
      }
      const T valid = (kept && !kept[row]) ? T(0) : T(1);
      const T* z = z0 + row * width;
      const T* o = z + 3 * hidden;
      const T* c_prev = c0 + row * hidden;
      const T* c = c0 + (row + batch) * hidden;  // c_t as it was normalised (padded: ∂L/∂ℓ_t = 0 anyway)
      const T* tanh_l = tanh_l0 + row * hidden;
      const T* gamma = gh0 + (row + batch) * hidden;  // γ_t
      T* kappa = gc0 + (row + batch) * hidden;        // κ_{t+1} ⊙ f_{t+1}, becomes κ_t
      // ∂L/∂ℓ_t, then κ_t = LN'ᵀ(w_c ⊙ ∂L/∂ℓ_t) + κ_{t+1} ⊙ f_{t+1}. Each LN'ᵀ(w ⊙ d) =
      // r ⊙ (w ⊙ d − mean(w ⊙ d) − v̂ ⊙ mean(w ⊙ d ⊙ v̂)) takes two passes: the sums in the first,
      // with the gains' and biases' gradients, and the result in the second.
      const T c_m = cm[row], c_r = cr[row];
      T dc_sum = 0, dc_hat_sum = 0;
#pragma omp simd reduction(+ : dc_sum, dc_hat_sum)
      for (int64_t j = 0; j < hidden; ++j) {
        dl[j] = gamma[j] * o[j] * valid * (T(1) - tanh_l[j] * tanh_l[j]);
        const T c_hat = (c[j] - c_m) * c_r, dc = w_c[j] * dl[j];
        sum_w_c[j] += dl[j] * c_hat;
        sum_b_c[j] += dl[j];
        dc_sum += dc;
        dc_hat_sum += dc * c_hat;
      }
      const T dc_mean = dc_sum / hidden, dc_hat_mean = dc_hat_sum / hidden;
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j)
        kappa[j] += c_r * (w_c[j] * dl[j] - dc_mean - (c[j] - c_m) * c_r * dc_hat_mean);
      rnnkit::lstm_row_backward(z, kappa, c_prev, gamma, tanh_l, valid, hidden, d, gc0 + row * hidden,
                                gh0 + row * hidden);
      const T *u = u0 + row * width, *v = v0 + row * width;
      const T u_m = um[row], u_r = ur[row], v_m = vm[row], v_r = vr[row];
      T du_sum = 0, du_hat_sum = 0, dv_sum = 0, dv_hat_sum = 0;
#pragma omp simd reduction(+ : du_sum, du_hat_sum, dv_sum, dv_hat_sum)
      for (int64_t j = 0; j < width; ++j) {
        const T u_hat = (u[j] - u_m) * u_r, v_hat = (v[j] - v_m) * v_r, du = w_ih[j] * d[j], dv = w_hh[j] * d[j];
        sum_w_ih[j] += d[j] * u_hat;
        sum_bias[j] += d[j];
        sum_w_hh[j] += d[j] * v_hat;
        du_sum += du;
        du_hat_sum += du * u_hat;
        dv_sum += dv;
        dv_hat_sum += dv * v_hat;
      }
      const T du_mean = du_sum / width, du_hat_mean = du_hat_sum / width;
      const T dv_mean = dv_sum / width, dv_hat_mean = dv_hat_sum / width;
      T *grad_u_row = du0 + row * width, *grad_v_row = dv0 + row * width;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        grad_u_row[j] = u_r * (w_ih[j] * d[j] - du_mean - (u[j] - u_m) * u_r * du_hat_mean);
        grad_v_row[j] = v_r * (w_hh[j] * d[j] - dv_mean - (v[j] - v_m) * v_r * dv_hat_mean);
      }
    }
    step_product(gh0 + t * batch * hidden, hidden, dv0 + t * batch * width, width, T(1));
    sums.end_step();
  }
  int64_t at = 0;
  for (at::Tensor* gradient : {&grad_ln_ih_weight, &grad_bias, &grad_ln_hh_weight, &grad_ln_c_weight, &grad_ln_c_bias}) {
    sums.write(at, gradient->numel(), gradient->data_ptr<T>());
    at += gradient->numel();
  }
}

// The loops read the layer-norm parameters by raw pointer: their lengths must be right. (The
// functions below make the read-only inputs contiguous: no copy when they already are.)
void check_lengths(int64_t hidden, std::initializer_list<const at::Tensor*> of_gates,
                   std::initializer_list<const at::Tensor*> of_cell) {
  for (const at::Tensor* parameter : of_gates)
    TORCH_CHECK(parameter->numel() == 4 * hidden, "LayerNorm-LSTM: the gates' gains and biases must have 4·hidden entries");
  for (const at::Tensor* parameter : of_cell)
    TORCH_CHECK(parameter->numel() == hidden, "LayerNorm-LSTM: ln_c_weight and ln_c_bias must have hidden entries");
}

void lnlstm_forward(const at::Tensor& us, at::Tensor u_mean, at::Tensor u_rstd, at::Tensor gates, at::Tensor vs,
                    at::Tensor v_mean, at::Tensor v_rstd, at::Tensor hs, at::Tensor cs, at::Tensor c_mean,
                    at::Tensor c_rstd, at::Tensor tanh_ls, const at::Tensor& weight_hh_t,
                    const at::Tensor& ln_ih_weight, const at::Tensor& bias, const at::Tensor& ln_hh_weight,
                    const at::Tensor& ln_c_weight, const at::Tensor& ln_c_bias, const c10::optional<at::Tensor>& keep,
                    double eps) {
  check_buffers("lnlstm_forward",
                {&us, &u_mean, &u_rstd, &gates, &vs, &v_mean, &v_rstd, &hs, &cs, &c_mean, &c_rstd, &tanh_ls});
  check_lengths(hs.size(2), {&ln_ih_weight, &bias, &ln_hh_weight}, {&ln_c_weight, &ln_c_bias});
  TORCH_CHECK(us.sizes() == gates.sizes(), "lnlstm_forward: us and gates must have one shape");
  const c10::optional<at::Tensor> kept = keep ? c10::optional<at::Tensor>(keep->to(at::kBool).contiguous()) : keep;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lnlstm_forward", [&] {
    forward_loop<scalar_t>(us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, hs, cs, c_mean, c_rstd, tanh_ls,
                           weight_hh_t.contiguous(), ln_ih_weight.contiguous(), bias.contiguous(),
                           ln_hh_weight.contiguous(), ln_c_weight.contiguous(), ln_c_bias.contiguous(), kept, eps);
  });
}

void lnlstm_backward(const at::Tensor& us, const at::Tensor& u_mean, const at::Tensor& u_rstd, const at::Tensor& gates,
                     const at::Tensor& vs, const at::Tensor& v_mean, const at::Tensor& v_rstd, const at::Tensor& cs,
                     const at::Tensor& c_mean, const at::Tensor& c_rstd, const at::Tensor& tanh_ls,
                     const at::Tensor& weight_hh, const at::Tensor& ln_ih_weight, const at::Tensor& ln_hh_weight,
                     const at::Tensor& ln_c_weight, const c10::optional<at::Tensor>& keep, at::Tensor Gh, at::Tensor Gc,
                     at::Tensor grad_u, at::Tensor grad_v, at::Tensor grad_ln_ih_weight, at::Tensor grad_bias,
                     at::Tensor grad_ln_hh_weight, at::Tensor grad_ln_c_weight, at::Tensor grad_ln_c_bias) {
  check_buffers("lnlstm_backward", {&us, &u_mean, &u_rstd, &gates, &vs, &v_mean, &v_rstd, &cs, &c_mean, &c_rstd,
                                    &tanh_ls, &Gh, &Gc, &grad_u, &grad_v, &grad_ln_ih_weight, &grad_bias,
                                    &grad_ln_hh_weight, &grad_ln_c_weight, &grad_ln_c_bias});
  check_lengths(cs.size(2), {&ln_ih_weight, &ln_hh_weight, &grad_ln_ih_weight, &grad_bias, &grad_ln_hh_weight},
                {&ln_c_weight, &grad_ln_c_weight, &grad_ln_c_bias});
  TORCH_CHECK(us.sizes() == gates.sizes() && grad_u.sizes() == gates.sizes() && grad_v.sizes() == gates.sizes(),
              "lnlstm_backward: us, grad_u and grad_v must have the gates' shape");
  const c10::optional<at::Tensor> kept = keep ? c10::optional<at::Tensor>(keep->to(at::kBool).contiguous()) : keep;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lnlstm_backward", [&] {
    backward_loop<scalar_t>(us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, cs, c_mean, c_rstd, tanh_ls,
                            weight_hh.contiguous(), ln_ih_weight.contiguous(), ln_hh_weight.contiguous(),
                            ln_c_weight.contiguous(), kept, Gh, Gc, grad_u, grad_v, grad_ln_ih_weight, grad_bias,
                            grad_ln_hh_weight, grad_ln_c_weight, grad_ln_c_bias);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("lnlstm_forward(Tensor us, Tensor(a!) u_mean, Tensor(b!) u_rstd, Tensor(c!) gates, Tensor(d!) vs, "
        "Tensor(e!) v_mean, Tensor(f!) v_rstd, Tensor(g!) hs, Tensor(h!) cs, Tensor(i!) c_mean, Tensor(j!) c_rstd, "
        "Tensor(k!) tanh_ls, Tensor weight_hh_t, Tensor ln_ih_weight, Tensor bias, Tensor ln_hh_weight, "
        "Tensor ln_c_weight, Tensor ln_c_bias, Tensor? keep, float eps) -> ()");
  m.def("lnlstm_backward(Tensor us, Tensor u_mean, Tensor u_rstd, Tensor gates, Tensor vs, Tensor v_mean, "
        "Tensor v_rstd, Tensor cs, Tensor c_mean, Tensor c_rstd, Tensor tanh_ls, Tensor weight_hh, "
        "Tensor ln_ih_weight, Tensor ln_hh_weight, Tensor ln_c_weight, Tensor? keep, Tensor(a!) Gh, Tensor(b!) Gc, "
        "Tensor(c!) grad_u, Tensor(d!) grad_v, Tensor(e!) grad_ln_ih_weight, Tensor(f!) grad_bias, "
        "Tensor(g!) grad_ln_hh_weight, Tensor(h!) grad_ln_c_weight, Tensor(i!) grad_ln_c_bias) -> ()");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("lnlstm_forward", lnlstm_forward);
  m.impl("lnlstm_backward", lnlstm_backward);
}
