// Generation with a language model: token → layer 0's input gates → recurrent layers (LSTM, GRU or
// Elman) → logits → the next token, in compiled code.
//
// - language_model_step: one step for a batch of tokens, in one call (SequenceModel.stepper).
// - language_model_write: `length` steps, each drawing its token from the previous step's logits
//   (softmax with temperature, top-k, top-p, by the exponential race over noise drawn by the
//   caller), in one call (SequenceModel.writer). From Python, the dozen calls around the products
//   of a step and the sampling cost as much as the products themselves.
//
// Layer 0 reads its input gates W_ih x + b from a table with one row per token (`input_table`,
// made once per stepper), so the step never multiplies by W_ih there. For one sequence the products
// are done here as one pass over each weight row (four rows at a time, so the vector is read once
// per four rows): ATen's general product is about 1.5× slower on a (1, 512) × (512, 2048) product
// on one core. Batches use ATen's products.
//
// The weight matrices may come in float16 (SequenceModel.writer's half_weights), the state and
// the arithmetic staying float32: one sequence's step reads every weight once, so halving the
// bytes read is what makes it faster (1.45-1.6× on W_hh's product at 512 LSTM units).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <optional>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#endif

#include "activations.h"
#include "bptt.h"

namespace {

using rnnkit::prefetch;
using rnnkit::sigmoid_inplace;
using rnnkit::tanh_inplace;

// A spinning thread's pause between two looks at what it waits for
inline void relax() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

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

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
inline __m256 load_eight(const float* w) { return _mm256_loadu_ps(w); }
inline __m256 load_eight(const at::Half* w) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))); }

// out[q] += W[q] · v for Rows rows of length n (a multiple of 8), float32 or float16 weights (F16C
// converts these as they are read): one sum of eight lanes per row, so a row's sum is the same
// whichever block it is in
template <int Rows, typename Weight>
void add_rows(float* out, const Weight* W, const float* v, int64_t n) {
  __m256 sums[Rows];
  for (__m256& s : sums) s = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256 x = _mm256_loadu_ps(v + j);
    for (int q = 0; q < Rows; ++q) sums[q] = _mm256_fmadd_ps(load_eight(W + q * n + j), x, sums[q]);
  }
  for (int q = 0; q < Rows; ++q) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(sums[q]), _mm256_extractf128_ps(sums[q], 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    out[q] += _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
}

// add_matrix_vector for float32 state, eight rows at a time (eight sums in flight hide the
// multiply-adds' latency) and the rest one at a time; false, doing nothing, where n is not a
// multiple of 8. On the AVX2 EPYC one core read a 2 MB float32 matrix so at 65 GB/s, against 55 GB/s
// for the generic loop's four rows at a time (its one sum per row waits on the multiply-adds).
template <typename Weight>
bool add_matrix_vector_by_eights(float* out, const Weight* W, const float* v, int64_t rows, int64_t n) {
  if (n % 8 != 0) return false;
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) add_rows<8>(out + r, W + r * n, v, n);
  for (; r < rows; ++r) add_rows<1>(out + r, W + r * n, v, n);
  return true;
}
#endif

void add_matrix_vector(float* out, const float* W, const float* v, int64_t rows, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  if (add_matrix_vector_by_eights(out, W, v, rows, n)) return;
#endif
  add_matrix_vector<float>(out, W, v, rows, n);
}

// The same for float16 weights, converted as they are read: by eights with F16C, else one element
// at a time
void add_matrix_vector(float* out, const at::Half* W, const float* v, int64_t rows, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  if (add_matrix_vector_by_eights(out, W, v, rows, n)) return;
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const at::Half* w = W + r * n;
    float s = 0;
    for (int64_t j = 0; j < n; ++j) s += static_cast<float>(w[j]) * v[j];
    out[r] += s;
  }
}

