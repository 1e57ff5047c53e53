"""The four input/output topologies, each a `Recurrent` layer with what goes in and out.

- `SequenceClassifier`  many-to-one: a sequence → one label (sentiment, digit, …)
- `SequenceModel`       many-to-many, aligned: an output at every step (next-character
                        logits of a language model, a tag per character)
- `ConditionedGenerator` one-to-many: a vector sets the initial state, then the network
                        writes a sequence, reading back its own outputs (captioning)
- `Seq2Seq`             encoder–decoder: a sequence → a sequence of another length
                        (translation), with teacher forcing or free-running decoding,
                        optionally attending to the encoder's outputs (`Attention`);
                        greedy or beam-search decoding

Token inputs are `LongTensor` ids read through an embedding; feature inputs are float
tensors (batch, time, features). `Recurrent` options (cell, num_layers, bidirectional,
dropout, initial_state, cell options such as `lags`) pass through `**recurrent_options`.
"""

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import kernels
from .cells import ElmanCell, GRUCell, LSTMCell, check_positive
from .recurrent import Recurrent

POOLINGS = ("last", "mean", "max")
ATTENTIONS = ("additive", "dot")


def _as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _unwrap(states: tuple[torch.Tensor, ...]):
    return states[0] if len(states) == 1 else states


def last_output(state, num_directions: int) -> torch.Tensor:
    """(batch, num_directions · size): the top layer's output after each sequence's last step.

    The first state tensor of every cell is its most recent output (h for Elman, GRU, LSTM
    and multi-lag, y for Jordan); for the backward direction that is the output at step 0.
    """
    top = _as_tuple(state)[0][-num_directions:]
    return top.transpose(0, 1).reshape(top.shape[1], -1)


