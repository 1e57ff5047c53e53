import itertools

import pytest
import torch
from torch import nn

from rnnkit import recurrent
from rnnkit.recurrent import Recurrent

pytestmark = pytest.mark.usefixtures("float64")

FUSED_CELLS = [("elman", {}), ("elman", {"nonlinearity": "relu"}), ("lstm", {}), ("gru", {})]
ALL_CELLS = FUSED_CELLS + [("jordan", {}), ("jordan", {"output_size": 3}), ("multilag", {"lags": 3})]
LENGTHS = [None, [6, 4, 1]]


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def outputs_and_gradients(layer, x, path, lengths=None):
    """Forward through `path`, then gradients of a loss that touches outputs and final state."""
    outputs, state = layer(x, lengths=lengths, path=path)
    loss = (outputs.sin() * torch.arange(outputs.shape[-1])).sum()
    loss = loss + sum((s ** 2 * (i + 1)).sum() for i, s in enumerate(as_tuple(state)))
    return outputs, as_tuple(state), torch.autograd.grad(loss, [x, *layer.parameters()])


# Each fast path against the loop: the fused kernels for the cells that have one (up to 3
# layers), hand BPTT for every cell (up to 2 layers).
PATH_CASES = (
    [("fused", cell, options, layers) for cell, options in FUSED_CELLS for layers in (1, 2, 3)]
    + [("bptt", cell, options, layers) for cell, options in ALL_CELLS + [("lnlstm", {})] for layers in (1, 2)]
)


