// A language model's step for generation: token → embedding → recurrent layers (LSTM, GRU or
// Elman) → logits, one token at a time, in one call. Writing one character costs two
// matrix-vector products per layer and one for the head; from Python the dozen calls around
// them (embedding, cells, head, state bookkeeping) cost as much again. For a single sequence the
// products are done here as one pass over each weight row (four rows at a time, so the vector is
// read once per four rows): ATen's general product is about 1.5× slower on a (1, 512) × (512, 2048)
// product on one core.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>
#include <tuple>
#include <vector>

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

// Gate blocks per cell, as torch.nn.LSTM/GRU/RNN stack them in W_ih and W_hh.
int64_t gates_of(c10::string_view cell) {
  if (cell == "lstm") return 4;
  if (cell == "gru") return 3;
  TORCH_CHECK(cell == "rnn_tanh" || cell == "rnn_relu", "unknown cell ", cell);
  return 1;
}

// One layer's step for one sequence: x (I), h (H) and, for the LSTM, c (H) → h_new (and c_new).
// gi and gh (G·H) and scratch (H) are scratch tensors; the activations run as ATen's vectorised
// kernels on them. Equations as torch.lstm_cell, torch.gru_cell and torch.rnn_*_cell:
//   LSTM  [i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh,  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g),  h' = σ(o) ⊙ tanh(c')
//         (tanh g taken as 2σ(2g) − 1, so that one sigmoid call covers all four gates)
//   GRU   r, z = σ(W_ih x + b_ih + W_hh h + b_hh) on their blocks,  n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),
//         h' = (1 − z) ⊙ n + z ⊙ h
//   Elman h' = f(W_ih x + b_ih + W_hh h + b_hh)
template <typename T>
void layer_step(c10::string_view cell, const T* x, int64_t input_size, const T* h, const T* c,
                const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias_ih,
                const at::Tensor& bias_hh, at::Tensor& gi, at::Tensor& gh, at::Tensor& scratch, T* h_new, T* c_new,
                int64_t hidden) {
  const int64_t rows = gi.numel();
  const T *b_ih = bias_ih.data_ptr<T>(), *b_hh = bias_hh.data_ptr<T>();
  T *a = gi.data_ptr<T>(), *m = gh.data_ptr<T>(), *tc = scratch.data_ptr<T>();
  if (cell == "gru") {  // the n gate needs W_hn h + b_hn apart from the input's part
    std::copy_n(b_ih, rows, a);
    std::copy_n(b_hh, rows, m);
    add_matrix_vector(a, weight_ih.data_ptr<T>(), x, rows, input_size);
    add_matrix_vector(m, weight_hh.data_ptr<T>(), h, rows, hidden);
    for (int64_t r = 0; r < 2 * hidden; ++r) a[r] += m[r];
    gi.narrow(0, 0, 2 * hidden).sigmoid_();
    const T *reset = a, *update = a + hidden;
    for (int64_t j = 0; j < hidden; ++j) tc[j] = a[2 * hidden + j] + reset[j] * m[2 * hidden + j];
    scratch.tanh_();
    for (int64_t j = 0; j < hidden; ++j) h_new[j] = (1 - update[j]) * tc[j] + update[j] * h[j];
    return;
  }
  for (int64_t r = 0; r < rows; ++r) a[r] = b_ih[r] + b_hh[r];
  add_matrix_vector(a, weight_ih.data_ptr<T>(), x, rows, input_size);
  add_matrix_vector(a, weight_hh.data_ptr<T>(), h, rows, hidden);
  if (cell != "lstm") {
    if (cell == "rnn_tanh") gi.tanh_();
    else gi.relu_();
    std::copy_n(a, hidden, h_new);
    return;
  }
  T* g = a + 2 * hidden;
  for (int64_t j = 0; j < hidden; ++j) g[j] *= 2;
  gi.sigmoid_();
  const T *i = a, *f = a + hidden, *o = a + 3 * hidden;
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) tc[j] = c_new[j] = f[j] * c[j] + i[j] * (2 * g[j] - 1);
  scratch.tanh_();
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) h_new[j] = o[j] * tc[j];
}