def _check_tokens(tokens: torch.Tensor, vocab_size: int, name: str) -> None:
    if tokens.dim() != 2 or tokens.dtype.is_floating_point:
        raise ValueError(f"{name} must be (batch, time) integer token ids, got {tokens.dtype} {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"{name} ids must lie in 0..{vocab_size - 1}, got {tokens.min()}..{tokens.max()}")


class SequenceInput(nn.Module):
    """Token ids through an embedding (when `vocab_size` is given), or float features as they are."""

    def __init__(self, input_size: int, vocab_size: int | None = None):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = None if vocab_size is None else nn.Embedding(vocab_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            if not x.dtype.is_floating_point:
                raise ValueError(f"x must be float features (batch, time, features), got {x.dtype}; "
                                 "pass vocab_size to read token ids")
            return x
        _check_tokens(x, self.vocab_size, "x")
        return self.embedding(x)


class SequenceClassifier(nn.Module):
    """Many-to-one: read a whole sequence, then classify it.

        h_1 … h_T = Recurrent(x_1 … x_T)
        logits    = W_out · pool(h) + b_out,   pool = last step | mean | max over valid steps

    For a bidirectional layer, "last" joins the forward direction's state after step T with
    the backward direction's after step 1. forward(x, lengths=None) -> logits (batch, classes).
    """

    def __init__(self, input_size: int, num_classes: int, hidden_size: int, cell: str = "lstm",
                 vocab_size: int | None = None, pooling: str = "last", **recurrent_options):
        super().__init__()
        check_positive(num_classes=num_classes)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.input = SequenceInput(input_size, vocab_size)
        self.recurrent = Recurrent(cell, input_size, hidden_size, **recurrent_options)
        self.head = nn.Linear(self.recurrent.output_size, num_classes)

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        outputs, state = self.recurrent(self.input(x), lengths=lengths)
        if self.pooling == "last":
            pooled = last_output(state, self.recurrent.num_directions)
        else:
            batch, steps = outputs.shape[:2]
            lengths = torch.full((batch,), steps) if lengths is None else torch.as_tensor(lengths)
            valid = (torch.arange(steps) < lengths[:, None]).to(outputs.device)[..., None]
            if self.pooling == "mean":
                pooled = outputs.masked_fill(~valid, 0.0).sum(1) / valid.sum(1)
            else:
                pooled = outputs.masked_fill(~valid, float("-inf")).amax(1)
        return self.head(pooled)


class Dropout(nn.Module):
    """Dropout: while training, zero each entry with probability p and scale the rest by
    1/(1 − p), as nn.Dropout does. With `per_sequence`, one mask per sequence is shared by all
    its time steps (x: batch, time, features): the variational dropout of Gal & Ghahramani
    (2016) that AWD-LSTM uses.

    The mask is cut from 64-bit random integers, 16 bits per entry (p is rounded to a multiple
    of 2⁻¹⁶ and the scale matches the rounded p): on CPU, nn.Dropout's per-entry Bernoulli draw
    is most of its cost, and this is about 2.5× faster at the text model's 1.6M entries.
    """

    def __init__(self, p: float, per_sequence: bool = False):
        super().__init__()
        self.p, self.per_sequence = p, per_sequence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        drop = round(self.p * 65536)
        if drop == 65536:
            return x * 0
        shape = (x.shape[0], 1, x.shape[2]) if self.per_sequence else x.shape
        count = math.prod(shape)
        bits = torch.randint(-2**63, 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=x.device)
        draws = bits.view(torch.int16)[:count].view(shape)  # uniform on -32768 … 32767
        keep = (draws >= drop - 32768).to(x.dtype).mul_(65536 / (65536 - drop))
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}, per_sequence={self.per_sequence}"


class SequenceModel(nn.Module):
    """Many-to-many, aligned: one output per input step (language model, tagger).

        h_t      = Recurrent(x_1 … x_t)        (or x_1 … x_T when bidirectional)
        logits_t = W_out · dropout(h_t) + b_out

    With `tie_weights`, the output layer shares the embedding matrix (needs vocab_size ==
    output_size and embedding size == recurrent output size). `dropout` applies to the
    embedding, between layers and before the head; with `locked_dropout`, the embedding's
    and the head's masks are drawn once per sequence (`Dropout`).
    forward(x, state=None, lengths=None) -> (logits (batch, time, output_size), state)
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int, cell: str = "lstm",
                 vocab_size: int | None = None, dropout: float = 0.0, tie_weights: bool = False,
                 locked_dropout: bool = False, **recurrent_options):
        super().__init__()
        check_positive(output_size=output_size)
        self.input = SequenceInput(input_size, vocab_size)
        self.recurrent = Recurrent(cell, input_size, hidden_size, dropout=dropout, **recurrent_options)
        self.dropout = Dropout(dropout, per_sequence=locked_dropout)
        self.head = nn.Linear(self.recurrent.output_size, output_size)
        if tie_weights:
            if vocab_size != output_size or input_size != self.recurrent.output_size:
                raise ValueError(
                    "tie_weights needs vocab_size == output_size and input_size == the recurrent "
                    f"output size, got {vocab_size}, {output_size}, {input_size}, {self.recurrent.output_size}")
            self.head.weight = self.input.embedding.weight

    def forward(self, x: torch.Tensor, state=None, lengths=None):
        outputs, state = self.recurrent(self.dropout(self.input(x)), state, lengths=lengths)
        return self.head(self.dropout(outputs)), state

    def step(self, x: torch.Tensor, state=None):
        """One time step, for generation: x (batch,) token ids or (batch, features) -> (logits
        (batch, output_size), state); forward(x[:, None], state) in eval mode, less the time axis,
        at a fraction of its per-call cost (Recurrent.step). No dropout."""
        output, state = self.recurrent.step(self.input(x[:, None])[:, 0], state)
        return self.head(output), state

    def _compiled_generation(self, half_weights: bool = False):
        """What the compiled generation ops (rnnkit/csrc/language_model_step.cpp) need of this
        model, looked up once: (ops, cell kind, layer 0's input table, the layers' weights, the
        head's weight), or None where they do not apply. They apply to a token-reading,
        unidirectional LSTM, GRU or Elman model on the CPU, run without gradients (they have no
        backward). half_weights: the weight matrices in float16 (a float32 model's; other dtypes
        keep their own)."""
        recurrent = self.recurrent
        compiled = kernels.ops()
        if (compiled is None or self.input.embedding is None or self.head.weight.device.type != "cpu"
                or torch.is_grad_enabled() or recurrent.num_directions != 1
                or any(parametrize.type_before_parametrizations(cell) not in (LSTMCell, GRUCell, ElmanCell)
                       for cell in recurrent.cells)):
            return None
        kind, first = recurrent.fused_mode, recurrent.cells[0]
        # Layer 0's input gates W_ih e + b_ih for every token e, with b_hh too except for the GRU
        # (its n gate needs W_hn h + b_hn apart): a step then never multiplies by W_ih there.
        bias = first.bias_ih if kind == "gru" else first.bias_ih + first.bias_hh
        input_table = torch.addmm(bias, self.input.embedding.weight, first.weight_ih.t())
        dtype = self.head.weight.dtype
        matrix_type = torch.float16 if half_weights and dtype == torch.float32 else dtype
        weights = [w.contiguous() for cell in recurrent.cells
                   for w in (cell.weight_ih.to(matrix_type), cell.weight_hh.to(matrix_type), cell.bias_ih, cell.bias_hh)]
        return compiled, kind, input_table, weights, self.head.weight.to(matrix_type)

    def stepper(self):
        """`step` for a loop that steps many times with these weights (beam search).

        Where the compiled ops apply (`_compiled_generation`), the whole step (every layer, the
        head) is one compiled call; per token, Python's share of the work is then that call.
        Other models get `step`. Build a new stepper after the weights are replaced (training
        changes them in place, which is fine).
        """
        compiled = self._compiled_generation()
        if compiled is None:
            return self.step
        ops, kind, input_table, weights, head_weight = compiled
        head_bias = self.head.bias

        def step(tokens: torch.Tensor, state=None):
            states = self.recurrent._initial_states(len(tokens), head_weight) if state is None else _as_tuple(state)
            logits, states = ops.language_model_step(tokens, input_table, weights, list(states), head_weight,
                                                     head_bias, kind)
            return logits, _unwrap(tuple(states))

        return step

    def writer(self, half_weights: bool = False):
        """The compiled writing loop where it applies (`_compiled_generation`), else None:
        write(logits, state, noise, length, temperature, top_k, top_p, greedy) -> (tokens (batch,
        length), logits, state) draws `length` tokens, each from the logits before it (the first
        from `logits`) as `rnnkit.tasks.text.sample` draws with the same noise ((length, batch,
        vocab) Exp(1) draws; None when greedy), and steps on each, in one call. Per character it
        saves the sampling's and the step's calls from Python, as much time as the step's products.

        half_weights: the loop reads float16 copies of the weight matrices of a float32 model
        (arithmetic and state stay float32; other dtypes keep their weights). A single sequence's
        step reads every weight once, so it is bound by the bytes read: half of them make the loop
        1.2-1.7× faster at 512 LSTM units (benchmarks/RESULTS.md). Rounding the matrices to
        float16 moved a trained model's bits per character by 3e-6.
        """
        compiled = self._compiled_generation(half_weights)
        if compiled is None:
            return None
        ops, kind, input_table, weights, head_weight = compiled
        head_bias = self.head.bias

        def write(logits, state, noise, length: int, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False):
            noise = logits.new_empty(0) if noise is None else noise
            tokens, logits, states = ops.language_model_write(logits, noise, length, input_table, weights,
                                                              list(_as_tuple(state)), head_weight, head_bias, kind,
                                                              temperature, top_k, top_p, greedy)
            return tokens, logits, _unwrap(tuple(states))

        return write


class StateBridge(nn.Module):
    """A vector → a full initial state for every layer of a decoder:  s = tanh(W v + b)."""

    def __init__(self, in_features: int, recurrent: Recurrent):
        super().__init__()
        self.num_layers = recurrent.num_layers
        self.projections = nn.ModuleList(
            nn.Linear(in_features, recurrent.num_layers * size) for size in recurrent.state_sizes)

    def forward(self, vector: torch.Tensor):
        batch = vector.shape[0]
        states = tuple(torch.tanh(p(vector)).view(batch, self.num_layers, -1).transpose(0, 1).contiguous()
                       for p in self.projections)
        return _unwrap(states)


class Attention(nn.Module):
    """Where to read the source at each decoder step: a distribution over the encoder's outputs.

        additive (Bahdanau et al. 2015):          e_tj = v · tanh(W_q s_t + W_k m_j + b_k)
        dot      (Luong et al. 2015, "general"):  e_tj = s_t · (W_k m_j)
        a_tj = softmax_j e_tj  (0 on padded source steps),    c_t = Σ_j a_tj m_j

    forward(queries (batch, T, query_size), memory (batch, S, memory_size), mask (batch, S) bool)
    -> (contexts (batch, T, memory_size), weights a (batch, T, S))
    """

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
        self.kind = kind
        if kind == "additive":
            self.key = nn.Linear(memory_size, query_size)
            self.query = nn.Linear(query_size, query_size, bias=False)
            self.score = nn.Linear(query_size, 1, bias=False)
        else:
            self.key = nn.Linear(memory_size, query_size, bias=False)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        keys = self.key(memory)
        if self.kind == "additive":
            scores = self.score(torch.tanh(self.query(queries)[:, :, None] + keys[:, None])).squeeze(-1)
        else:
            scores = queries @ keys.transpose(1, 2)
        weights = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)
        return weights @ memory, weights


def _select(state, rows: torch.Tensor):
    """The state of the sequences (batch rows) `rows`, in that order."""
    return _unwrap(tuple(s.index_select(1, rows) for s in _as_tuple(state)))


class Decoder(nn.Module):
    """A token-by-token generator: embedding → unidirectional Recurrent → logits.

        s_t      = Recurrent(embed(y_{t−1}), s_{t−1})
        logits_t = W_out · s_t + b_out

    With `attention` ("additive" or "dot") it also reads a memory, the encoder's outputs
    m_1 … m_S, after each recurrent step (Luong et al. 2015), so teacher-forced training
    still runs the recurrent layer as one fused pass:

        c_t, a_t = Attention(s_t, m)
        logits_t = W_out · tanh(W_c [s_t; c_t] + b_c) + b_out

    `memory` is (outputs (batch, S, memory_size), mask (batch, S) bool, True on real steps).
    forward(tokens, state, teacher_forcing=1.0, memory=None) -> (logits, state): step t reads
    the given token t with probability `teacher_forcing`, else the model's own previous
    prediction (scheduled sampling; 1.0 is plain teacher forcing and runs as one fused pass).
    greedy(...) feeds back its own argmax outputs; beam_search(...) keeps the `beam_width`
    most likely partial outputs.
    """

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, cell: str = "lstm",
                 attention: str | None = None, memory_size: int | None = None, **recurrent_options):
        super().__init__()
        check_positive(vocab_size=vocab_size, embedding_size=embedding_size)
        if recurrent_options.get("bidirectional"):
            raise ValueError("bidirectional must be False for a decoder: it cannot read tokens it has not written")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.recurrent = Recurrent(cell, embedding_size, hidden_size, **recurrent_options)
        size = self.recurrent.output_size
        self.attention = None
        if attention is not None:
            check_positive(memory_size=memory_size)
            self.attention = Attention(attention, size, memory_size)
            self.combine = nn.Linear(size + memory_size, size)
        self.head = nn.Linear(size, vocab_size)

    def read(self, outputs: torch.Tensor, memory=None):
        """(logits, attention weights or None) for the recurrent outputs s_t."""
        if (memory is None) != (self.attention is None):
            raise ValueError("memory (the encoder's outputs) must be given exactly when the decoder has attention")
        if self.attention is None:
            return self.head(outputs), None
        contexts, weights = self.attention(outputs, *memory)
        return self.head(torch.tanh(self.combine(torch.cat([outputs, contexts], dim=-1)))), weights

    def step(self, tokens: torch.Tensor, state, memory=None):
        outputs, state = self.recurrent(self.embedding(tokens), state)
        return self.read(outputs, memory)[0], state

    def forward(self, tokens: torch.Tensor, state, teacher_forcing: float = 1.0, memory=None):
        _check_tokens(tokens, self.vocab_size, "tokens")
        if teacher_forcing >= 1.0:
            return self.step(tokens, state, memory)
        logits, token = [], tokens[:, :1]
        for t in range(tokens.shape[1]):
            step_logits, state = self.step(token, state, memory)
            logits.append(step_logits)
            if t + 1 < tokens.shape[1]:
                use_given = torch.rand(tokens.shape[0], 1, device=tokens.device) < teacher_forcing
                token = torch.where(use_given, tokens[:, t + 1:t + 2], step_logits.argmax(-1))
        return torch.cat(logits, dim=1), state

    @torch.no_grad()
    def greedy(self, state, start_token: int, max_length: int, end_token: int | None = None,
               memory=None) -> torch.Tensor:
        """(batch, ≤ max_length) tokens; after a sequence writes `end_token` it only repeats it."""
        check_positive(max_length=max_length)
        batch = _as_tuple(state)[0].shape[1]
        token = torch.full((batch, 1), start_token, dtype=torch.long, device=_as_tuple(state)[0].device)
        finished = torch.zeros(batch, 1, dtype=torch.bool, device=token.device)
        written = []
        for _ in range(max_length):
            logits, state = self.step(token, state, memory)
            token = logits.argmax(-1)
            if end_token is not None:
                token = token.masked_fill(finished, end_token)
                finished |= token == end_token
            written.append(token)
            if end_token is not None and finished.all():
                break
        return torch.cat(written, dim=1)

    @torch.no_grad()
    def beam_search(self, state, start_token: int, max_length: int, end_token: int | None = None,
                    beam_width: int = 5, memory=None) -> torch.Tensor:
        """(batch, ≤ max_length) tokens: per sequence, the output with the highest total
        log-probability Σ_t log p(y_t | y_<t) among the `beam_width` partial outputs kept at
        every step. A finished output (one that wrote `end_token`) keeps its score and only
        repeats the end token. beam_width=1 is greedy decoding."""
        check_positive(max_length=max_length, beam_width=beam_width)
        batch = _as_tuple(state)[0].shape[1]
        width = min(beam_width, self.vocab_size)
        rows = torch.arange(batch).repeat_interleave(width)          # beam k of sequence b is row b·width + k
        state = _select(state, rows.to(_as_tuple(state)[0].device))
        if memory is not None:
            memory = tuple(m.index_select(0, rows.to(m.device)) for m in memory)
        device = _as_tuple(state)[0].device
        scores = torch.full((batch, width), float("-inf"), device=device)
        scores[:, 0] = 0.0                                            # all beams start as one
        token = torch.full((batch * width, 1), start_token, dtype=torch.long, device=device)
        finished = torch.zeros(batch * width, dtype=torch.bool, device=device)
        written = torch.zeros(batch * width, 0, dtype=torch.long, device=device)
        for _ in range(max_length):
            logits, state = self.step(token, state, memory)
            log_probs = torch.log_softmax(logits[:, -1], dim=-1)
            if end_token is not None:
                log_probs[finished] = float("-inf")
                log_probs[finished, end_token] = 0.0
            candidates = (scores.view(-1, 1) + log_probs).view(batch, width * self.vocab_size)
            scores, best = candidates.topk(width, dim=1)
            parents = (torch.arange(batch, device=device)[:, None] * width + best // self.vocab_size).flatten()
            token = (best % self.vocab_size).view(-1, 1)
            written = torch.cat([written[parents], token], dim=1)
            state = _select(state, parents)
            if end_token is not None:
                finished = finished[parents] | (token[:, 0] == end_token)
                if finished.all():
                    break
        return written.view(batch, width, -1)[:, 0]                  # topk sorts: beam 0 is the best


class ConditionedGenerator(nn.Module):
    """One-to-many: a vector v (an image's features, a class) sets the initial state,
    then the decoder writes a sequence, feeding back what it wrote.

        s_0 = tanh(W_c v + b_c)  (every layer, every state tensor)
        y_1 … y_T = Decoder(s_0, <start> y_1 … y_{T−1})

    forward(condition, tokens) -> logits (teacher forcing; `tokens` starts with the start token);
    generate(condition, start_token, max_length, end_token) -> tokens.
    """

    def __init__(self, condition_size: int, vocab_size: int, hidden_size: int, cell: str = "lstm",
                 embedding_size: int = 32, **recurrent_options):
        super().__init__()
        check_positive(condition_size=condition_size)
        self.decoder = Decoder(vocab_size, embedding_size, hidden_size, cell, **recurrent_options)
        self.bridge = StateBridge(condition_size, self.decoder.recurrent)

    def forward(self, condition: torch.Tensor, tokens: torch.Tensor, teacher_forcing: float = 1.0):
        return self.decoder(tokens, self.bridge(condition), teacher_forcing)[0]

    def generate(self, condition: torch.Tensor, start_token: int, max_length: int,
                 end_token: int | None = None) -> torch.Tensor:
        return self.decoder.greedy(self.bridge(condition), start_token, max_length, end_token)


class Seq2Seq(nn.Module):
    """Encoder–decoder: read a source sequence, then write a target of another length.

        m_1 … m_S   = Encoder(x_1 … x_S)                   (may be bidirectional)
        s_0         = tanh(W_b · h^enc_last + b_b)        (the bridge)
        y_1 … y_T   = Decoder(s_0, <start> y_1 … y_{T−1})  (attending to m when `attention` is set)

    forward(source, tokens, source_lengths=None, teacher_forcing=1.0) -> logits
    generate(source, start_token, max_length, end_token, source_lengths=None, beam_width=1) -> tokens
    attention_weights(source, tokens, source_lengths=None) -> a (batch, T, S) for the given output
    """

    def __init__(self, source_vocab_size: int, target_vocab_size: int, hidden_size: int,
                 cell: str = "lstm", embedding_size: int = 32, num_layers: int = 1,
                 bidirectional_encoder: bool = False, attention: str | None = None, **recurrent_options):
        super().__init__()
        self.source_input = SequenceInput(embedding_size, source_vocab_size)
        self.encoder = Recurrent(cell, embedding_size, hidden_size, num_layers=num_layers,
                                 bidirectional=bidirectional_encoder, **recurrent_options)
        self.decoder = Decoder(target_vocab_size, embedding_size, hidden_size, cell, attention=attention,
                               memory_size=self.encoder.output_size, num_layers=num_layers, **recurrent_options)
        self.bridge = StateBridge(self.encoder.output_size, self.decoder.recurrent)

    def encode(self, source: torch.Tensor, source_lengths=None):
        """(the decoder's initial state, the memory for attention or None)."""
        outputs, state = self.encoder(self.source_input(source), lengths=source_lengths)
        memory = None
        if self.decoder.attention is not None:
            steps = torch.arange(source.shape[1], device=source.device)
            lengths = torch.full((source.shape[0],), source.shape[1]) if source_lengths is None else source_lengths
            memory = (outputs, steps < torch.as_tensor(lengths, device=source.device)[:, None])
        return self.bridge(last_output(state, self.encoder.num_directions)), memory

    def forward(self, source: torch.Tensor, tokens: torch.Tensor, source_lengths=None,
                teacher_forcing: float = 1.0) -> torch.Tensor:
        state, memory = self.encode(source, source_lengths)
        return self.decoder(tokens, state, teacher_forcing, memory)[0]

    def generate(self, source: torch.Tensor, start_token: int, max_length: int,
                 end_token: int | None = None, source_lengths=None, beam_width: int = 1) -> torch.Tensor:
        state, memory = self.encode(source, source_lengths)
        if beam_width == 1:
            return self.decoder.greedy(state, start_token, max_length, end_token, memory)
        return self.decoder.beam_search(state, start_token, max_length, end_token, beam_width, memory)

    @torch.no_grad()
    def attention_weights(self, source: torch.Tensor, tokens: torch.Tensor, source_lengths=None) -> torch.Tensor:
        """a_tj: how much output step t (reading `tokens`, which start with the start token)
        attends to source step j."""
        if self.decoder.attention is None:
            raise ValueError("this model has no attention (build it with attention='additive' or 'dot')")
        state, memory = self.encode(source, source_lengths)
        outputs, _ = self.decoder.recurrent(self.decoder.embedding(tokens), state)
        return self.decoder.read(outputs, memory)[1]