// A second thread that takes a share of the rows of each large product of a single sequence's steps,
// for one call of the writing loop. At 512 LSTM units the W_hh product reads 4 MB a step, which
// one core streams from the shared cache at ~60 GB/s: two cores halve that time. The threads wait
// by spinning, because a product takes tens of µs and a sleeping thread takes as long to wake
// (OpenMP's passive waiting, which the rnnkit command sets, makes torch's own threads useless at
// this grain). Where the helper keeps falling behind (the machine's other core is busy), the caller
// does every product alone for the rest of the call, and no helper is started for a pause after:
// 20 ms, doubling up to 1 s while the helper keeps being switched off. A virtual machine's core
// stalls for a few ms at times, a few products in a row; that passes, a busy core does not.
//
// The two threads do not finish a half each at the same time: the helper starts later, and on a
// shared machine one core is often slower for a while. So the split is not fixed at half: after
// every product, the caller's share of that matrix's rows moves a quarter of the way toward the
// share at which both would have finished together, by the rows per second each thread just did.
// At 512 LSTM units the caller's share settled at 0.51-0.62 of W_hh's rows and of the head's.
class Helper {
 public:
  Helper() : thread_([this] { serve(); }) {}
  ~Helper() {
    stop_.store(true, std::memory_order_release);
    thread_.join();
  }
  bool active() const { return active_; }
  static bool worth_starting() { return Clock::now() - last_lag_.load() > pause_.load(); }

