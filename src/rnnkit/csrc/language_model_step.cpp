// A language model's step for generation: token → embedding → LSTM layers → logits, one
// token at a time, in one call. Writing one character costs two matrix-vector products per
// layer and one for the head; from Python the dozen calls around them (embedding, cells,
// head, state bookkeeping) cost as much again. For a single sequence the products are done
// here as one pass over each weight row (four rows at a time, so the vector is read once per
// four rows): ATen's general product is about 1.5× slower on a (1, 512) × (512, 2048) product
// on one core. Gates in (i, f, g, o) order, as torch.lstm_cell:
//     [i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh,  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g),  h' = σ(o) ⊙ tanh(c')
#include <ATen/ATen.h>
#include <torch/library.h>
#include <cmath>

namespace {

// out[r] += W[r] · v for the rows r of W (rows, n), row-major
template <typename T>
void add_matrix_vector(T* out, const T* W, const T* v, int64_t rows, int64_t n) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T *w0 = W + r * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t j = 0; j < n; ++j) {
      s0 += w0[j] * v[j];
      s1 += w1[j] * v[j];
      s2 += w2[j] * v[j];
      s3 += w3[j] * v[j];
    }
    out[r] += s0;
    out[r + 1] += s1;
    out[r + 2] += s2;
    out[r + 3] += s3;
  }
  for (; r < rows; ++r) {
    const T* w = W + r * n;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += w[j] * v[j];
    out[r] += s;
  }
}

// One LSTM layer's step for one sequence: x (I), h and c (H) → h_new, c_new. gates (4H) and
// tanh_c (H) are scratch tensors: the activations run as ATen's vectorised kernels on them, with
// tanh(g) taken as 2σ(2g) − 1 so that one sigmoid call covers all four gates.
template <typename T>
void lstm_layer_step(const T* x, int64_t input_size, const T* h, const T* c, const at::Tensor& weight_ih,
                     const at::Tensor& weight_hh, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                     at::Tensor& gates, at::Tensor& tanh_c, T* h_new, T* c_new, int64_t hidden) {
  const T *b_ih = bias_ih.data_ptr<T>(), *b_hh = bias_hh.data_ptr<T>();
  T* z = gates.data_ptr<T>();
  for (int64_t r = 0; r < 4 * hidden; ++r) z[r] = b_ih[r] + b_hh[r];
  add_matrix_vector(z, weight_ih.data_ptr<T>(), x, 4 * hidden, input_size);
  add_matrix_vector(z, weight_hh.data_ptr<T>(), h, 4 * hidden, hidden);
  T* g = z + 2 * hidden;
  for (int64_t j = 0; j < hidden; ++j) g[j] *= 2;
  gates.sigmoid_();
  const T *i = z, *f = z + hidden, *o = z + 3 * hidden;
  T* tc = tanh_c.data_ptr<T>();
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) tc[j] = c_new[j] = f[j] * c[j] + i[j] * (2 * g[j] - 1);
  tanh_c.tanh_();
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) h_new[j] = o[j] * tc[j];
}

// tokens (B,) → (logits (B, V), h (L, B, H), c (L, B, H)) for an embedding, L LSTM layers
// (weights: W_ih, W_hh, b_ih, b_hh per layer) and a linear head.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_language_model_step(
    const at::Tensor& tokens, const at::Tensor& embedding, at::TensorList weights, const at::Tensor& h,
    const at::Tensor& c, const at::Tensor& head_weight, const at::Tensor& head_bias) {
  const int64_t layers = h.size(0), batch = h.size(1), hidden = h.size(2), vocab = embedding.size(0);
  TORCH_CHECK(tokens.dim() == 1 && tokens.size(0) == batch && tokens.scalar_type() == at::kLong,
              "tokens must be (batch,) int64 ids");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * layers, "4 weights per layer");
  TORCH_CHECK(h.dim() == 3 && c.sizes() == h.sizes(), "h and c must both be (layers, batch, hidden)");
  TORCH_CHECK(head_weight.dim() == 2 && head_weight.size(1) == hidden && head_bias.numel() == head_weight.size(0),
              "the head must be (vocab, hidden) with one bias per row");
  for (int64_t l = 0; l < layers; ++l) {  // the products below read exactly these shapes
    const int64_t input_size = l == 0 ? embedding.size(1) : hidden;
    TORCH_CHECK(weights[4 * l].sizes() == at::IntArrayRef({4 * hidden, input_size}) &&
                    weights[4 * l + 1].sizes() == at::IntArrayRef({4 * hidden, hidden}) &&
                    weights[4 * l + 2].numel() == 4 * hidden && weights[4 * l + 3].numel() == 4 * hidden,
                "layer ", l, "'s weights do not match the state's hidden size ", hidden);
  }
  const at::Tensor ids = tokens.contiguous();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t id = ids.data_ptr<int64_t>()[b];
    TORCH_CHECK(id >= 0 && id < vocab, "token ids must lie in 0..", vocab - 1, ", got ", id);
  }
  if (batch != 1) {  // a batch of sequences: ATen's products are the efficient ones
    at::Tensor h_new = at::empty_like(h, at::MemoryFormat::Contiguous), c_new = at::empty_like(h_new);
    at::Tensor x = embedding.index_select(0, ids);
    for (int64_t l = 0; l < layers; ++l) {
      auto state = at::lstm_cell(x, {h[l], c[l]}, weights[4 * l], weights[4 * l + 1], weights[4 * l + 2],
                                 weights[4 * l + 3]);
      h_new[l].copy_(std::get<0>(state));
      c_new[l].copy_(std::get<1>(state));
      x = std::get<0>(state);
    }
    return {at::addmm(head_bias, x, head_weight.t()), h_new, c_new};
  }
  for (const at::Tensor& w : weights) TORCH_CHECK(w.is_contiguous(), "weights must be contiguous");
  TORCH_CHECK(embedding.is_contiguous() && head_weight.is_contiguous(), "weights must be contiguous");
  at::Tensor h_new = at::empty({layers, 1, hidden}, h.options()), c_new = at::empty_like(h_new);
  at::Tensor logits = head_bias.unsqueeze(0).clone(), gates = at::empty({4 * hidden}, h.options());
  at::Tensor tanh_c = at::empty({hidden}, h.options());
  const at::Tensor h_old = h.contiguous(), c_old = c.contiguous();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "lstm_language_model_step", [&] {
    const scalar_t* input = embedding.data_ptr<scalar_t>() + ids.data_ptr<int64_t>()[0] * embedding.size(1);
    int64_t input_size = embedding.size(1);
    for (int64_t l = 0; l < layers; ++l) {
      scalar_t* h_out = h_new.data_ptr<scalar_t>() + l * hidden;
      lstm_layer_step(input, input_size, h_old.data_ptr<scalar_t>() + l * hidden,
                      c_old.data_ptr<scalar_t>() + l * hidden, weights[4 * l], weights[4 * l + 1],
                      weights[4 * l + 2], weights[4 * l + 3], gates, tanh_c, h_out,
                      c_new.data_ptr<scalar_t>() + l * hidden, hidden);
      input = h_out;
      input_size = hidden;
    }
    add_matrix_vector(logits.data_ptr<scalar_t>(), head_weight.data_ptr<scalar_t>(), input, head_weight.size(0),
                      hidden);
  });
  return {logits, h_new, c_new};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("lstm_language_model_step(Tensor tokens, Tensor embedding, Tensor[] weights, Tensor h, Tensor c, "
        "Tensor head_weight, Tensor head_bias) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) { m.impl("lstm_language_model_step", lstm_language_model_step); }
