"""The hand-derived BPTT Functions compute the explicit per-step loop, and their gradients."""

import pytest
import torch
import torch.nn.functional as F

from rnnkit import bptt, kernels
from rnnkit.bptt import ElmanSequence, GRUSequence, JordanSequence, LayerNormLSTMSequence, LSTMSequence, run_sequence
from rnnkit.cells import ElmanCell, GRUCell, JordanCell, LayerNormLSTMCell, LSTMCell, MultiLagCell
from rnnkit.recurrent import Recurrent

pytestmark = pytest.mark.usefixtures("float64")


def perturbed_layer_norm_lstm(input_size: int, hidden_size: int) -> LayerNormLSTMCell:
    """Gains away from 1 and biases away from 0, so a wrong gradient for either shows."""
    cell = LayerNormLSTMCell(input_size, hidden_size)
    with torch.no_grad():
        for name, parameter in cell.named_parameters():
            if name.startswith("ln_") or name == "bias":
                parameter.add_(0.1 * torch.randn_like(parameter))
    return cell


CELLS = {
    "elman-tanh": lambda hidden=4: ElmanCell(3, hidden),
    "elman-relu": lambda hidden=4: ElmanCell(3, hidden, nonlinearity="relu"),
    "jordan": lambda hidden=4: JordanCell(3, hidden, output_size=2),
    "multilag-1": lambda hidden=4: MultiLagCell(3, hidden, lags=1),
    "multilag-2": lambda hidden=4: MultiLagCell(3, hidden, lags=2),
    "multilag-3": lambda hidden=4: MultiLagCell(3, hidden, lags=3, nonlinearity="relu"),
    "lstm": lambda hidden=4: LSTMCell(3, hidden),
    "gru": lambda hidden=4: GRUCell(3, hidden),
    "layernorm-lstm": lambda hidden=4: perturbed_layer_norm_lstm(3, hidden),
}
VALID = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)  # left-aligned
HOLES = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)  # any mask works too


def explicit_loop(cell, x, state, valid=None, reverse=False):
    """Call the cell step by step; a step that is not valid keeps the state and outputs zeros."""
    steps = x.shape[1]
    outputs = [None] * steps
    for t in reversed(range(steps)) if reverse else range(steps):
        output, new_state = cell(x[:, t], state)
        if valid is not None:
            keep = valid[:, t, None]
            new_state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
            output = output * keep
        state = new_state
        outputs[t] = output
    return torch.stack(outputs, dim=1), state


def results_and_gradients(run, cell, x, state):
    """Outputs, final state, and gradients wrt x, the initial state and every parameter of a
    loss that weighs every output and final-state entry differently."""
    outputs, final = run(cell, x, state)
    generator = torch.Generator().manual_seed(7)
    loss = (outputs * torch.randn(outputs.shape, generator=generator)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=generator)).sum() for s in final)
    return [outputs, *final, *torch.autograd.grad(loss, [x, *state, *cell.parameters()])]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("valid", [None, VALID, HOLES], ids=["full", "padded", "holes"])
def test_same_outputs_state_and_gradients_as_the_explicit_loop(name, reverse, valid):
    torch.manual_seed(0)
    cell = CELLS[name]()
    x = torch.randn(3, 5, 3, requires_grad=True)
    state = tuple(torch.randn(3, size, requires_grad=True) for size in cell.state_sizes)
    hand = results_and_gradients(lambda *a: run_sequence(*a, valid=valid, reverse=reverse), cell, x, state)
    loop = results_and_gradients(lambda *a: explicit_loop(*a, valid=valid, reverse=reverse), cell, x, state)
    assert len(hand) == len(loop)
    for a, b in zip(hand, loop):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    if valid is not None:
        assert torch.all(hand[0][~valid] == 0)


@pytest.mark.parametrize("kind, options", [("elman", {"nonlinearity": "relu"}), ("jordan", {"output_size": 2}),
                                           ("multilag", {"lags": 2}), ("lstm", {}), ("gru", {})], ids=str)