  // Starts out[r] += W[r] · v for r < rows (add_matrix_vector): the helper takes the last rows
  // now, the caller the first ones in finish(), which must come before the next post.
  template <typename T, typename Weight>
  void post(T* out, const Weight* W, const T* v, int64_t rows, int64_t n) {
    share_ = &share_of(W);
    const int64_t split = active_ ? std::clamp<int64_t>(std::lround(*share_ * rows / 8) * 8, 0, rows) : rows;
    mine_ = {&run<T, Weight>, out, W, v, split, n};
    rows_ = rows;
    posted_at_ = Clock::now();
    if (split < rows) {
      job_ = {&run<T, Weight>, out + split, W + split * n, v, rows - split, n};
      posted_.store(posted_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
  }

  // The caller's rows of the posted product, then the wait for the helper's
  void finish() {
    const auto start = Clock::now();
    mine_.run(mine_);
    const auto end = Clock::now();
    const int64_t split = mine_.rows, number = posted_.load(std::memory_order_relaxed);
    if (split == rows_) return;  // the helper had no part
    for (int64_t spins = 0; finished_.load(std::memory_order_acquire) != number; ++spins) {
      relax();
      if (spins % 1024 == 1023 && lagged_at_ != number && Clock::now() - end > kLagLimit) {
        if (number - lagged_at_ < kLagsApart) {  // not a hiccup: the helper's core is shared
          active_ = false;  // and the helper stops spinning once this product is done
          stop_.store(true, std::memory_order_release);
          const auto now = Clock::now();
          const Clock::duration pause = pause_.load();  // doubled where the last one ended a second ago or less
          pause_.store(now - last_lag_.load() < pause + kLongestPause ? std::min(2 * pause, Clock::duration(kLongestPause))
                                                                      : Clock::duration(kFirstPause));
          last_lag_.store(now);
        }
        lagged_at_ = number;
      }
    }
    // Each thread's time for the whole matrix at the rate it just did its rows, the helper's from
    // the post to its finish; the caller started its rows `delay` after the post.
    const auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
    const double delay = seconds(start - posted_at_), caller_time = seconds(end - start);
    const double helper_time = seconds(job_.finished - posted_at_);
    if (split > 0 && caller_time > 0 && helper_time > 0) {
      const double caller_whole = caller_time * rows_ / split, helper_whole = helper_time * rows_ / (rows_ - split);
      const double even = (helper_whole - delay) / (caller_whole + helper_whole);  // both would end together
      *share_ = std::clamp(*share_ + (even - *share_) / 4, kLeastShare, 1 - kLeastShare);
    }
  }

  template <typename T, typename Weight>
  void split_rows(T* out, const Weight* W, const T* v, int64_t rows, int64_t n) {
    post(out, W, v, rows, n);
    finish();
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Job {
    void (*run)(const Job&);
    void* out;
    const void* W;
    const void* v;
    int64_t rows, n;
    Clock::time_point finished;  // set by the helper
  };
  // The caller's share of the rows of the product by W, the same for every W at first
  double& share_of(const void* W) {
    for (auto& [matrix, share] : shares_)
      if (matrix == W) return share;
    return shares_.emplace_back(W, 0.5).second;
  }
  template <typename T, typename Weight>
  static void run(const Job& job) {
    add_matrix_vector(static_cast<T*>(job.out), static_cast<const Weight*>(job.W), static_cast<const T*>(job.v),
                      job.rows, job.n);
  }
  // A product the helper has not finished 2 ms after the caller finished its half is late. With
  // a busy loop on the other core the helper waited 4–8 ms for its turn, every few products; on
  // the idle (virtual) machine waits over 0.5 ms came every few hundred products, rarely over 1 ms.
  static constexpr std::chrono::microseconds kLagLimit{2000};
  static constexpr int64_t kLagsApart = 100;
  static constexpr std::chrono::milliseconds kFirstPause{20}, kLongestPause{1000};
  static constexpr double kLeastShare = 0.125;  // of the rows, for either thread
  static inline std::atomic<Clock::time_point> last_lag_{};  // when a helper was last switched off
  static inline std::atomic<Clock::duration> pause_{kFirstPause};

  void serve() {
    int64_t done = 0;
    while (true) {
      const bool stopping = stop_.load(std::memory_order_acquire);
      // read after stop_: a product posted before the stop is seen, and done, before returning
      const int64_t number = posted_.load(std::memory_order_acquire);
      if (number == done) {
        if (stopping) return;
        relax();
        continue;
      }
      job_.run(job_);
      job_.finished = Clock::now();
      finished_.store(done = number, std::memory_order_release);
    }
  }

  Job job_{};   // the helper's rows of the posted product
  Job mine_{};  // the caller's
  int64_t rows_ = 0;
  Clock::time_point posted_at_;
  double* share_ = nullptr;  // the posted matrix's
  std::vector<std::pair<const void*, double>> shares_;
  std::atomic<int64_t> posted_{0}, finished_{0};
  std::atomic<bool> stop_{false};
  bool active_ = true;
  int64_t lagged_at_ = -kLagsApart;  // the last late product
  std::thread thread_;  // last: it starts once the members above exist
};

// The helper pays from this many multiply-adds a product (a 128 × 256 matrix) on.
constexpr int64_t kHelperWork = 1 << 15;

// use(W's data): as float16 where a float32 loop was given float16 weight matrices, else as T
template <typename T, typename Use>
void with_matrix(const at::Tensor& W, Use&& use) {
  if constexpr (std::is_same_v<T, float>) {
    if (W.scalar_type() == at::kHalf) return use(W.data_ptr<at::Half>());
  }
  use(W.data_ptr<T>());
}

// out (batch, rows) += x (batch, n) · Wᵀ, W (rows, n), all row-major: one pass over W for a single
// row (shared with the helper, if any, where the product is large), ATen's product for a batch of
// T weights, a pass per row for float16 ones
template <typename T>
void add_product(T* out, const T* x, const at::Tensor& W, int64_t batch, Helper* helper) {
  const int64_t rows = W.size(0), n = W.size(1);
  if (batch == 1) {
    return with_matrix<T>(W, [&](const auto* weights) {
      if (helper != nullptr && helper->active() && rows * n >= kHelperWork) {
        helper->split_rows(out, weights, x, rows, n);
      } else {
        add_matrix_vector(out, weights, x, rows, n);
      }
    });
  }
  if constexpr (std::is_same_v<T, float>) {
    if (W.scalar_type() == at::kHalf) {
      for (int64_t b = 0; b < batch; ++b) add_matrix_vector(out + b * rows, W.data_ptr<at::Half>(), x + b * n, rows, n);
      return;
    }
  }
  at::from_blob(out, {batch, rows}, W.options()).addmm_(at::from_blob(const_cast<T*>(x), {batch, n}, W.options()), W.t());
}

// A language model's weights, checked once per call. Per layer l, weights[4l..4l+3] are W_ih,
// W_hh, b_ih, b_hh as torch.nn.LSTM/GRU/RNN stack their gate blocks; layer 0's W_ih and b_ih are
// already in input_table (vocab, gates·hidden), and so is b_hh except for the GRU, whose n gate
// needs W_hn h + b_hn apart from the input's part.
struct LanguageModel {
  c10::string_view cell;
  bool lstm, gru;
  int64_t gates, layers, batch, hidden, vocab;
  at::Tensor input_table, head_weight, head_bias;
  std::vector<at::Tensor> weights;
};

int64_t gates_of(c10::string_view cell) {
  if (cell == "lstm") return 4;
  if (cell == "gru") return 3;
  TORCH_CHECK(cell == "rnn_tanh" || cell == "rnn_relu", "unknown cell ", cell);
  return 1;
}

LanguageModel check_model(const at::Tensor& input_table, at::TensorList weights, at::TensorList state,
                          const at::Tensor& head_weight, const at::Tensor& head_bias, c10::string_view cell) {
  LanguageModel m{cell, cell == "lstm", cell == "gru", gates_of(cell)};
  TORCH_CHECK(static_cast<int64_t>(state.size()) == (m.lstm ? 2 : 1), "the state must be [h, c] for an LSTM, else [h]");
  const at::Tensor& h = state[0];
  TORCH_CHECK(h.dim() == 3 && (!m.lstm || state[1].sizes() == h.sizes()), "the state must be (layers, batch, hidden)");
  m.layers = h.size(0), m.batch = h.size(1), m.hidden = h.size(2), m.vocab = input_table.size(0);
  const int64_t rows = m.gates * m.hidden;
  TORCH_CHECK(input_table.dim() == 2 && input_table.size(1) == rows,
              "the input table must be (vocab, gates × hidden) for the state's hidden size ", m.hidden);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * m.layers, "4 weights per layer");
  TORCH_CHECK(head_weight.dim() == 2 && head_weight.size(1) == m.hidden && head_bias.numel() == head_weight.size(0),
              "the head must be (vocab, hidden) with one bias per row");
  const auto state_type = h.scalar_type();
  const auto matrix_type_ok = [&](const at::Tensor& w) {
    return w.scalar_type() == state_type || (w.scalar_type() == at::kHalf && state_type == at::kFloat);
  };
  for (int64_t l = 0; l < m.layers; ++l) {  // the products below read exactly these shapes and types
    TORCH_CHECK((l == 0 || weights[4 * l].sizes() == at::IntArrayRef({rows, m.hidden})) &&
                    weights[4 * l + 1].sizes() == at::IntArrayRef({rows, m.hidden}) &&
                    weights[4 * l + 2].numel() == rows && weights[4 * l + 3].numel() == rows,
                "layer ", l, "'s weights do not match the state's hidden size ", m.hidden);
    TORCH_CHECK((l == 0 || matrix_type_ok(weights[4 * l])) && matrix_type_ok(weights[4 * l + 1]) &&
                    weights[4 * l + 2].scalar_type() == state_type && weights[4 * l + 3].scalar_type() == state_type,
                "the weight matrices must have the state's dtype (or float16 for a float32 state), the biases the state's");
  }
  TORCH_CHECK(matrix_type_ok(head_weight) && head_bias.scalar_type() == state_type && input_table.scalar_type() == state_type,
              "the head's weight must have the state's dtype (or float16 for a float32 state); its bias and the input "
              "table the state's");
  for (const at::Tensor& w : weights) m.weights.push_back(w.contiguous());
  m.input_table = input_table.contiguous(), m.head_weight = head_weight.contiguous();
  m.head_bias = head_bias.contiguous();
  return m;
}

// Work space of a step: the gates of a layer (batch, gates·hidden), the GRU's hidden part of them,
// and one (batch, hidden) tensor for the activations.
struct Scratch {
  at::Tensor gates, hidden_gates, units;
  explicit Scratch(const LanguageModel& m, const at::TensorOptions& options)
      : gates(at::empty({m.batch, m.gates * m.hidden}, options)),
        hidden_gates(at::empty_like(gates)),
        units(at::empty({m.batch, m.hidden}, options)) {}
};

// The cell's update from its gates for every sequence of the batch, h, c → h_new, c_new (each
// (batch, hidden)). Equations as torch.lstm_cell, torch.gru_cell and torch.rnn_*_cell:
//   LSTM  [i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh,  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g),  h' = σ(o) ⊙ tanh(c')
//         (tanh g taken as 2σ(2g) − 1, so that one sigmoid call covers all four gates)
//   GRU   r, z = σ(W_ih x + b_ih + W_hh h + b_hh) on their blocks,  n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),
//         h' = (1 − z) ⊙ n + z ⊙ h          (gates: the input's part, hidden_gates: the hidden's)
//   Elman h' = f(W_ih x + b_ih + W_hh h + b_hh)
template <typename T>
void cell_update(const LanguageModel& m, Scratch& s, const T* h, const T* c, T* h_new, T* c_new) {
  const int64_t H = m.hidden, G = m.gates * H, batch = m.batch;
  T *a = s.gates.data_ptr<T>(), *u = s.units.data_ptr<T>();
  if (m.gru) {
    const T* hidden_part = s.hidden_gates.data_ptr<T>();
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t r = 0; r < 2 * H; ++r) a[b * G + r] += hidden_part[b * G + r];
    for (int64_t b = 0; b < batch; ++b) sigmoid_inplace(a + b * G, 2 * H);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < H; ++j) u[b * H + j] = a[b * G + 2 * H + j] + a[b * G + j] * hidden_part[b * G + 2 * H + j];
    tanh_inplace(u, batch * H);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < H; ++j) {
        const T update = a[b * G + H + j];
        h_new[b * H + j] = (1 - update) * u[b * H + j] + update * h[b * H + j];
      }
    return;
  }
  if (!m.lstm) {
    if (m.cell == "rnn_tanh") tanh_inplace(a, batch * H);
    else
      for (int64_t i = 0; i < batch * H; ++i) a[i] = std::max(a[i], T(0));
    std::copy_n(a, batch * H, h_new);
    return;
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < H; ++j) a[b * G + 2 * H + j] *= 2;
  sigmoid_inplace(a, batch * G);
  for (int64_t b = 0; b < batch; ++b) {
    const T *i = a + b * G, *f = i + H, *g = i + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) u[b * H + j] = c_new[b * H + j] = f[j] * c[b * H + j] + i[j] * (2 * g[j] - 1);
  }
  tanh_inplace(u, batch * H);
  for (int64_t b = 0; b < batch; ++b) {
    const T* o = a + b * G + 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) h_new[b * H + j] = o[j] * u[b * H + j];
  }
}

