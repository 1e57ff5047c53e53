// The sequential part of LayerNormLSTMSequence (rnnkit/bptt.py), compiled: the loop over time
// steps, forwards and backwards, with each step's pointwise work (layer norms, gate
// activations, cell update) done in one pass per batch row instead of a dozen tensor calls.
// The step's products are gemm.h's, its activations activations.h's.
// The equations, the buffers and their layout are those of the Python Function, which stays
// the readable statement of the algorithm and the fallback where this file cannot be built;
// the time-batched products before and after these loops are done there, in Python. LN_ih's
// forward runs inside the forward loop, in the pass that adds the gates up; its backward, outside
// the recursion, runs over all steps at once (lnlstm_input_norm_backward).
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "activations.h"
#include "bptt.h"
#include "gemm.h"

namespace {

using rnnkit::check_buffers;
using rnnkit::product;

// mean and 1/sqrt(var + eps) of v[0..n), the biased variance as torch.native_layer_norm takes it
template <typename T>
inline void moments(const T* v, int64_t n, double eps, T& mean, T& rstd) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += v[j];
  const T m = sum / n;
  T squares = 0;
#pragma omp simd reduction(+ : squares)
  for (int64_t j = 0; j < n; ++j) squares += (v[j] - m) * (v[j] - m);
  mean = m;
  rstd = T(1.0 / std::sqrt(double(squares) / n + eps));
}

// In place: d ← rstd ⊙ (d − mean d − v̂ ⊙ mean(d ⊙ v̂)), with v̂ = (v − mean) · rstd and d
// already multiplied by the LN gain: the gradient through v ↦ v̂ (LN'ᵀ in bptt.py).
template <typename T>
inline void normalise_backward(T* d, const T* v, int64_t n, T mean, T rstd) {
  T sum_d = 0, sum_dv = 0;
#pragma omp simd reduction(+ : sum_d, sum_dv)
  for (int64_t j = 0; j < n; ++j) {
    sum_d += d[j];
    sum_dv += d[j] * (v[j] - mean) * rstd;
  }
  const T mean_d = sum_d / n, mean_dv = sum_dv / n;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) d[j] = rstd * (d[j] - mean_d - (v[j] - mean) * rstd * mean_dv);
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
  const T* w = weight_hh_t.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    product(v0 + t * batch * width, width, h0 + t * batch * hidden, hidden, w, width, batch, width, hidden, T(0));
    for (int64_t row = t * batch; row < (t + 1) * batch; ++row) {
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

template <typename T>
void backward_loop(const at::Tensor& gates, const at::Tensor& vs, const at::Tensor& v_mean,
                   const at::Tensor& v_rstd, const at::Tensor& cs, const at::Tensor& c_mean,
                   const at::Tensor& c_rstd, const at::Tensor& tanh_ls, const at::Tensor& weight_hh,
                   const at::Tensor& ln_hh_weight, const at::Tensor& ln_c_weight,
                   const c10::optional<at::Tensor>& keep, at::Tensor& Gh, at::Tensor& Gc, at::Tensor& delta,
                   at::Tensor& grad_v, at::Tensor& grad_l, at::Tensor& grad_ln_hh_weight,
                   at::Tensor& grad_ln_c_weight, at::Tensor& grad_ln_c_bias) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = cs.size(2), width = 4 * hidden;
  // Σ_t δ_t ⊙ v̂_t, Σ_t ∂L/∂ℓ_t ⊙ ĉ_t and Σ_t ∂L/∂ℓ_t, summed in double while each row is at hand
  std::vector<double> sum_w_hh(width, 0.0), sum_w_c(hidden, 0.0), sum_b_c(hidden, 0.0);
  const T* w_hh = ln_hh_weight.data_ptr<T>();
  const T* w_c = ln_c_weight.data_ptr<T>();
  const bool* kept = keep ? keep->data_ptr<bool>() : nullptr;
  const T *z0 = gates.data_ptr<T>(), *v0 = vs.data_ptr<T>(), *c0 = cs.data_ptr<T>(), *tanh_l0 = tanh_ls.data_ptr<T>();
  const T *vm = v_mean.data_ptr<T>(), *vr = v_rstd.data_ptr<T>(), *cm = c_mean.data_ptr<T>(), *cr = c_rstd.data_ptr<T>();
  T *gh0 = Gh.data_ptr<T>(), *gc0 = Gc.data_ptr<T>(), *d0 = delta.data_ptr<T>(), *dv0 = grad_v.data_ptr<T>();
  T* dl0 = grad_l.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t row = t * batch; row < (t + 1) * batch; ++row) {
      const T valid = (kept && !kept[row]) ? T(0) : T(1);
      const T* z = z0 + row * width;
      const T* o = z + 3 * hidden;
      const T* c_prev = c0 + row * hidden;
      const T* c = c0 + (row + batch) * hidden;  // c_t as it was normalised (padded: ∂L/∂ℓ_t = 0 anyway)
      const T* tanh_l = tanh_l0 + row * hidden;
      const T* gamma = gh0 + (row + batch) * hidden;  // γ_t
      T* kappa = gc0 + (row + batch) * hidden;        // κ_{t+1} ⊙ f_{t+1}, becomes κ_t
      T* gh_prev = gh0 + row * hidden;
      T* gc_prev = gc0 + row * hidden;
      T* dl = dl0 + row * hidden;
      T* d = d0 + row * width;
      T* dv = dv0 + row * width;  // ∂L/∂v_t; its first H entries serve as scratch first
      // ∂L/∂ℓ_t, then κ_t = LN'ᵀ(w_c ⊙ ∂L/∂ℓ_t) + κ_{t+1} ⊙ f_{t+1}
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) {
        dl[j] = gamma[j] * o[j] * valid * (T(1) - tanh_l[j] * tanh_l[j]);
        dv[j] = w_c[j] * dl[j];
      }
      for (int64_t j = 0; j < hidden; ++j) {
        sum_w_c[j] += dl[j] * (c[j] - cm[row]) * cr[row];
        sum_b_c[j] += dl[j];
      }
      normalise_backward(dv, c, hidden, cm[row], cr[row]);
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) kappa[j] += dv[j];
      rnnkit::lstm_row_backward(z, kappa, c_prev, gamma, tanh_l, valid, hidden, d, gc_prev, gh_prev);
      const T* v = v0 + row * width;
      for (int64_t j = 0; j < width; ++j) {
        sum_w_hh[j] += d[j] * (v[j] - vm[row]) * vr[row];
        dv[j] = w_hh[j] * d[j];
      }
      normalise_backward(dv, v, width, vm[row], vr[row]);
    }
    product(gh0 + t * batch * hidden, hidden, dv0 + t * batch * width, width, weight_hh.data_ptr<T>(), hidden, batch,
            hidden, width, T(1));
  }
  std::copy(sum_w_hh.begin(), sum_w_hh.end(), grad_ln_hh_weight.data_ptr<T>());
  std::copy(sum_w_c.begin(), sum_w_c.end(), grad_ln_c_weight.data_ptr<T>());
  std::copy(sum_b_c.begin(), sum_b_c.end(), grad_ln_c_bias.data_ptr<T>());
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
  const rnnkit::StepProducts step_products(gates.size(1) * 4 * hs.size(2) * hs.size(2));
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lnlstm_forward", [&] {
    forward_loop<scalar_t>(us, u_mean, u_rstd, gates, vs, v_mean, v_rstd, hs, cs, c_mean, c_rstd, tanh_ls,
                           weight_hh_t.contiguous(), ln_ih_weight.contiguous(), bias.contiguous(),
                           ln_hh_weight.contiguous(), ln_c_weight.contiguous(), ln_c_bias.contiguous(), kept, eps);
  });
}