def test_both_directions_of_a_bidirectional_layer_match_recurrent_loop_path(kind, options):
    torch.manual_seed(1)
    layer = Recurrent(kind, 3, 4, bidirectional=True, **options)
    x = torch.randn(3, 5, 3)
    state = tuple(torch.randn(2, 3, size) for size in layer.state_sizes)
    outputs, final = layer(x, state[0] if len(state) == 1 else state, mask=VALID, path="loop")
    hand = [run_sequence(cell, x, tuple(s[d] for s in state), VALID, reverse=d == 1)
            for d, cell in enumerate(layer.cells)]
    torch.testing.assert_close(torch.cat([o for o, _ in hand], dim=-1), outputs, rtol=0, atol=1e-12)
    final = final if isinstance(final, tuple) else (final,)
    for i, expected in enumerate(final):
        torch.testing.assert_close(torch.stack([s[i] for _, s in hand]), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batch, steps", [(1, 1), (1, 3), (2, 1)])
def test_one_step_and_one_sequence(name, batch, steps):
    torch.manual_seed(5)
    cell = CELLS[name]()
    x = torch.randn(batch, steps, 3, requires_grad=True)
    state = tuple(torch.randn(batch, size, requires_grad=True) for size in cell.state_sizes)
    hand = results_and_gradients(lambda *a: run_sequence(*a, reverse=True), cell, x, state)
    loop = results_and_gradients(lambda *a: explicit_loop(*a, reverse=True), cell, x, state)
    for a, b in zip(hand, loop):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


GATES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
FUNCTIONS = {  # cell class → (its Function, the parameters that Function takes, in order)
    ElmanCell: (ElmanSequence, GATES),
    MultiLagCell: (ElmanSequence, GATES),
    JordanCell: (JordanSequence, ("weight_ih", "bias_ih", "weight_yh", "weight_hy", "bias_hy")),
    LSTMCell: (LSTMSequence, GATES),
    GRUCell: (GRUSequence, GATES),
    LayerNormLSTMCell: (LayerNormLSTMSequence, ("weight_ih", "weight_hh", "bias", "ln_ih_weight", "ln_ih_bias",
                                                "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias")),
}


def function_inputs(name, batch=2, steps=4):
    """(Function, its differentiable inputs, its options after `valid`) for a tiny random layer."""
    cell = CELLS[name]()
    function, names = FUNCTIONS[type(cell)]
    if function is ElmanSequence:  # one state, the K lags side by side
        states = [torch.randn(batch, sum(cell.state_sizes))]
    else:
        states = [torch.randn(batch, size) for size in cell.state_sizes]
    x = torch.randn(batch, steps, cell.input_size)
    inputs = [t.detach().clone().requires_grad_() for t in [x, *states, *(getattr(cell, n) for n in names)]]
    return function, inputs, tuple(getattr(cell, n) for n in ("nonlinearity", "eps") if hasattr(cell, n))


@pytest.mark.parametrize("name", ["elman-tanh", "elman-relu", "jordan", "multilag-3", "lstm", "gru",
                                  "layernorm-lstm"])
@pytest.mark.parametrize("valid", [None, VALID[1:, :4]], ids=["full", "padded"])
def test_gradcheck(name, valid):
    assert gradcheck_function(name, valid)


def gradcheck_function(name, valid) -> bool:
    """torch.autograd.gradcheck of the cell's Function on a tiny random layer (float64)."""
    torch.manual_seed(2)
    function, inputs, options = function_inputs(name)
    return torch.autograd.gradcheck(lambda *tensors: function.apply(*tensors, valid, *options), inputs)


def graph_size(node) -> int:
    """Number of autograd nodes reachable from `node`."""
    seen, todo = set(), [node]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(n for n, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("name", ["elman-tanh", "jordan", "multilag-2", "lstm", "gru", "layernorm-lstm"])
def test_one_backward_node_holding_only_per_step_buffers(name):
    """No per-step autograd graph: one node whatever T, whose saved tensors are O(T·B·H)."""
    torch.manual_seed(3)
    for steps in (4, 40):
        function, inputs, options = function_inputs(name, batch=2, steps=steps)
        outputs = function.apply(*inputs, None, *options)
        node = outputs[0].grad_fn
        assert type(node).__name__ == f"{function.__name__}Backward"
        assert graph_size(node) == 1 + len(inputs)  # this node and the inputs' AccumulateGrad
        parameters = sum(t.numel() for t in inputs[1:])
        saved = sum(t.numel() for t in node.saved_tensors if t is not None)
        assert saved <= (steps + 1) * 2 * (3 + 6 * 4 * 4) + parameters  # ≤ 6 (B, 4H) blocks a step
        with torch.no_grad():
            plain = function.apply(*inputs, None, *options)
        assert plain[0].grad_fn is None
        torch.testing.assert_close(plain[0], outputs[0], rtol=0, atol=0)


def test_backward_runs_once_per_sequence():
    torch.manual_seed(4)
    calls = []

    class Counted(LSTMSequence):
        @staticmethod
        def backward(ctx, *grads):
            calls.append(1)
            return LSTMSequence.backward(ctx, *grads)

    _, inputs, _ = function_inputs("lstm", steps=6)
    outputs, h, c = Counted.apply(*inputs, None)
    (outputs.sum() + h.sum() + c.sum()).backward()
    assert calls == [1] and all(t.grad is not None for t in inputs)


@pytest.mark.parametrize("name", ["elman-tanh", "multilag-2", "jordan", "gru", "layernorm-lstm"])
def test_reused_backward_buffers_never_reach_the_gradients(name):
    """These cells' backward keep their (T, B, gates·H) temporaries for the next call of that shape
    (bptt._scratch): gradients they returned stay as they were after another layer's backward, and
    a retained graph backpropagates a second time to the same gradients."""
    torch.manual_seed(5)
    function, inputs, options = function_inputs(name, steps=6)
    outputs = function.apply(*inputs, None, *options)
    first = torch.autograd.grad(outputs[0].sum(), inputs, retain_graph=True)
    kept = [gradient.clone() for gradient in first]
    _, other_inputs, _ = function_inputs(name, steps=6)
    other = function.apply(*other_inputs, None, *options)
    torch.autograd.grad(other[0].square().sum(), other_inputs)
    for gradient, copy in zip(first, kept):
        torch.testing.assert_close(gradient, copy, rtol=0, atol=0)
    for gradient, copy in zip(torch.autograd.grad(outputs[0].sum(), inputs), kept):
        torch.testing.assert_close(gradient, copy, rtol=0, atol=0)


def test_unknown_cell_is_refused():
    with pytest.raises(TypeError, match="no hand-derived BPTT"):
        run_sequence(torch.nn.Linear(3, 4), torch.randn(1, 2, 3), (torch.zeros(1, 4),))


@pytest.mark.parametrize("name", CELLS)
def test_under_bf16_autocast_the_functions_run_in_the_weights_float_type(name):
    """TrainConfig.precision="bf16" autocasts the forward pass; the hand-written backward does not
    mix dtypes, so the Functions run unchanged (here float64), outputs and gradients alike."""
    torch.manual_seed(0)
    cell = CELLS[name]()
    x = torch.randn(3, 5, 3, requires_grad=True)
    state = tuple(torch.randn(3, size, requires_grad=True) for size in cell.state_sizes)
    plain = results_and_gradients(run_sequence, cell, x, state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = results_and_gradients(run_sequence, cell, x, state)
    for a, b in zip(plain, autocast):
        assert b.dtype == a.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def python_loops(monkeypatch):
    """Run the Functions on their Python loops, as where rnnkit.kernels cannot be built."""
    monkeypatch.setattr(bptt, "_compiled", lambda name, like: None)


def test_the_compiled_loops_build_here():
    """gcc is part of this project's set-up; if the build fails, the fast path is silently lost."""
    assert kernels.ops() is not None, "rnnkit.kernels could not build rnnkit/csrc (see the warning logged)"


COMPILED = ["elman-tanh", "elman-relu", "jordan", "multilag-2", "multilag-3", "lstm", "gru", "layernorm-lstm"]  # rnnkit/csrc


@pytest.mark.parametrize("name", ["elman-relu", "jordan", "multilag-3", "lstm", "gru", "layernorm-lstm"])
@pytest.mark.parametrize("valid", [None, VALID[1:, :4]], ids=["full", "padded"])
def test_gradcheck_of_the_python_loops(python_loops, name, valid):
    assert gradcheck_function(name, valid)


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("valid", [None, HOLES], ids=["full", "holes"])
@pytest.mark.parametrize("hidden", [4, 13, 29])
def test_compiled_loops_match_the_python_ones(monkeypatch, name, dtype, tolerance, valid, hidden):
    """Within float rounding: the LayerNorm-LSTM loop sums in another order than ATen's kernels.
    hidden 13: the float loops' 8-wide vector code and a scalar tail in every row; 29: their
    16-wide code too, where the build has AVX512."""
    assert kernels.ops() is not None
    torch.manual_seed(3)
    cell = CELLS[name](hidden).to(dtype)
    x = torch.randn(3, 5, 3, dtype=dtype, requires_grad=True)
    state = tuple(torch.randn(3, size, dtype=dtype, requires_grad=True) for size in cell.state_sizes)
    compiled = results_and_gradients(lambda *a: run_sequence(*a, valid=valid), cell, x, state)
    monkeypatch.setattr(bptt, "_compiled", lambda name, like: None)
    python = results_and_gradients(lambda *a: run_sequence(*a, valid=valid), cell, x, state)
    for a, b in zip(compiled, python):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", ["elman-tanh", "multilag-2", "lstm"])
@pytest.mark.parametrize("batch", [1, 2, 6, 7, 13])
def test_compiled_float_loops_match_the_python_ones_at_every_block_of_rows(monkeypatch, name, batch):
    """The AVX2 build's float step products (gemm.h's panels) take blocks of 1-6 rows of C (7
    rows: 3 and 4; 13: 4, 4 and 5), and 16 columns at a time, the last panel masked (hidden 20:
    20, 40 and 80 columns); Elman's rows lie T·K·H apart, multi-lag's product adds to its carry
    (beta 1). Any batch: the Python loop's results within float rounding."""
    assert kernels.ops() is not None
    torch.manual_seed(batch)
    cell = CELLS[name](20).float()
    x = torch.randn(batch, 6, 3, dtype=torch.float32, requires_grad=True)
    state = tuple(torch.randn(batch, size, dtype=torch.float32, requires_grad=True) for size in cell.state_sizes)
    compiled = results_and_gradients(run_sequence, cell, x, state)
    monkeypatch.setattr(bptt, "_compiled", lambda name, like: None)
    python = results_and_gradients(run_sequence, cell, x, state)
    for a, b in zip(compiled, python):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, inner, outputs", [(1, 3, 5), (97, 20, 16), (203, 64, 45), (6000, 64, 100)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_the_panel_projection_is_nn_linear(torch_threads, rows, inner, outputs, with_bias, threads):
    """The AVX2 build's whole-sequence products (_project through csrc/projection.cpp): X Wᵀ + b
    as F.linear computes it, within float rounding, for rows that are not whole blocks of 6 or
    tasks of 96, a masked last panel (5, 45 and 100 columns), and, at 6000 rows, the rows shared
    between two threads; into a given `out` the same values, and an `out` of the wrong shape refused."""
    linear = bptt._panel_linear()
    if linear is None:
        pytest.skip("this build of rnnkit.kernels has no panel kernel (AVX512, or no AVX2)")
    torch.manual_seed(rows)
    x, weight = torch.randn(rows, inner, dtype=torch.float32), torch.randn(outputs, inner, dtype=torch.float32)
    bias = torch.randn(outputs, dtype=torch.float32) if with_bias else None
    torch_threads(threads)
    got = bptt._project(x, weight, bias)
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5 * inner ** 0.5)
    torch.testing.assert_close(bptt._project(x, weight.t().contiguous().t(), bias), got, rtol=0, atol=0)
    out = torch.full((rows, outputs), float("nan"), dtype=torch.float32)
    assert bptt._project(x, weight, bias, out=out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, got, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="out must be a contiguous float32"):
        bptt._project(x, weight, bias, out=torch.empty(rows, outputs + 1, dtype=torch.float32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, columns, inputs", [(0, 16, 3), (7, 16, 0), (1, 16, 3), (255, 1024, 7), (513, 1030, 9),
                                                   (600, 2048, 64)])
def test_the_panel_weight_gradient_is_delta_transposed_times_x(torch_threads, rows, columns, inputs, threads):
    """The AVX2 build's weight gradients (csrc/projection.cpp's weight_gradient): deltaᵀ x within
    float rounding, for rows that are not whole blocks of 256 (nor of the 8 × 8 transposes), a
    masked last panel (1030 columns), inputs not a multiple of 8, no rows or no inputs at all, and
    at two threads each thread's share of delta's columns."""
    weight_gradient = bptt._panel_weight_gradient()
    if weight_gradient is None:
        pytest.skip("this build of rnnkit.kernels has no panel kernel (AVX512, or no AVX2)")
    torch.manual_seed(rows)
    delta, x = torch.randn(rows, columns, dtype=torch.float32), torch.randn(rows, inputs, dtype=torch.float32)
    torch_threads(threads)
    got = weight_gradient(delta, x)
    expected = (delta.double().t() @ x.double()).float()
    assert got.shape == (columns, inputs) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * max(rows, 1) ** 0.5)


def test_weight_gradients_take_the_panel_kernel_on_one_thread_from_1024_columns(monkeypatch, torch_threads):
    """_weight_gradient hands deltaᵀ x to the panel kernel where it was measured faster than MKL
    (one thread, delta at least bptt.PANEL_GRADIENT_COLUMNS wide), and to torch.mm elsewhere."""
    calls = []

    def recorded(delta, x):
        calls.append(delta.shape)
        return delta.t() @ x
    monkeypatch.setattr(bptt, "_panel_weight_gradient", lambda: recorded)
    x = torch.randn(50, 8, dtype=torch.float32)
    for threads, columns in [(1, bptt.PANEL_GRADIENT_COLUMNS), (1, bptt.PANEL_GRADIENT_COLUMNS - 1),
                             (2, bptt.PANEL_GRADIENT_COLUMNS)]:
        torch_threads(threads)
        delta = torch.randn(50, columns, dtype=torch.float32)
        torch.testing.assert_close(bptt._weight_gradient(delta, x), delta.t() @ x)
        torch.testing.assert_close(bptt._weight_gradient(delta.double(), x.double()), delta.double().t() @ x.double())
    assert calls == [(50, bptt.PANEL_GRADIENT_COLUMNS)]


# cells whose every step's product at batch 8 reaches csrc/gemm.h's kPackedProductWork: 2^23
# multiply-adds in the AVX512 build, 2^25 in the others (hidden sizes twice as wide)
WIDER = 1 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 2
LARGE_STEP_CELLS = {
    "elman-tanh": lambda: ElmanCell(3, 1024 * WIDER),
    "jordan": lambda: JordanCell(3, 1024 * WIDER, output_size=1024 * WIDER),
    "multilag-2": lambda: MultiLagCell(3, 1024 * WIDER, lags=2),
    "lstm": lambda: LSTMCell(3, 600 * WIDER),
    "gru": lambda: GRUCell(3, 600 * WIDER),
    "layernorm-lstm": lambda: perturbed_layer_norm_lstm(3, 600 * WIDER),
}


@pytest.mark.parametrize("name", LARGE_STEP_CELLS)
def test_compiled_loops_take_large_step_products_through_onednn(monkeypatch, torch_threads, name):
    """From kPackedProductWork multiply-adds a step (here 8 rows) the float loops' products run
    through oneDNN with the weight packed once (csrc/gemm.h's StepProduct), Elman's on rows T·K·H
    apart: the same results and gradients as the Python loop within float rounding (the
    LayerNorm-LSTM's largest errors from the float64 loop were 1.5-2x sgemm's and ATen's), and not
    bit for bit those of MKL's sgemm (torch.backends.mkldnn off), which shows that the other path
    ran. The AVX2 build takes oneDNN's only with more than one thread (on one, gemm.h's panels)."""
    assert kernels.ops() is not None and torch.backends.mkldnn.is_available()
    torch.manual_seed(5)
    cell = LARGE_STEP_CELLS[name]().float()
    x = torch.randn(8, 4, 3, dtype=torch.float32, requires_grad=True)
    state = tuple((0.5 * torch.randn(8, size, dtype=torch.float32)).requires_grad_() for size in cell.state_sizes)
    valid = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]] * 2, dtype=torch.bool)
    run = lambda *a: run_sequence(*a, valid=valid)
    threads = torch.get_num_threads()
    torch_threads(max(threads, 2))
    onednn = results_and_gradients(run, cell, x, state)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    sgemm = results_and_gradients(run, cell, x, state)
    torch_threads(threads)
    monkeypatch.setattr(bptt, "_compiled", lambda name, like: None)
    python = results_and_gradients(run, cell, x, state)
    for a, b, c in zip(onednn, sgemm, python):  # within 1e-5 of each tensor's largest entry
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5 * c.abs().max().item())
        torch.testing.assert_close(b, c, rtol=0, atol=1e-5 * c.abs().max().item())
    assert not all(torch.equal(a, b) for a, b in zip(onednn, sgemm))