// logits (batch, vocab) = head_bias + h W_headᵀ for the last layer's h (batch, hidden)
template <typename T>
void write_logits(const LanguageModel& m, const T* h, at::Tensor& logits, Helper* helper) {
  T* out = logits.data_ptr<T>();
  for (int64_t b = 0; b < m.batch; ++b) std::copy_n(m.head_bias.data_ptr<T>(), m.vocab, out + b * m.vocab);
  add_product(out, h, m.head_weight, m.batch, helper);
}

// One step of every layer and the head for a batch of token ids: the state (h, c: each (layers,
// batch, hidden), c only for the LSTM) is read from the `old` tensors and written to the `new`
// ones, the logits (batch, vocab) to `logits`.
template <typename T>
void model_step(const LanguageModel& m, const int64_t* ids, const at::Tensor& h_old, const at::Tensor& c_old,
                at::Tensor& h_new, at::Tensor& c_new, at::Tensor& logits, Scratch& s, Helper* helper = nullptr) {
  const int64_t G = m.gates * m.hidden, batch = m.batch, layer_size = batch * m.hidden;
  T *a = s.gates.data_ptr<T>(), *hidden_part = s.hidden_gates.data_ptr<T>(), *h_out = h_new.data_ptr<T>();
  const T* h_in = h_old.data_ptr<T>();
  for (int64_t l = 0; l < m.layers; ++l) {
    const T *b_ih = m.weights[4 * l + 2].data_ptr<T>(), *b_hh = m.weights[4 * l + 3].data_ptr<T>();
    const T *h = h_in + l * layer_size, *below = h_out + (l - 1) * layer_size;
    if (l == 0) {
      for (int64_t b = 0; b < batch; ++b) std::copy_n(m.input_table.data_ptr<T>() + ids[b] * G, G, a + b * G);
    } else {
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < G; ++r) a[b * G + r] = m.gru ? b_ih[r] : b_ih[r] + b_hh[r];
      add_product(a, below, m.weights[4 * l], batch, helper);
    }
    if (m.gru) {  // W_hn h + b_hn is kept apart from the input's part
      for (int64_t b = 0; b < batch; ++b) std::copy_n(b_hh, G, hidden_part + b * G);
      add_product(hidden_part, h, m.weights[4 * l + 1], batch, helper);
    } else {
      add_product(a, h, m.weights[4 * l + 1], batch, helper);
    }
    cell_update<T>(m, s, h, m.lstm ? c_old.data_ptr<T>() + l * layer_size : nullptr, h_out + l * layer_size,
                   m.lstm ? c_new.data_ptr<T>() + l * layer_size : nullptr);
  }
  write_logits(m, h_out + (m.layers - 1) * layer_size, logits, helper);
}

