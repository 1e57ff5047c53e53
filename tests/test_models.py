import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.tasks.text import _write_by_steps
from rnnkit.models import Attention, ConditionedGenerator, Decoder, Seq2Seq, SequenceClassifier, SequenceModel


def train(model, loss_fn, steps, lr=0.02):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    return loss.item()


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_shapes_and_padding(pooling, bidirectional):
    torch.manual_seed(0)
    model = SequenceClassifier(3, 5, 8, cell="gru", pooling=pooling, bidirectional=bidirectional, num_layers=2)
    x = torch.randn(4, 6, 3)
    lengths = torch.tensor([6, 2, 4, 1])
    logits = model(x, lengths=lengths)
    assert logits.shape == (4, 5)
    alone = model(x[1:2, :2])  # padded steps do not change the label
    torch.testing.assert_close(logits[1:2], alone, rtol=0, atol=1e-6)


def test_classifier_learns_which_half_holds_the_larger_sum():
    """Many-to-one: the label depends on the whole sequence, not its last step."""
    torch.manual_seed(0)
    x = torch.randn(256, 10, 1)
    labels = (x[:, :5].sum((1, 2)) > x[:, 5:].sum((1, 2))).long()
    model = SequenceClassifier(1, 2, 24, cell="lstm")
    train(model, lambda: F.cross_entropy(model(x), labels), steps=150)
    accuracy = (model(x).argmax(1) == labels).float().mean()
    assert accuracy > 0.9


def test_language_model_learns_a_repeating_text():
    """Many-to-many: next-token prediction on a periodic sequence with memory needed."""
    torch.manual_seed(0)
    text = torch.tensor([0, 1, 2, 1, 3] * 8)[None]  # after "1" comes 2 or 3: depends on the past
    model = SequenceModel(8, 4, 32, cell="gru", vocab_size=4, tie_weights=False)
    loss = train(model, lambda: F.cross_entropy(model(text[:, :-1])[0].transpose(1, 2), text[:, 1:]), steps=120)
    assert loss < 0.05


@pytest.mark.parametrize("vocab_size", [7, None], ids=["tokens", "features"])
def test_sequence_model_step_is_forward_over_one_step(vocab_size):
    torch.manual_seed(0)
    model = SequenceModel(5, 7, 6, cell="lstm", vocab_size=vocab_size, dropout=0.3, num_layers=2).eval()
    x = torch.randint(0, 7, (3, 4)) if vocab_size else torch.randn(3, 4, 5)
    logits, final = model(x)
    state = None
    for t in range(4):
        step_logits, state = model.step(x[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=1e-6)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell, options", [("lstm", {}), ("gru", {}), ("elman", {}),
                                           ("elman", {"nonlinearity": "relu"})], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("weight_dropout", [0.0, 0.5])
def test_compiled_stepper_of_a_language_model_is_forward(cell, options, dtype, batch, weight_dropout):
    """The one-call compiled step (rnnkit/csrc/language_model_step.cpp) gives forward's logits and
    states, token after token, for one sequence (its own products) and a batch (ATen's)."""
    torch.manual_seed(1)
    model = SequenceModel(5, 9, 8, cell=cell, vocab_size=9, num_layers=2, weight_dropout=weight_dropout, **options)
    model = model.to(dtype).eval()
    tokens = torch.randint(0, 9, (batch, 6))
    tolerance = {"rtol": 1e-5, "atol": 1e-12 if dtype == torch.float64 else 1e-6}
    with torch.no_grad():
        logits, final = model(tokens)
        step = model.stepper()
        assert step != model.step  # the compiled one
        state = None
        for t in range(6):
            step_logits, state = step(tokens[:, t], state)
            torch.testing.assert_close(step_logits, logits[:, t], **tolerance)
    states, finals = (state, final) if cell == "lstm" else ((state,), (final,))
    for a, b in zip(states, finals):
        torch.testing.assert_close(a, b, **tolerance)
    with torch.no_grad(), pytest.raises(RuntimeError, match="0..8"):
        step(torch.tensor([9] * batch), state)
    with torch.no_grad(), pytest.raises(RuntimeError, match="hidden"):  # a state of another size
        smaller = tuple(s[..., :7] for s in states)
        step(tokens[:, 0], smaller if cell == "lstm" else smaller[0])