// tokens (B,) → (logits (B, V), new state) for an embedding, L layers of `cell` (weights: W_ih,
// W_hh, b_ih, b_hh per layer; state: [h] or, for the LSTM, [h, c], each (L, B, H)) and a
// linear head.
std::tuple<at::Tensor, std::vector<at::Tensor>> language_model_step(
    const at::Tensor& tokens, const at::Tensor& embedding, at::TensorList weights, at::TensorList state,
    const at::Tensor& head_weight, const at::Tensor& head_bias, c10::string_view cell) {
  const int64_t gates = gates_of(cell);
  const bool lstm = cell == "lstm";
  TORCH_CHECK(static_cast<int64_t>(state.size()) == (lstm ? 2 : 1), "the state must be [h, c] for an LSTM, else [h]");
  const at::Tensor& h = state[0];
  TORCH_CHECK(h.dim() == 3 && (!lstm || state[1].sizes() == h.sizes()), "the state must be (layers, batch, hidden)");
  const int64_t layers = h.size(0), batch = h.size(1), hidden = h.size(2), vocab = embedding.size(0);
  TORCH_CHECK(tokens.dim() == 1 && tokens.size(0) == batch && tokens.scalar_type() == at::kLong,
              "tokens must be (batch,) int64 ids");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * layers, "4 weights per layer");
  TORCH_CHECK(head_weight.dim() == 2 && head_weight.size(1) == hidden && head_bias.numel() == head_weight.size(0),
              "the head must be (vocab, hidden) with one bias per row");
  for (int64_t l = 0; l < layers; ++l) {  // the products below read exactly these shapes
    const int64_t input_size = l == 0 ? embedding.size(1) : hidden;
    TORCH_CHECK(weights[4 * l].sizes() == at::IntArrayRef({gates * hidden, input_size}) &&
                    weights[4 * l + 1].sizes() == at::IntArrayRef({gates * hidden, hidden}) &&
                    weights[4 * l + 2].numel() == gates * hidden && weights[4 * l + 3].numel() == gates * hidden,
                "layer ", l, "'s weights do not match the state's hidden size ", hidden);
  }
  const at::Tensor ids = tokens.contiguous();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t id = ids.data_ptr<int64_t>()[b];
    TORCH_CHECK(id >= 0 && id < vocab, "token ids must lie in 0..", vocab - 1, ", got ", id);
  }
  std::vector<at::Tensor> new_state;
  for (const at::Tensor& s : state) new_state.push_back(at::empty({layers, batch, hidden}, h.options()));
  if (batch != 1) {  // a batch of sequences: ATen's products are the efficient ones
    at::Tensor x = embedding.index_select(0, ids);
    for (int64_t l = 0; l < layers; ++l) {
      const at::Tensor &w_ih = weights[4 * l], &w_hh = weights[4 * l + 1];
      const at::Tensor &b_ih = weights[4 * l + 2], &b_hh = weights[4 * l + 3];
      if (lstm) {
        auto [h_l, c_l] = at::lstm_cell(x, {h[l], state[1][l]}, w_ih, w_hh, b_ih, b_hh);
        new_state[1][l].copy_(c_l);
        x = h_l;
      } else if (cell == "gru") {
        x = at::gru_cell(x, h[l], w_ih, w_hh, b_ih, b_hh);
      } else {
        x = cell == "rnn_tanh" ? at::rnn_tanh_cell(x, h[l], w_ih, w_hh, b_ih, b_hh)
                               : at::rnn_relu_cell(x, h[l], w_ih, w_hh, b_ih, b_hh);
      }
      new_state[0][l].copy_(x);
    }
    return {at::addmm(head_bias, x, head_weight.t()), new_state};
  }
  for (const at::Tensor& w : weights) TORCH_CHECK(w.is_contiguous(), "weights must be contiguous");
  TORCH_CHECK(embedding.is_contiguous() && head_weight.is_contiguous(), "weights must be contiguous");
  at::Tensor logits = head_bias.unsqueeze(0).clone(), gi = at::empty({gates * hidden}, h.options());
  at::Tensor gh = at::empty_like(gi), scratch = at::empty({hidden}, h.options());
  const at::Tensor h_old = h.contiguous(), c_old = lstm ? state[1].contiguous() : h_old;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "language_model_step", [&] {
    const scalar_t* input = embedding.data_ptr<scalar_t>() + ids.data_ptr<int64_t>()[0] * embedding.size(1);
    int64_t input_size = embedding.size(1);
    for (int64_t l = 0; l < layers; ++l) {
      scalar_t* h_out = new_state[0].data_ptr<scalar_t>() + l * hidden;
      layer_step(cell, input, input_size, h_old.data_ptr<scalar_t>() + l * hidden,
                 c_old.data_ptr<scalar_t>() + l * hidden, weights[4 * l], weights[4 * l + 1], weights[4 * l + 2],
                 weights[4 * l + 3], gi, gh, scratch, h_out,
                 lstm ? new_state[1].data_ptr<scalar_t>() + l * hidden : nullptr, hidden);
      input = h_out;
      input_size = hidden;
    }
    add_matrix_vector(logits.data_ptr<scalar_t>(), head_weight.data_ptr<scalar_t>(), input, head_weight.size(0),
                      hidden);
  });
  return {logits, new_state};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("language_model_step(Tensor tokens, Tensor embedding, Tensor[] weights, Tensor[] state, "
        "Tensor head_weight, Tensor head_bias, str cell) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) { m.impl("language_model_step", language_model_step); }