// The writing loop's step for one sequence through one layer, with the helper, split around the
// draw: W_hh h for the next token does not depend on that token, so start_recurrent_product posts
// it as soon as the cell has made h, and the helper does its rows while the caller computes the
// logits (alone) and draws; overlapped_step finishes it after the draw and does the rest of the
// step. The product's sums land in the gates (the GRU's hidden part) before the input's gates are
// added to them: addition commutes, so the sums are model_step's.
template <typename T>
void start_recurrent_product(const LanguageModel& m, Scratch& s, const T* h, Helper& helper) {
  const at::Tensor& W = m.weights[1];
  const int64_t rows = W.size(0), n = W.size(1);
  T* out = (m.gru ? s.hidden_gates : s.gates).data_ptr<T>();
  if (m.gru) std::copy_n(m.weights[3].data_ptr<T>(), rows, out);  // b_hn stays with W_hn h
  else std::fill_n(out, rows, T(0));
  with_matrix<T>(W, [&](const auto* weights) { helper.post(out, weights, h, rows, n); });
}

template <typename T>
void overlapped_step(const LanguageModel& m, int64_t id, const at::Tensor& h_old, const at::Tensor& c_old,
                     at::Tensor& h_new, at::Tensor& c_new, at::Tensor& logits, Scratch& s, Helper& helper) {
  const int64_t G = m.gates * m.hidden;
  const T* input = m.input_table.data_ptr<T>() + id * G;
  // The drawn token's row of the input table (8 KB at 512 LSTM units), out of cache after a step's
  // products: asked for now, it comes in while this thread does its rows. Paired, 2 threads, three
  // order-balanced pairs: 0.977-0.993 the time a character in float32, no change in float16.
  prefetch(input, G);
  helper.finish();
  T* a = s.gates.data_ptr<T>();
  if (m.gru) std::copy_n(input, G, a);
  else
    for (int64_t r = 0; r < G; ++r) a[r] += input[r];
  cell_update<T>(m, s, h_old.data_ptr<T>(), m.lstm ? c_old.data_ptr<T>() : nullptr, h_new.data_ptr<T>(),
                 m.lstm ? c_new.data_ptr<T>() : nullptr);
  start_recurrent_product(m, s, h_new.data_ptr<T>(), helper);
  write_logits(m, h_new.data_ptr<T>(), logits, nullptr);  // the helper is busy with W_hh
}