@pytest.mark.parametrize("cell, options", [("lstm", {}), ("gru", {}), ("elman", {}),
                                           ("elman", {"nonlinearity": "relu"})], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.6, "top_k": 4}, {"top_p": 0.7}, {"greedy": True}],
                         ids=str)
def test_compiled_writer_draws_as_sample_and_steps_as_forward(cell, options, dtype, batch, sampling):
    """The compiled writing loop draws the tokens that `sample` draws from the same noise, and
    ends in the logits and state that stepping on them gives."""
    torch.manual_seed(2)
    model = SequenceModel(5, 9, 8, cell=cell, vocab_size=9, num_layers=2, **options).to(dtype).eval()
    generator = torch.Generator().manual_seed(0)
    noise = torch.empty(40, batch, 9).exponential_(generator=generator)
    with torch.no_grad():
        logits, state = model(torch.randint(0, 9, (batch, 3)))
        logits = logits[:, -1] * 3  # sharper than at random, so that top_k and top_p matter
        write = model.writer()
        tokens, last_logits, last_state = write(logits, state, noise, 40, **sampling)
        expected, expected_logits, expected_state = _write_by_steps(model.step, logits, state, noise, 40, **sampling)
    assert tokens.shape == (batch, 40)
    assert sampling.get("greedy") or len(set(tokens.flatten().tolist())) > 3  # draws, not a fixed point
    assert torch.equal(tokens, expected)
    tolerance = {"rtol": 1e-5, "atol": 1e-12 if dtype == torch.float64 else 1e-6}
    torch.testing.assert_close(last_logits, expected_logits, **tolerance)
    for a, b in zip(*((last_state, expected_state) if cell == "lstm" else ((last_state,), (expected_state,)))):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("half_weights", [False, True])