void lnlstm_backward(const at::Tensor& gates, const at::Tensor& vs, const at::Tensor& v_mean,
                     const at::Tensor& v_rstd, const at::Tensor& cs, const at::Tensor& c_mean,
                     const at::Tensor& c_rstd, const at::Tensor& tanh_ls, const at::Tensor& weight_hh,
                     const at::Tensor& ln_hh_weight, const at::Tensor& ln_c_weight,
                     const c10::optional<at::Tensor>& keep, at::Tensor Gh, at::Tensor Gc, at::Tensor delta,
                     at::Tensor grad_v, at::Tensor grad_l, at::Tensor grad_ln_hh_weight, at::Tensor grad_ln_c_weight,
                     at::Tensor grad_ln_c_bias) {
  check_buffers("lnlstm_backward", {&gates, &vs, &v_mean, &v_rstd, &cs, &c_mean, &c_rstd, &tanh_ls, &Gh, &Gc,
                                    &delta, &grad_v, &grad_l, &grad_ln_hh_weight, &grad_ln_c_weight,
                                    &grad_ln_c_bias});
  check_lengths(cs.size(2), {&ln_hh_weight}, {&ln_c_weight});
  const c10::optional<at::Tensor> kept = keep ? c10::optional<at::Tensor>(keep->to(at::kBool).contiguous()) : keep;
  const rnnkit::StepProducts step_products(gates.size(1) * 4 * cs.size(2) * cs.size(2));
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lnlstm_backward", [&] {
    backward_loop<scalar_t>(gates, vs, v_mean, v_rstd, cs, c_mean, c_rstd, tanh_ls, weight_hh.contiguous(),
                            ln_hh_weight.contiguous(), ln_c_weight.contiguous(), kept, Gh, Gc, delta, grad_v, grad_l,
                            grad_ln_hh_weight, grad_ln_c_weight, grad_ln_c_bias);
  });
}