void check_ids(const int64_t* ids, int64_t count, int64_t vocab) {
  for (int64_t b = 0; b < count; ++b)
    TORCH_CHECK(ids[b] >= 0 && ids[b] < vocab, "token ids must lie in 0..", vocab - 1, ", got ", ids[b]);
}

// tokens (batch,) → (logits (batch, vocab), new state [h] or [h, c], each (layers, batch, hidden))
std::tuple<at::Tensor, std::vector<at::Tensor>> language_model_step(
    const at::Tensor& tokens, const at::Tensor& input_table, at::TensorList weights, at::TensorList state,
    const at::Tensor& head_weight, const at::Tensor& head_bias, c10::string_view cell) {
  const LanguageModel m = check_model(input_table, weights, state, head_weight, head_bias, cell);
  TORCH_CHECK(tokens.dim() == 1 && tokens.size(0) == m.batch && tokens.scalar_type() == at::kLong,
              "tokens must be (batch,) int64 ids");
  const at::Tensor ids = tokens.contiguous(), h_old = state[0].contiguous();
  const at::Tensor c_old = m.lstm ? state[1].contiguous() : h_old;
  check_ids(ids.data_ptr<int64_t>(), m.batch, m.vocab);
  at::Tensor h_new = at::empty_like(h_old), c_new = m.lstm ? at::empty_like(c_old) : h_new;
  at::Tensor logits = at::empty({m.batch, m.vocab}, h_old.options());
  Scratch scratch(m, h_old.options());
  AT_DISPATCH_FLOATING_TYPES(h_old.scalar_type(), "language_model_step", [&] {
    model_step<scalar_t>(m, ids.data_ptr<int64_t>(), h_old, c_old, h_new, c_new, logits, scratch);
  });
  std::vector<at::Tensor> new_state{h_new};
  if (m.lstm) new_state.push_back(c_new);
  return {logits, new_state};
}