def test_large_projections_go_through_onednn(monkeypatch):
    """Where the build has no panel kernel (AVX512), from bptt.ONEDNN_PROJECTION_WORK multiply-adds
    a float32 projection over all steps (X W_ihᵀ + b, and Δ W_ih as _project(Δ, W_ihᵀ)) is oneDNN's:
    equal to mm within float rounding, and not bit for bit mm's (torch.backends.mkldnn off), which
    shows that the other path ran."""
    monkeypatch.setattr(bptt, "_panel_linear", lambda: None)
    torch.manual_seed(0)
    xs, weight, bias = (torch.randn(*shape, dtype=torch.float32) for shape in [(2048, 256), (256, 256), (256,)])
    assert xs.shape[0] * xs.shape[1] * weight.shape[0] >= bptt.ONEDNN_PROJECTION_WORK
    onednn = [bptt._project(xs, weight, bias), bptt._project(xs, weight.t())]
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    mm = [bptt._project(xs, weight, bias), bptt._project(xs, weight.t())]
    expected = [xs.double() @ weight.double().t() + bias.double(), xs.double() @ weight.double()]
    for a, b, c in zip(onednn, mm, expected):
        torch.testing.assert_close(a.double(), c, rtol=0, atol=1e-4)
        torch.testing.assert_close(b.double(), c, rtol=0, atol=1e-4)
        assert not torch.equal(a, b)


