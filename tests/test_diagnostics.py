import csv

import matplotlib.image
import pytest
import torch

from rnnkit.models import Seq2Seq, SequenceModel
from rnnkit.recurrent import Recurrent
from rnnkit.train.diagnostics import (
    DECAY_CONFIGURATIONS,
    UpdateRatio,
    append_gradient_flow_csv,
    capture_steps,
    format_summary,
    gradient_decay_experiment,
    gradient_flow_rows,
    run_diagnose,
    update_ratio,
)

ELMAN, EXPLODING, CLIPPED = list(DECAY_CONFIGURATIONS)[:3]


def _recurrents(model):
    return [m for m in model.modules() if isinstance(m, Recurrent)]


def test_gradient_flow_has_one_row_per_layer_direction_and_step_and_leaves_grads_alone():
    torch.manual_seed(0)
    model = SequenceModel(8, 11, 6, cell="lstm", vocab_size=11, num_layers=2, bidirectional=True)
    tokens = torch.randint(0, 11, (3, 5))
    targets = torch.randint(0, 11, (3, 5))

    def loss_fn():
        logits, _ = model(tokens)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    rows = gradient_flow_rows(model, loss_fn)
    keys = [(row["layer"], row["direction"], row["t"]) for row in rows]
    assert sorted(keys) == [(l, d, t) for l in range(2) for d in range(2) for t in range(5)]
    assert all(row["grad_norm"] > 0 for row in rows)
    assert all(p.grad is None for p in model.parameters())
    assert all(r.step_hook is None for r in _recurrents(model))


def test_gradient_flow_equals_the_gradient_of_a_manual_unroll(float64):
    torch.manual_seed(1)
    layer = Recurrent("elman", 3, 4)
    x = torch.randn(2, 6, 3)
    weights = torch.randn(6, 4)  # a loss term at every step, so ∂L/∂h_t gathers them all

    rows = gradient_flow_rows(layer, lambda: (layer(x)[0] * weights).sum())

    cell = layer.cells[0]
    h, hs = torch.zeros(2, 4), []
    for t in range(6):
        h, _ = cell(x[:, t], (h,))
        hs.append(h)
    loss = (torch.stack(hs, dim=1) * weights).sum()
    expected = [g.norm().item() for g in torch.autograd.grad(loss, hs)]
    assert [row["t"] for row in rows] == list(range(6))
    assert [row["grad_norm"] for row in rows] == pytest.approx(expected, rel=1e-12)


def test_gradient_flow_numbers_layers_across_recurrents():
    torch.manual_seed(2)
    model = Seq2Seq(7, 9, 5, cell="gru", embedding_size=4, num_layers=2)
    source, target = torch.randint(0, 7, (2, 3)), torch.randint(0, 9, (2, 4))
    rows = gradient_flow_rows(model, lambda: model(source, target).sum())
    layers = {(row["layer"], row["t"]) for row in rows}
    assert layers == {(l, t) for l in (0, 1) for t in range(3)} | {(l, t) for l in (2, 3) for t in range(4)}


def test_capture_steps_removes_its_hooks_when_the_loss_fails():
    model = SequenceModel(4, 5, 3, cell="gru", vocab_size=5)

    def failing_loss():
        model(torch.zeros(1, 2, dtype=torch.long))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gradient_flow_rows(model, failing_loss)
    assert model.recurrent.step_hook is None
    with pytest.raises(KeyError):
        with capture_steps(model):
            assert model.recurrent.step_hook is not None
            raise KeyError
    assert model.recurrent.step_hook is None


def test_append_gradient_flow_csv_writes_the_header_once(tmp_path):
    path = tmp_path / "gradient_flow.csv"
    rows = [{"layer": 0, "direction": 0, "t": t, "grad_norm": 0.5 * t} for t in range(2)]
    append_gradient_flow_csv(path, 10, rows)
    append_gradient_flow_csv(path, 20, rows)
    with path.open() as file:
        table = list(csv.reader(file))
    assert table[0] == ["step", "layer", "direction", "t", "grad_norm"]
    assert table[1:] == [["10", "0", "0", "0", "0.0"], ["10", "0", "0", "1", "0.5"],
                         ["20", "0", "0", "0", "0.0"], ["20", "0", "0", "1", "0.5"]]


def test_update_ratio_on_a_known_step():
    before = [torch.ones(3), torch.full((2, 2), 2.0)]
    after = [1.1 * p for p in before]
    assert update_ratio(before, after) == pytest.approx(0.1)

    param = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    ratio = UpdateRatio([param])
    ratio.before_step()
    with torch.no_grad():
        param += torch.tensor([0.0, 0.05])  # ‖Δθ‖ = 0.05, ‖θ‖ = 5
    assert ratio.after_step() == pytest.approx(0.01, rel=1e-5)  # float32


@pytest.fixture(scope="module")
def decay():
    return gradient_decay_experiment(steps=100)


def test_elman_gradient_vanishes_and_scaled_weights_explode(decay):
    assert all(len(norms) == 100 for norms in decay.values())
    assert decay[ELMAN][99] < 1e-3 * decay[ELMAN][0]
    assert decay[EXPLODING][99] > 1e3 * decay[EXPLODING][0]


def test_clipping_each_backward_message_keeps_the_gradient_bounded(decay):
    assert max(decay[CLIPPED]) <= 1.0 + 1e-9
    assert min(decay[CLIPPED]) > 0.5  # bounded, not vanished: it stays near the clip norm


def test_gated_cells_carry_the_gradient_further_than_elman(decay):
    assert decay["LSTM (default init)"][50] > 1e3 * decay[ELMAN][50]
    assert decay["GRU (default init)"][50] > 1e3 * decay[ELMAN][50]


def test_gates_biased_open_let_the_gradient_survive_a_hundred_steps(decay):
    for label in ("LSTM, forget-gate bias +3", "GRU, update-gate bias +3"):
        assert decay[label][99] > 1e-3 * decay[label][0]
        assert decay[label][99] > 1e25 * decay[ELMAN][99]


def test_run_diagnose_writes_a_plot_a_table_and_a_summary(tmp_path):
    summary = run_diagnose(tmp_path, steps=30)
    image = matplotlib.image.imread(tmp_path / "gradient_decay.png")
    assert image.std() > 0.01
    with (tmp_path / "gradient_decay.csv").open(encoding="utf-8") as file:
        table = list(csv.reader(file))
    assert table[0] == ["k", *DECAY_CONFIGURATIONS]
    assert [row[0] for row in table[1:]] == [str(k) for k in range(30)]
    assert set(summary) == set(DECAY_CONFIGURATIONS)
    assert summary[ELMAN]["ratio"] == pytest.approx(summary[ELMAN]["last"] / summary[ELMAN]["first"])
    text = format_summary(summary)
    assert len(text.splitlines()) == 1 + len(DECAY_CONFIGURATIONS)
    assert all(label in text for label in DECAY_CONFIGURATIONS)