// One token drawn from a row of logits as rnnkit.tasks.text.sample draws it: p = softmax(logits /
// temperature), zero below the k-th largest p (top_k), zero where the mass of the strictly more
// likely ones reaches top_p, then argmax p / E over the noise E ~ Exp(1); greedy: argmax logits.
template <typename T>
int64_t draw(const T* logits, const T* noise, int64_t vocab, double temperature, std::optional<int64_t> top_k,
             std::optional<double> top_p, bool greedy, std::vector<T>& p, std::vector<T>& sorted,
             std::vector<int64_t>& order) {
  T largest = logits[0];
  for (int64_t i = 1; i < vocab; ++i) largest = std::max(largest, logits[i]);
  TORCH_CHECK(std::isfinite(static_cast<double>(largest)),
              "the model's outputs are not finite (NaN or inf): its weights are broken");
  if (greedy) return std::find(logits, logits + vocab, largest) - logits;
  const T scale = static_cast<T>(1 / temperature), top = largest * scale;
  T total = 0;
  for (int64_t i = 0; i < vocab; ++i) total += p[i] = std::exp(logits[i] * scale - top);
  TORCH_CHECK(std::isfinite(static_cast<double>(total)), "the model's outputs are not finite (NaN or inf): its weights are broken");
  for (int64_t i = 0; i < vocab; ++i) p[i] /= total;
  if (top_k && *top_k < vocab) {
    sorted.assign(p.begin(), p.end());
    std::nth_element(sorted.begin(), sorted.begin() + (*top_k - 1), sorted.end(), std::greater<T>());
    const T kth = sorted[*top_k - 1];
    for (int64_t i = 0; i < vocab; ++i)
      if (p[i] < kth) p[i] = 0;
  }
  if (top_p) {
    for (int64_t i = 0; i < vocab; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return p[x] > p[y]; });
    T before = 0;  // the mass of the strictly more likely ones
    for (int64_t i : order) {
      const T mass = p[i];
      if (before >= *top_p) p[i] = 0;
      before += mass;
    }
  }
  int64_t best = 0;
  T best_score = p[0] / noise[0];
  for (int64_t i = 1; i < vocab; ++i) {
    const T score = p[i] / noise[i];
    if (score > best_score) best = i, best_score = score;
  }
  return best;
}