// The layer norm of the inputs' projections, LN_ih(u) = w ⊙ û + b over each row of us (N, F), is
// outside the recursion: its backward runs once over all T·B rows. From δ = ∂L/∂LN_ih(u) it writes
// ∂L/∂u into grad_u, and Σ_rows δ ⊙ û and Σ_rows δ into grad_weight and grad_bias (the sums in T
// over blocks of rows, then in double). ATen's native_layer_norm_backward does the same into new
// tensors (its out= variant computes into new ones and copies): a 52 MB buffer fresh from the
// kernel every step at the bench's large shape.
template <typename T>
void input_norm_backward_rows(const T* delta, const T* us, const T* mean, const T* rstd, const T* weight,
                              int64_t rows, int64_t width, T* grad_u, T* grad_weight, T* grad_bias) {
  constexpr int64_t kBlock = 256;
  std::vector<double> sum_weight(width, 0.0), sum_bias(width, 0.0);
  std::vector<T> block_weight(width), block_bias(width);
  for (int64_t first = 0; first < rows; first += kBlock) {
    std::fill(block_weight.begin(), block_weight.end(), T(0));
    std::fill(block_bias.begin(), block_bias.end(), T(0));
    T *row_weight = block_weight.data(), *row_bias = block_bias.data();
    for (int64_t row = first; row < std::min(first + kBlock, rows); ++row) {
      const T *d = delta + row * width, *u = us + row * width;
      const T m = mean[row], r = rstd[row];
      T* g = grad_u + row * width;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        row_weight[j] += d[j] * (u[j] - m) * r;
        row_bias[j] += d[j];
        g[j] = weight[j] * d[j];
      }
      normalise_backward(g, u, width, m, r);
    }
    for (int64_t j = 0; j < width; ++j) {
      sum_weight[j] += block_weight[j];
      sum_bias[j] += block_bias[j];
    }
  }
  std::copy(sum_weight.begin(), sum_weight.end(), grad_weight);
  std::copy(sum_bias.begin(), sum_bias.end(), grad_bias);
}

void lnlstm_input_norm_backward(const at::Tensor& delta, const at::Tensor& us, const at::Tensor& mean,
                                const at::Tensor& rstd, const at::Tensor& weight_given, at::Tensor grad_u,
                                at::Tensor grad_weight, at::Tensor grad_bias) {
  const at::Tensor weight = weight_given.contiguous();  // a parameter: no copy unless it is a view
  check_buffers("lnlstm_input_norm_backward", {&delta, &us, &mean, &rstd, &weight, &grad_u, &grad_weight, &grad_bias});
  const int64_t width = us.size(-1), rows = us.numel() / width;
  TORCH_CHECK(delta.numel() == us.numel() && grad_u.numel() == us.numel() && mean.numel() == rows &&
                  rstd.numel() == rows && weight.numel() == width && grad_weight.numel() == width &&
                  grad_bias.numel() == width,
              "lnlstm_input_norm_backward: mismatched sizes");
  AT_DISPATCH_FLOATING_TYPES(us.scalar_type(), "lnlstm_input_norm_backward", [&] {
    input_norm_backward_rows<scalar_t>(delta.data_ptr<scalar_t>(), us.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                                       rstd.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), rows, width,
                                       grad_u.data_ptr<scalar_t>(), grad_weight.data_ptr<scalar_t>(),
                                       grad_bias.data_ptr<scalar_t>());
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("lnlstm_forward(Tensor us, Tensor(a!) u_mean, Tensor(b!) u_rstd, Tensor(c!) gates, Tensor(d!) vs, "
        "Tensor(e!) v_mean, Tensor(f!) v_rstd, Tensor(g!) hs, Tensor(h!) cs, Tensor(i!) c_mean, Tensor(j!) c_rstd, "
        "Tensor(k!) tanh_ls, Tensor weight_hh_t, Tensor ln_ih_weight, Tensor bias, Tensor ln_hh_weight, "
        "Tensor ln_c_weight, Tensor ln_c_bias, Tensor? keep, float eps) -> ()");
  m.def("lnlstm_backward(Tensor gates, Tensor vs, Tensor v_mean, Tensor v_rstd, Tensor cs, Tensor c_mean, "
        "Tensor c_rstd, Tensor tanh_ls, Tensor weight_hh, Tensor ln_hh_weight, Tensor ln_c_weight, Tensor? keep, "
        "Tensor(a!) Gh, Tensor(b!) Gc, Tensor(c!) delta, Tensor(d!) grad_v, Tensor(e!) grad_l, "
        "Tensor(f!) grad_ln_hh_weight, Tensor(g!) grad_ln_c_weight, Tensor(h!) grad_ln_c_bias) -> ()");
  m.def("lnlstm_input_norm_backward(Tensor delta, Tensor us, Tensor mean, Tensor rstd, Tensor weight, "
        "Tensor(a!) grad_u, Tensor(b!) grad_weight, Tensor(c!) grad_bias) -> ()");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("lnlstm_forward", lnlstm_forward);
  m.impl("lnlstm_backward", lnlstm_backward);
  m.impl("lnlstm_input_norm_backward", lnlstm_input_norm_backward);
}