def test_layernorm_lstm_loop_is_as_accurate_as_atens_float32():
    """Its layer norms amplify rounding along the sequence, so the compiled float32 loop (its own
    activations and moments) must stay about as close to exact arithmetic (the float64 loop) as
    ATen's float32 kernels (the Python loop) do. Over 40 steps and 10 seeds its largest errors
    summed to 0.97x ATen's; the bound is 2x. Rounding differences grow chaotically (per seed
    0.2-2.8x; 30 seeds at hidden 29 read 1.34x), so this guards against a loop that is grossly less
    accurate, not a finer loss: a tanh computed as 2σ(2x) - 1, less accurate near 0, read 1.27x."""
    assert kernels.ops() is not None
    compiled_error = aten_error = 0.0
    for seed in range(10):
        torch.manual_seed(seed)
        cell = perturbed_layer_norm_lstm(3, 13)
        x = torch.randn(4, 40, 3)
        state = tuple(0.5 * torch.randn(4, 13) for _ in cell.state_sizes)
        with torch.no_grad():
            exact = run_sequence(cell, x, state)[0]
            cell32, x32, state32 = cell.float(), x.float(), tuple(s.float() for s in state)
            compiled = run_sequence(cell32, x32, state32)[0]
            with pytest.MonkeyPatch.context() as monkeypatch:
                monkeypatch.setattr(bptt, "_compiled", lambda name, like: None)
                aten = run_sequence(cell32, x32, state32)[0]
        compiled_error += (compiled.double() - exact).abs().max().item()
        aten_error += (aten.double() - exact).abs().max().item()
    assert compiled_error <= 2 * aten_error, (compiled_error, aten_error)


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_loops_take_weights_stored_transposed(name):
    """A parameter may be a non-contiguous view (here each matrix stored transposed): the compiled
    loops read weights by raw pointer, so they must make them contiguous, not misread them."""
    torch.manual_seed(3)
    cell = CELLS[name]()
    x = torch.randn(3, 5, 3, requires_grad=True)
    state = tuple(torch.randn(3, size, requires_grad=True) for size in cell.state_sizes)
    expected = results_and_gradients(lambda *a: run_sequence(*a, valid=HOLES), cell, x, state)
    with torch.no_grad():
        for parameter in cell.parameters():
            if parameter.dim() == 2:
                parameter.data = parameter.data.t().contiguous().t()
    assert any(not parameter.is_contiguous() for parameter in cell.parameters())
    transposed = results_and_gradients(lambda *a: run_sequence(*a, valid=HOLES), cell, x, state)
    for a, b in zip(expected, transposed):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