// `length` tokens for each of a batch of sequences, each drawn from the logits before it (the
// first from `logits`), every token then read by a step: → (tokens (batch, length), the logits
// after the last token, the state after it). noise (length, batch, vocab): Exp(1) draws (unused
// when greedy).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> language_model_write(
    const at::Tensor& logits, const at::Tensor& noise, int64_t length, const at::Tensor& input_table,
    at::TensorList weights, at::TensorList state, const at::Tensor& head_weight, const at::Tensor& head_bias,
    c10::string_view cell, double temperature, std::optional<int64_t> top_k, std::optional<double> top_p,
    bool greedy) {
  const LanguageModel m = check_model(input_table, weights, state, head_weight, head_bias, cell);
  TORCH_CHECK(length >= 0, "length must be >= 0, got ", length);
  TORCH_CHECK(logits.sizes() == at::IntArrayRef({m.batch, m.vocab}), "logits must be (batch, vocab)");
  TORCH_CHECK(greedy || noise.sizes() == at::IntArrayRef({length, m.batch, m.vocab}),
              "noise must be (length, batch, vocab) unless greedy");
  TORCH_CHECK(greedy || temperature > 0, "temperature must be > 0, got ", temperature);
  TORCH_CHECK(!top_k || *top_k >= 1, "top_k must be >= 1");
  at::Tensor h = state[0].contiguous().clone(), c = m.lstm ? state[1].contiguous().clone() : h;
  at::Tensor h_next = at::empty_like(h), c_next = m.lstm ? at::empty_like(c) : h_next;
  at::Tensor current = logits.contiguous().clone(), tokens = at::empty({m.batch, length}, at::kLong);
  const at::Tensor draws = greedy ? noise : noise.to(logits.scalar_type()).contiguous();
  Scratch scratch(m, h.options());
  std::vector<int64_t> ids(m.batch), order(m.vocab);
  // A helper thread where torch may use more than one and one sequence's products are large.
  std::optional<Helper> helper;
  if (m.batch == 1 && at::get_num_threads() > 1 && m.gates * m.hidden * m.hidden >= kHelperWork &&
      Helper::worth_starting())
    helper.emplace();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "language_model_write", [&] {
    std::vector<scalar_t> p(m.vocab), sorted(m.vocab);
    const scalar_t* row = current.data_ptr<scalar_t>();
    const scalar_t* noise_rows = greedy ? nullptr : draws.data_ptr<scalar_t>();
    int64_t* written = tokens.data_ptr<int64_t>();
    const bool overlapped = helper && m.layers == 1;
    if (overlapped) start_recurrent_product(m, scratch, h.data_ptr<scalar_t>(), *helper);
    for (int64_t t = 0; t < length; ++t) {
      for (int64_t b = 0; b < m.batch; ++b) {
        const scalar_t* e = greedy ? nullptr : noise_rows + (t * m.batch + b) * m.vocab;
        ids[b] = draw(row + b * m.vocab, e, m.vocab, temperature, top_k, top_p, greedy, p, sorted, order);
        written[b * length + t] = ids[b];
      }
      if (overlapped) overlapped_step<scalar_t>(m, ids[0], h, c, h_next, c_next, current, scratch, *helper);
      else model_step<scalar_t>(m, ids.data(), h, c, h_next, c_next, current, scratch, helper ? &*helper : nullptr);
      std::swap(h, h_next);
      if (m.lstm) std::swap(c, c_next);
    }
    if (overlapped) helper->finish();  // the product for a token not drawn: done before its buffers go
  });
  std::vector<at::Tensor> new_state{h};
  if (m.lstm) new_state.push_back(c);
  return {tokens, current, new_state};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_kernels, m) {
  m.def("language_model_step(Tensor tokens, Tensor input_table, Tensor[] weights, Tensor[] state, "
        "Tensor head_weight, Tensor head_bias, str cell) -> (Tensor, Tensor[])");
  m.def("language_model_write(Tensor logits, Tensor noise, int length, Tensor input_table, Tensor[] weights, "
        "Tensor[] state, Tensor head_weight, Tensor head_bias, str cell, float temperature, int? top_k, "
        "float? top_p, bool greedy) -> (Tensor, Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(rnnkit_kernels, CPU, m) {
  m.impl("language_model_step", language_model_step);
  m.impl("language_model_write", language_model_write);
}