@pytest.mark.parametrize("path, cell, options, num_layers", PATH_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("bidirectional, lengths", list(itertools.product([False, True], LENGTHS)))
def test_fast_paths_agree_with_the_loop(path, cell, options, num_layers, bidirectional, lengths):
    torch.manual_seed(0)
    layer = Recurrent(cell, 4, 5, num_layers=num_layers, bidirectional=bidirectional,
                      initial_state="learned", **options)
    with torch.no_grad():
        for init in layer.initial_state:
            init.normal_()
    x = torch.randn(3, 6, 4, requires_grad=True)
    fast = outputs_and_gradients(layer, x, path, lengths)
    loop = outputs_and_gradients(layer, x, "loop", lengths)
    for a, b in zip(itertools.chain(*fast), itertools.chain(*loop)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


@pytest.mark.parametrize("cell, torch_rnn", [("elman", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_same_function_as_torch_module_with_copied_weights(cell, torch_rnn):
    torch.manual_seed(1)
    layer = Recurrent(cell, 4, 5, num_layers=2, bidirectional=True)
    reference = torch_rnn(4, 5, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for name, weight in reference.named_parameters():  # e.g. weight_hh_l1_reverse
            layer_index = int(name.split("_l")[1].split("_")[0])
            index = 2 * layer_index + name.endswith("_reverse")
            weight.copy_(getattr(layer.cells[index], name.split("_l")[0]))
    x = torch.randn(2, 7, 4)
    expected_outputs, expected_state = reference(x)
    for path in ("fused", "loop"):
        outputs, state = layer(x, path=path)
        torch.testing.assert_close(outputs, expected_outputs, rtol=0, atol=1e-10)
        for a, b in zip(as_tuple(state), as_tuple(expected_state)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell, options", ALL_CELLS, ids=lambda v: str(v))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_steps_change_neither_state_nor_outputs(cell, options, bidirectional):
    """A padded sequence gives what the same sequence gives alone, at its own length."""
    torch.manual_seed(2)
    layer = Recurrent(cell, 3, 4, num_layers=2, bidirectional=bidirectional, **options)
    x = torch.randn(3, 5, 3)
    lengths = torch.tensor([5, 2, 3])
    padded = x.clone()
    padded[1, 2:] = 100.0  # garbage on padded steps must not leak anywhere
    padded[2, 3:] = -7.0
    outputs, state = layer(padded, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        alone_outputs, alone_state = layer(x[b:b + 1, :length])
        torch.testing.assert_close(outputs[b:b + 1, :length], alone_outputs, rtol=0, atol=1e-12)
        assert torch.all(outputs[b, length:] == 0)
        for a, c in zip(as_tuple(state), as_tuple(alone_state)):
            torch.testing.assert_close(a[:, b:b + 1], c, rtol=0, atol=1e-12)


def test_mask_is_the_same_as_lengths():
    layer = Recurrent("gru", 3, 4)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    by_mask = layer(x, mask=mask)
    by_lengths = layer(x, lengths=[3, 4])
    torch.testing.assert_close(by_mask[0], by_lengths[0])
    torch.testing.assert_close(by_mask[1], by_lengths[1])


@pytest.mark.parametrize("cell, options", ALL_CELLS, ids=lambda v: str(v))
def test_given_state_continues_the_sequence(cell, options):
    """Running a sequence in two chunks, carrying the state, equals one pass (the basis of TBPTT)."""
    torch.manual_seed(3)
    layer = Recurrent(cell, 3, 4, num_layers=2, **options)
    x = torch.randn(2, 9, 3)
    whole, whole_state = layer(x)
    first, state = layer(x[:, :4])
    second, state = layer(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=0, atol=1e-12)
    for a, b in zip(as_tuple(state), as_tuple(whole_state)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell, options", ALL_CELLS + [("lnlstm", {})], ids=lambda v: str(v))
@pytest.mark.parametrize("initial_state", ["zeros", "learned"])
def test_step_is_forward_over_one_step(cell, options, initial_state):
    """Recurrent.step (generation, through torch.lstm_cell & co. where the cell has one) gives
    forward's outputs and states, step after step, from the initial state and from a given one."""
    torch.manual_seed(4)
    layer = Recurrent(cell, 3, 4, num_layers=2, initial_state=initial_state, **options).eval()
    if initial_state == "learned":
        with torch.no_grad():
            for init in layer.initial_state:
                init.normal_()
    x = torch.randn(2, 5, 3)
    whole, whole_state = layer(x)
    state = None
    for t in range(5):
        output, state = layer.step(x[:, t], state)
        torch.testing.assert_close(output, whole[:, t], rtol=0, atol=1e-12)
    for a, b in zip(as_tuple(state), as_tuple(whole_state)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_step_refuses_a_bidirectional_layer():
    with pytest.raises(ValueError, match="bidirectional"):
        Recurrent("gru", 3, 4, bidirectional=True).step(torch.randn(2, 3))


@pytest.mark.parametrize("cell", ["lstm", "multilag"])
def test_learned_initial_state_is_trained(cell):
    layer = Recurrent(cell, 2, 3, num_layers=2, bidirectional=True, initial_state="learned")
    outputs, _ = layer(torch.randn(4, 5, 2))
    outputs.sum().backward()
    assert len(layer.initial_state) == len(layer.state_sizes)
    for init in layer.initial_state:
        assert init.shape == (4, 3) and init.grad is not None and init.grad.abs().sum() > 0


def test_jordan_layers_stack_on_output_size():
    layer = Recurrent("jordan", 3, 8, num_layers=2, bidirectional=True, output_size=2)
    outputs, state = layer(torch.randn(5, 6, 3))
    assert outputs.shape == (5, 6, 4) and state.shape == (4, 5, 2)
    assert layer.cells[2].input_size == 4


def test_time_major_input():
    layer = Recurrent("lstm", 3, 4, batch_first=False)
    x = torch.randn(6, 2, 3)  # (time, batch, features)
    outputs, _ = layer(x)
    batch_major = Recurrent("lstm", 3, 4)
    batch_major.load_state_dict(layer.state_dict())
    torch.testing.assert_close(outputs, batch_major(x.transpose(0, 1))[0].transpose(0, 1))


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(4)
    layer = Recurrent("gru", 3, 16, num_layers=2, dropout=0.5)
    x = torch.randn(2, 5, 3)
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])
    layer.train()
    assert not torch.equal(layer(x, path="loop")[0], layer(x, path="loop")[0])


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "jordan", "multilag", "lnlstm"])
def test_weight_dropout_uses_one_mask_for_every_step_on_every_path(cell):
    """With the same random draw, the loop (which reads W_hh at every step) equals the paths
    that read it once, so each step saw the same dropped matrix; eval mode drops nothing."""
    torch.manual_seed(0)
    layer = Recurrent(cell, 3, 6, num_layers=2, weight_dropout=0.4)
    x = torch.randn(2, 9, 3)
    paths = ["loop", "bptt"] + (["fused"] if layer.fused_mode else [])
    runs = {}
    for path in paths:
        torch.manual_seed(1)
        outputs, _ = layer(x, path=path)
        outputs.square().sum().backward()
        dropped = layer.cells[0].parametrizations[layer.cells[0].recurrent_weight]
        runs[path] = outputs.detach(), dropped.original.grad.clone()
        layer.zero_grad()
    for path in paths[1:]:
        torch.testing.assert_close(runs[path], runs["loop"])
    grad = runs["loop"][1]
    assert 0.2 < (grad == 0).double().mean() < 0.6  # dropped entries get no gradient
    plain = Recurrent(cell, 3, 6, num_layers=2)
    name = plain.cells[0].recurrent_weight
    plain.load_state_dict({k.replace(f"parametrizations.{name}.original", name): v
                           for k, v in layer.state_dict().items()})
    layer.eval()
    torch.testing.assert_close(layer(x)[0], plain(x)[0])
    layer.train()
    assert not torch.allclose(layer(x)[0], plain(x)[0])


@pytest.mark.parametrize("call, argument", [
    (lambda r: r(torch.randn(2, 3)), "3-D"),
    (lambda r: r(torch.randn(2, 3, 5)), "input_size=4"),
    (lambda r: r(torch.randn(2, 0, 4)), "time steps"),
    (lambda r: r(torch.randn(2, 3, 4), lengths=[3, 0]), "lengths"),
    (lambda r: r(torch.randn(2, 3, 4), lengths=[3]), "lengths"),
    (lambda r: r(torch.randn(2, 3, 4), mask=torch.tensor([[1, 0, 1], [1, 1, 1]])), "left-aligned"),
    (lambda r: r(torch.randn(2, 3, 4), state=torch.zeros(1, 2, 5)), "state"),
    (lambda r: r(torch.randn(2, 3, 4), path="cuda"), "path"),
])
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call(Recurrent("lstm", 4, 5))


@pytest.mark.parametrize("build, argument", [
    (lambda: Recurrent("lstm", 4, 5, num_layers=0), "num_layers"),
    (lambda: Recurrent("lstm", 4, 5, dropout=1.0), "dropout"),
    (lambda: Recurrent("lstm", 4, 5, weight_dropout=-0.1), "weight_dropout"),
    (lambda: Recurrent("lstm", 4, 5, initial_state="random"), "initial_state"),
    (lambda: Recurrent("lstm", 4, 0), "hidden_size"),
    (lambda: Recurrent("jordan", 4, 5)(torch.randn(1, 2, 4), path="fused"), "fused"),
])
def test_bad_configuration_names_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


@pytest.mark.parametrize("cell", ["elman", "lstm", "multilag"])
def test_step_hook_exposes_the_gradient_reaching_each_step(cell):
    """∂L/∂h_t read through the hook equals the gradient computed by running from h_t on."""
    torch.manual_seed(5)
    layer = Recurrent(cell, 2, 3)
    x = torch.randn(1, 4, 2)
    seen = {}

    def keep(layer_index, direction, t, output):
        output.retain_grad()
        seen[t] = output

    layer.step_hook = keep
    outputs, _ = layer(x)
    outputs[:, -1].sum().backward()
    assert sorted(seen) == [0, 1, 2, 3]
    # ∂(h_3 summed)/∂h_3 is all ones; the earlier ones come back through the recurrence.
    torch.testing.assert_close(seen[3].grad, torch.ones(1, 3))
    assert all(seen[t].grad.abs().sum() > 0 for t in range(3))
    if cell == "elman":  # ∂L/∂h_2 = W_hhᵀ (∂L/∂h_3 ⊙ (1 − h_3²))
        h3 = seen[3].detach()
        expected = (torch.ones(1, 3) * (1 - h3 ** 2)) @ layer.cells[0].weight_hh.detach()
        torch.testing.assert_close(seen[2].grad, expected)


def test_step_hook_refuses_the_fused_path():
    with pytest.raises(ValueError, match="step_hook"):
        layer = Recurrent("gru", 2, 3)
        layer.step_hook = lambda *a: None
        layer(torch.randn(1, 2, 2), path="fused")


@pytest.mark.parametrize("steps, cell, hidden, expected", [
    (1, "lstm", 3, "loop"), (5, "gru", 3, "loop"), (6, "lstm", 3, "bptt"), (6, "lstm", 256, "bptt"),
    (6, "lstm", 512, "bptt"),
    (6, "elman", 3, "bptt"), (6, "gru", 3, "bptt"), (6, "gru", 512, "bptt"),
    (6, "jordan", 3, "bptt"), (50, "multilag", 3, "bptt"), (50, "lnlstm", 3, "bptt"), (1, "multilag", 3, "loop"),
])
def test_auto_path_rule(monkeypatch, steps, cell, hidden, expected):
    """Short sequences on CPU take the loop (the fused kernels' per-call set-up dominates);
    training takes hand BPTT where it measured faster than the fused kernel (every cell at the
    bench's sizes on an AVX2 CPU)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    layer = Recurrent(cell, 2, hidden)
    assert layer._fastest_path(torch.randn(1, steps, 2)) == expected
    with torch.no_grad():  # without gradients the fused forward wins
        assert layer._fastest_path(torch.randn(1, steps, 2)) == ("fused" if layer.fused_mode and steps > 5 else expected)
    layer.step_hook = lambda *a: None
    assert layer._fastest_path(torch.randn(1, steps, 2)) == "loop"


@pytest.mark.parametrize("cell, hidden, expected", [
    ("lstm", 3, "fused"), ("lstm", 255, "fused"), ("lstm", 256, "bptt"), ("lstm", 512, "fused"), ("gru", 3, "bptt"),
    ("gru", 512, "bptt"), ("elman", 3, "bptt"), ("lnlstm", 3, "bptt")])
def test_auto_path_rule_with_avx512(monkeypatch, cell, hidden, expected):
    """With AVX512 the fused LSTM (oneDNN's) trained faster at the bench's small and large shapes and
    hand BPTT at the medium one (H = 256); GRU and Elman keep hand BPTT."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert Recurrent(cell, 2, hidden)._fastest_path(torch.randn(1, 6, 2)) == expected


@pytest.mark.parametrize("cell, hidden, expected", [
    ("lstm", 3, "fused"), ("lstm", 256, "fused"), ("gru", 3, "bptt"), ("gru", 256, "fused"), ("elman", 3, "bptt"),
    ("elman", 256, "fused"), ("lnlstm", 256, "bptt")])
def test_auto_path_rule_under_bf16_autocast(monkeypatch, cell, hidden, expected):
    """Hand BPTT runs in float32 under autocast, the fused kernels in bf16: the fused LSTM trains faster at
    every size, the fused GRU and Elman from 256 units."""
    layer = Recurrent(cell, 2, hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._fastest_path(torch.randn(1, 6, 2)) == expected
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with torch.autocast("cpu", dtype=torch.float16):  # not bf16: the float32 rule
        assert layer._fastest_path(torch.randn(1, 6, 2)) == "bptt"


@pytest.mark.parametrize("cell, hidden, expected", [
    ("lstm", 3, "fused"), ("lstm", 512, "fused"), ("gru", 3, "fused"), ("gru", 512, "bptt"), ("elman", 3, "bptt")])
def test_auto_path_rule_without_the_compiled_loops(monkeypatch, cell, hidden, expected):
    """The Python LSTM loop trains at half the fused kernel's speed at small sizes, the GRU's at par."""
    monkeypatch.setattr(recurrent.kernels, "ops", lambda: None)
    assert Recurrent(cell, 2, hidden)._fastest_path(torch.randn(1, 6, 2)) == expected