@pytest.mark.parametrize("cell, layers", [("lstm", 2), ("lstm", 1), ("gru", 1), ("elman", 1)])
def test_compiled_writer_with_a_helper_thread_writes_what_one_thread_writes(torch_threads, half_weights, cell, layers):
    """With two torch threads, a single sequence's large products are split by rows between two
    threads (language_model_step.cpp's Helper), at a split that moves with their speeds: the same
    sums, so the same characters and state. One layer's W_hh h for the next token starts before
    that token is drawn (overlapped_step). In the two-layer model the head's 203 rows (203 · 192
    multiply-adds) are split too, and end in rows outside the blocks of eight."""
    torch.manual_seed(3)
    model = SequenceModel(16, 203, 192, cell=cell, vocab_size=203, num_layers=layers).eval()  # ≥ 192² rows·columns
    noise = torch.empty(300, 1, 203).exponential_(generator=torch.Generator().manual_seed(0))
    written = []
    with torch.no_grad():
        logits, state = model(torch.randint(0, 203, (1, 5)))
        for count in (1, 2):
            torch_threads(count)
            written.append(model.writer(half_weights)(logits[:, -1], state, noise, 300))
    (tokens_1, logits_1, state_1), (tokens_2, logits_2, state_2) = written
    assert torch.equal(tokens_1, tokens_2) and torch.equal(logits_1, logits_2)
    assert all(torch.equal(a, b) for a, b in zip(state_1, state_2))


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman"])
@pytest.mark.parametrize("hidden", [8, 12])  # F16C's eight rows at a time; the element-wise loop
@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_writer_with_half_weights_is_the_float32_writer_of_the_rounded_model(cell, hidden, batch):
    """half_weights: the loop reads float16 copies of the weight matrices, so it computes what the
    float32 loop computes once the matrices are rounded to float16 (up to the order of the sums)."""
    torch.manual_seed(4)
    model = SequenceModel(5, 9, hidden, cell=cell, vocab_size=9, num_layers=2).eval()
    noise = torch.empty(40, batch, 9).exponential_(generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, state = model(torch.randint(0, 9, (batch, 3)))
        logits = logits[:, -1] * 3
        tokens, last_logits, last_state = model.writer(half_weights=True)(logits, state, noise, 40)
        _, full_logits, _ = model.writer()(logits, state, noise, 40)
        for name, parameter in model.named_parameters():
            # layer 0's input table (from the embedding and layer 0's W_ih) stays float32
            if "weight" in name and name not in ("input.embedding.weight", "recurrent.cells.0.weight_ih"):
                parameter.copy_(parameter.half().float())
        expected = model.writer()(logits, state, noise, 40)
    assert torch.equal(tokens, expected[0])
    torch.testing.assert_close(last_logits, expected[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*((last_state, expected[2]) if cell == "lstm" else ((last_state,), (expected[2],)))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(last_logits, full_logits)  # the copies really are float16


def test_compiled_writer_draws_each_token_as_often_as_its_probability():
    """A head that ignores the state gives the same logits every step: 20,000 draws then show
    the loop's frequencies against softmax, with temperature, top_k and top_p."""
    model = SequenceModel(5, 5, 8, cell="lstm", vocab_size=5).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0]))
        logits, state = model(torch.zeros(1, 1, dtype=torch.long))
        write = model.writer()
        generator = torch.Generator().manual_seed(0)

        def frequencies(**sampling):
            noise = torch.empty(20000, 1, 5).exponential_(generator=generator)
            tokens = write(logits[:, -1], state, noise, 20000, **sampling)[0][0]
            return torch.bincount(tokens, minlength=5) / len(tokens)

        for temperature in (1.0, 0.5):  # a frequency's standard error is at most 0.0036
            expected = torch.softmax(model.head.bias / temperature, -1)
            torch.testing.assert_close(frequencies(temperature=temperature), expected, atol=0.015, rtol=0)
        top_two = frequencies(top_k=2)
        assert top_two[2:].sum() == 0 and top_two[0] == pytest.approx(math.e / (math.e + 1), abs=0.015)
        assert frequencies(top_p=0.6)[0] == 1  # the most likely (0.64 of the mass) alone reaches 0.6
        with pytest.raises(RuntimeError, match="not finite"):
            model.head.bias[0] = float("nan")
            model.writer()(model(torch.zeros(1, 1, dtype=torch.long))[0][:, -1] * 0, state, None, 3, greedy=True)


def test_stepper_falls_back_to_step_where_there_is_no_compiled_one():
    jordan = SequenceModel(5, 9, 8, cell="jordan", vocab_size=9).eval()
    lstm = SequenceModel(5, 9, 8, cell="lstm", vocab_size=9).eval()
    with torch.no_grad():
        assert jordan.stepper() == jordan.step
    assert lstm.stepper() == lstm.step  # gradients wanted: the compiled step has no backward


def test_tied_weights_share_the_embedding():
    model = SequenceModel(16, 10, 16, cell="lstm", vocab_size=10, tie_weights=True)
    assert model.head.weight is model.input.embedding.weight
    logits, (h, c) = model(torch.randint(0, 10, (2, 7)))
    assert logits.shape == (2, 7, 10) and h.shape == (1, 2, 16)


def test_conditioned_generator_writes_the_sequence_its_vector_names():
    """One-to-many: a one-hot class sets the initial state; the network unrolls its own outputs."""
    torch.manual_seed(0)
    words = torch.tensor([[1, 3, 4, 2], [1, 4, 3, 3], [1, 3, 3, 2]])  # 0 = start, 2 = end
    condition = torch.eye(3)
    model = ConditionedGenerator(3, 5, 32, cell="gru", embedding_size=8)
    start = torch.zeros(3, 1, dtype=torch.long)
    inputs = torch.cat([start, words[:, :-1]], 1)
    train(model, lambda: F.cross_entropy(model(condition, inputs).transpose(1, 2), words), steps=150)
    written = model.generate(condition, start_token=0, max_length=10, end_token=2)
    assert written[:, :4].tolist() == words.tolist()
    assert (written[[0, 2], 3:] == 2).all()  # after the end token, only end tokens


START, END = 0, 1  # the reversal tasks' start and end tokens; 2–6 are the symbols


def reversal_batch(n, length):
    """n random sources of `length` symbols and their targets: the source reversed, then END."""
    source = torch.randint(2, 7, (n, length))
    return source, torch.cat([source.flip(1), torch.full((n, 1), END)], 1)


def teacher_forced_loss(model, source, target):
    decoder_input = torch.cat([torch.full((len(source), 1), START), target[:, :-1]], 1)
    return F.cross_entropy(model(source, decoder_input).transpose(1, 2), target)


@pytest.mark.parametrize("bidirectional_encoder", [False, True])
def test_seq2seq_learns_to_reverse(bidirectional_encoder):
    """Encoder–decoder with free-running greedy decoding on held-out sequences."""
    torch.manual_seed(0)
    model = Seq2Seq(7, 7, 64, cell="lstm", embedding_size=16, bidirectional_encoder=bidirectional_encoder)
    train(model, lambda: teacher_forced_loss(model, *reversal_batch(64, 5)), steps=300, lr=0.01)
    source, target = reversal_batch(200, 5)
    written = model.generate(source, START, max_length=8, end_token=END)
    exact = (written[:, :6] == target).all(1).float().mean()
    assert exact > 0.9


def test_scheduled_sampling_at_one_equals_teacher_forcing():
    torch.manual_seed(0)
    decoder = Decoder(6, 4, 8, cell="gru")
    tokens = torch.randint(0, 6, (3, 5))
    state = torch.zeros(1, 3, 8)
    forced, _ = decoder(tokens, state, teacher_forcing=1.0)
    stepwise, _ = decoder(tokens, state, teacher_forcing=1.0 - 1e-12)  # the per-step loop, always the given token
    torch.testing.assert_close(forced, stepwise, rtol=0, atol=1e-6)


def test_dot_attention_weights_by_hand():
    """e_tj = s_t · m_j (W_k = I): softmax over the real steps, 0 on the padded one."""
    attention = Attention("dot", 2, 2)
    with torch.no_grad():
        attention.key.weight.copy_(torch.eye(2))
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    contexts, weights = attention(torch.tensor([[[1.0, 0.0]]]), memory, torch.tensor([[True, True, False]]))
    e = torch.e
    torch.testing.assert_close(weights, torch.tensor([[[e / (e + 1), 1 / (e + 1), 0.0]]]))
    torch.testing.assert_close(contexts, torch.tensor([[[e / (e + 1), 1 / (e + 1)]]]))


class MarkovDecoder(Decoder):
    """A decoder whose next-token probabilities depend only on the previous token (a table)."""

    def __init__(self, table):
        super().__init__(len(table), 2, 2, cell="gru")
        self.log_table = torch.tensor(table).log()

    def step(self, tokens, state, memory=None):
        return self.log_table[tokens], state


def test_beam_search_finds_the_likelier_output_that_greedy_misses():
    # tokens: 0 start, 1 end, 2 "a", 3 "b". Greedy takes "a" (0.6) then ends: 0.6 · 0.4 = 0.24;
    # "b" then end has 0.4 · 0.9 = 0.36.
    table = [[0.0, 0.0, 0.6, 0.4], [0.0, 1.0, 0.0, 0.0], [0.0, 0.4, 0.3, 0.3], [0.0, 0.9, 0.05, 0.05]]
    decoder = MarkovDecoder([[max(p, 1e-9) for p in row] for row in table])
    state = torch.zeros(1, 2, 2)
    assert decoder.greedy(state, 0, 4, end_token=1).tolist() == [[2, 1], [2, 1]]
    assert decoder.beam_search(state, 0, 4, end_token=1, beam_width=2).tolist() == [[3, 1], [3, 1]]
    assert decoder.beam_search(state, 0, 4, end_token=1, beam_width=1).tolist() == [[2, 1], [2, 1]]


@pytest.mark.parametrize("attention", ["additive", "dot"])
def test_attention_seq2seq_learns_to_reverse_and_ignores_padding(attention):
    torch.manual_seed(0)
    model = Seq2Seq(7, 7, 32, cell="gru", embedding_size=16, attention=attention)
    # 250 steps were enough on one CPU and left dot attention at 67% on another (AMD EPYC):
    # 400 reach 100% there for seeds 0-3, both attentions.
    train(model, lambda: teacher_forced_loss(model, *reversal_batch(64, 6)), steps=400, lr=0.02)
    source, target = reversal_batch(200, 6)
    for beam_width in (1, 3):
        written = model.generate(source, START, max_length=9, end_token=END, beam_width=beam_width)
        assert (written[:, :7] == target).all(1).float().mean() > 0.95
    weights = model.attention_weights(source, torch.cat([torch.full((200, 1), START), target[:, :-1]], 1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(200, 7))
    reads_its_mirror = weights[:, :6].argmax(-1) == torch.arange(5, -1, -1)  # output t copies source 5 − t
    assert reads_its_mirror.float().mean() > 0.6
    padded = torch.cat([source[:2], torch.full((2, 3), 2)], 1)  # padding that would change the output if read
    torch.testing.assert_close(model.generate(padded, START, 9, END, source_lengths=torch.tensor([6, 6])),
                               model.generate(source[:2], START, 9, END))


@pytest.mark.parametrize("build, argument", [
    (lambda: SequenceClassifier(3, 0, 8), "num_classes"),
    (lambda: SequenceClassifier(3, 2, 8, pooling="attention"), "pooling"),
    (lambda: SequenceModel(8, 10, 16, vocab_size=10, tie_weights=True), "tie_weights"),
    (lambda: Decoder(5, 4, 8, bidirectional=True), "bidirectional"),
    (lambda: Seq2Seq(5, 5, 8, attention="cosine"), "attention"),
    (lambda: Seq2Seq(5, 5, 8).attention_weights(torch.tensor([[2]]), torch.tensor([[0]])), "no attention"),
    (lambda: Decoder(5, 4, 8, attention="dot", memory_size=3)(torch.tensor([[1]]), None), "memory"),
    (lambda: SequenceModel(4, 3, 8, vocab_size=5)(torch.tensor([[0, 9]])), "0..4"),
    (lambda: SequenceModel(4, 3, 8, vocab_size=5)(torch.randn(1, 2, 4)), "token ids"),
    (lambda: SequenceModel(4, 3, 8)(torch.tensor([[[1, 2, 3, 4]]])), "float"),
    (lambda: SequenceClassifier(3, 2, 8)(torch.randn(2, 5, 4)), "input_size=3"),
])
def test_bad_configuration_or_input_names_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


@pytest.mark.parametrize("p", [0.1, 0.35, 0.6])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_expectation(p):
    from rnnkit.models import Dropout

    torch.manual_seed(0)
    x = torch.ones(64, 30, 50)
    y = Dropout(p)(x)
    assert abs((y == 0).float().mean().item() - p) < 0.01
    assert abs(y.mean().item() - 1) < 0.02
    torch.testing.assert_close(y.unique(), torch.tensor([0.0, 1 / (1 - round(p * 65536) / 65536)]))
    assert not torch.equal(y[:, 0], y[:, 1])  # a fresh mask at every step
    assert torch.equal(Dropout(p).eval()(x), x) and torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


def test_per_sequence_dropout_draws_one_mask_per_sequence():
    from rnnkit.models import Dropout

    torch.manual_seed(0)
    y = Dropout(0.4, per_sequence=True)(torch.ones(64, 30, 50))
    assert torch.equal(y, y[:, :1].expand_as(y))
    assert abs((y[:, 0] == 0).float().mean().item() - 0.4) < 0.03
    model = SequenceModel(8, 5, 16, vocab_size=5, dropout=0.5, locked_dropout=True)
    assert model.dropout.per_sequence
