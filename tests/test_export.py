"""ONNX and TorchScript export: the exported graphs compute what the PyTorch models compute,
on batch sizes and sequence lengths never seen at export time (export traces at batch 2, 3 steps)."""

import copy
import json
import sys
import types

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from rnnkit import export
from rnnkit.cli import main
from rnnkit.models import ConditionedGenerator, Seq2Seq, SequenceClassifier, SequenceModel
from rnnkit.recurrent import Recurrent
from rnnkit.tasks.text import generate, load_run

TOLERANCE = 1e-5
TEXT = "the quick brown fox jumps over the lazy dog. " * 20 + "pack my box with five dozen liquor jugs!\n" * 20
SHAPES = [(1, 1), (5, 17), (3, 41)]  # (batch, time), none of them the export-time (2, 3)
FUSED_OPERATOR = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}  # the rest run as an ONNX Loop


def session(path):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # onnxruntime warns about initializers the exporter shared
    return onnxruntime.InferenceSession(str(path), options)


def run_onnx(path, feeds: dict):
    return session(path).run(None, {name: value.numpy() for name, value in feeds.items()})


def assert_close(expected, got, rounding=0.0):
    """got matches expected within TOLERANCE, plus ROUNDING_FACTOR × `rounding` (float32_rounding's
    measure of how far float32 arithmetic alone moves these outputs)."""
    expected = export._flatten(expected)
    assert len(expected) == len(got)
    for want, have in zip(expected, got):
        assert tuple(want.shape) == tuple(have.shape)
        np.testing.assert_allclose(np.asarray(have, dtype=np.float64), want.double().numpy(), rtol=0,
                                   atol=TOLERANCE + ROUNDING_FACTOR * rounding)


# A randomly initialised LayerNorm-LSTM amplifies rounding along the sequence: the float32 model's
# outputs were up to 1.5e-4 from its float64 twin's after 80 steps (6 seeds, 36 cases), and
# onnxruntime's float32 graph, which rounds differently, was as far from them: up to 3.1 times
# the float32 model's own distance beyond TOLERANCE. A fixed 1e-5 asked for bit-for-bit equal
# arithmetic, and even the LayerNorm-LSTM loop's ATen-exact activations exceeded it on 2 of 20 seeds
# at these shapes (4 of 20 with 80 steps). With LN_c's eps set to 1e-3 in the cell, the three tests
# that pass `rounding` fail (largest differences 8e-4 to 8e-3).
ROUNDING_FACTOR = 10


def float32_rounding(module, inputs: tuple) -> float:
    """max |module(*inputs) − the same in float64|: how far float32 rounding alone moves the outputs."""
    def float64(value):
        if isinstance(value, tuple):
            return tuple(float64(part) for part in value)
        return value.double() if value.is_floating_point() else value

    twin = copy.deepcopy(module).double()
    with torch.no_grad():
        got, exact = export._flatten(module(*inputs)), export._flatten(twin(*float64(inputs)))
    return max(float((a.double() - b).abs().max()) for a, b in zip(got, exact))


def zero_state(recurrent, batch):
    layers = recurrent.num_layers * recurrent.num_directions
    return {f"state_{i}": torch.zeros(layers, batch, size) for i, size in enumerate(recurrent.state_sizes)}


def random_state(recurrent, batch):
    return {name: 0.5 * torch.randn_like(value) for name, value in zero_state(recurrent, batch).items()}


def operators(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


# -----------------------------------------------------------------------------
# every cell, through the graphs of each topology


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "jordan", "multilag", "lnlstm"])
def test_language_model_with_state_in_and_out(tmp_path, cell):
    torch.manual_seed(0)
    model = SequenceModel(8, 11, 12, cell=cell, vocab_size=11, num_layers=2).eval()
    path = export.save(export.sequence_model(model), tmp_path / "lm.onnx", "onnx")
    assert FUSED_OPERATOR.get(cell, "Loop") in operators(path)
    for batch, steps in SHAPES:
        feeds = {"x": torch.randint(0, 11, (batch, steps)), **random_state(model.recurrent, batch)}
        inputs = (feeds["x"], export._unwrap(tuple(feeds.values())[1:]))
        with torch.no_grad():
            expected = model(*inputs)
        assert_close(expected, run_onnx(path, feeds), float32_rounding(model, inputs))


def test_float_features_and_a_bare_bidirectional_recurrent(tmp_path):
    torch.manual_seed(0)
    forecaster = SequenceModel(3, 2, 8, cell="gru").eval()  # float features in, no embedding
    layer = Recurrent("lnlstm", 3, 6, num_layers=2, bidirectional=True).eval()
    forecaster_path = export.save(export.sequence_model(forecaster), tmp_path / "forecaster.onnx", "onnx")
    layer_path = export.save(export.recurrent(layer), tmp_path / "recurrent.onnx", "onnx")
    for batch, steps in SHAPES:
        x = torch.randn(batch, steps, 3)
        forecaster_state, layer_state = random_state(forecaster.recurrent, batch), random_state(layer, batch)
        with torch.no_grad():
            assert_close(forecaster(x, forecaster_state["state_0"]),
                         run_onnx(forecaster_path, {"x": x, **forecaster_state}))
            assert_close(layer(x, tuple(layer_state.values())), run_onnx(layer_path, {"x": x, **layer_state}),
                         float32_rounding(layer, (x, tuple(layer_state.values()))))


@pytest.mark.parametrize("cell, pooling", [("lstm", "last"), ("jordan", "last"), ("multilag", "max"),
                                           ("gru", "mean")])
def test_bidirectional_classifier_on_padded_batches(tmp_path, cell, pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(6, 4, 10, cell=cell, num_layers=2, bidirectional=True, pooling=pooling).eval()
    path = export.save(export.classifier(model), tmp_path / "classifier.onnx", "onnx")
    for batch, steps in SHAPES:
        x, lengths = torch.randn(batch, steps, 6), torch.randint(1, steps + 1, (batch,))
        with torch.no_grad():
            expected = model(x, lengths)
        assert_close(expected, run_onnx(path, {"x": x, "lengths": lengths}))


@pytest.mark.parametrize("cell, attention", [("lstm", "additive"), ("jordan", "dot"), ("gru", None)])
def test_seq2seq_encoder_then_greedy_decoding_in_onnxruntime(tmp_path, cell, attention):
    torch.manual_seed(0)
    model = Seq2Seq(9, 7, 10, cell=cell, embedding_size=6, num_layers=2, bidirectional_encoder=True,
                    attention=attention).eval()
    graphs = export.seq2seq(model)
    encoder = session(export.save(graphs["encoder"], tmp_path / "encoder.onnx", "onnx"))
    decoder = session(export.save(graphs["decoder"], tmp_path / "decoder.onnx", "onnx"))
    source, lengths = torch.randint(0, 9, (4, 13)), torch.tensor([13, 5, 1, 9])
    encoded = encoder.run(None, {"source": source.numpy(), "source_lengths": lengths.numpy()})
    with torch.no_grad():
        assert_close(model.encode(source, lengths), encoded)
    # greedy decoding, one token at a time, driven from onnxruntime alone
    num_states = len(model.decoder.recurrent.state_sizes)
    state, memory = encoded[:num_states], encoded[num_states:]
    token, written = np.zeros((4, 1), dtype=np.int64), []
    for _ in range(6):
        logits, *state = decoder.run(None, {"tokens": token, **{f"state_{i}": s for i, s in enumerate(state)},
                                            **dict(zip(["memory", "memory_mask"], memory))})
        token = logits[:, -1].argmax(-1)[:, None]
        written.append(token)
    expected = model.generate(source, start_token=0, max_length=6, source_lengths=lengths)
    np.testing.assert_array_equal(np.concatenate(written, axis=1), expected.numpy())


def test_conditioned_generator_bridge_and_a_teacher_forced_decoder_pass(tmp_path):
    torch.manual_seed(0)
    model = ConditionedGenerator(5, 8, 10, cell="multilag", lags=3).eval()
    graphs = export.conditioned_generator(model)
    bridge = export.save(graphs["bridge"], tmp_path / "bridge.onnx", "onnx")
    decoder = export.save(graphs["decoder"], tmp_path / "decoder.onnx", "onnx")
    condition, tokens = torch.randn(3, 5), torch.randint(0, 8, (3, 9))
    state = run_onnx(bridge, {"condition": condition})
    with torch.no_grad():
        assert_close(model.bridge(condition), state)
        assert_close(model.decoder.step(tokens, model.bridge(condition)),
                     run_onnx(decoder, {"tokens": tokens, **{f"state_{i}": torch.from_numpy(s) for i, s in enumerate(state)}}))


# -----------------------------------------------------------------------------
# `rnnkit export` on a real text run


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    (folder / "corpus.txt").write_text(TEXT, encoding="utf-8")
    main(["train", "text", "--corpus", str(folder / "corpus.txt"), "--max-steps", "4", "--eval-every", "2",
          "--hidden-size", "24", "--embedding-size", "8", "--batch-size", "4", "--bptt", "16",
          "--runs-dir", str(folder), "--name", "run", "--quiet"])
    return folder / "run"


def test_text_model_generates_from_onnxruntime_alone(text_run, tmp_path, capsys):
    main(["export", str(text_run), "--out", str(tmp_path)])
    assert "exported to" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "export.json").read_text(encoding="utf-8"))
    assert sidecar["task"] == "text" and sidecar["format"] == "onnx"
    graph = sidecar["graphs"]["model"]
    assert graph["inputs"]["x"] == {"dtype": "int64", "shape": ["batch", "time"]}
    assert graph["inputs"]["state_1"]["shape"] == [1, "batch", 24]  # LSTM: h and c

    # a consumer with only onnxruntime and the sidecar: encode the prime, then greedy steps
    model = session(tmp_path / graph["file"])
    ids = {char: index for index, char in enumerate(sidecar["vocab"])}
    tokens = np.array([[ids[char] for char in "the qu"]], dtype=np.int64)
    state = [np.zeros([1 if size == "batch" else size for size in graph["inputs"][name]["shape"]], np.float32)
             for name in ("state_0", "state_1")]
    written = ""
    for _ in range(40):
        logits, *state = model.run(None, {"x": tokens, "state_0": state[0], "state_1": state[1]})
        tokens = logits[:, -1:].argmax(-1)
        written += sidecar["vocab"][tokens[0, 0]]
    torch_model, vocab, _ = load_run(text_run)
    assert written == generate(torch_model, vocab, "the qu", length=40, greedy=True)[0]

    for batch, steps in SHAPES:  # and the logits themselves, on shapes never traced
        x = torch.randint(0, len(vocab), (batch, steps))
        with torch.no_grad():
            expected = torch_model(x)
        assert_close(expected, run_onnx(tmp_path / "model.onnx", {"x": x, **zero_state(torch_model.recurrent, batch)}))


def test_torchscript_round_trip(text_run, tmp_path):
    main(["export", str(text_run), "--format", "torchscript", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "export.json").read_text(encoding="utf-8"))["format"] == "torchscript"
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    torch_model, vocab, _ = load_run(text_run)
    for batch, steps in SHAPES:
        x = torch.randint(0, len(vocab), (batch, steps))
        state = tuple(random_state(torch_model.recurrent, batch).values())
        with torch.no_grad():
            assert_close(torch_model(x, state), [t.numpy() for t in loaded(x, *state)])


def test_torchscript_keeps_a_python_loop_dynamic(tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier(4, 3, 8, cell="lnlstm", bidirectional=True).eval()
    loaded = torch.jit.load(str(export.save(export.classifier(model), tmp_path / "classifier.pt", "torchscript")))
    for batch, steps in SHAPES:
        x, lengths = torch.randn(batch, steps, 4), torch.randint(1, steps + 1, (batch,))
        with torch.no_grad():
            assert_close(model(x, lengths), [loaded(x, lengths).numpy()], float32_rounding(model, (x, lengths)))


class MeanOfOutputs(torch.nn.Module):
    """A task's own module: a Recurrent inside, read by code export knows nothing about."""

    def __init__(self):
        super().__init__()
        self.recurrent = Recurrent("multilag", 3, 5, lags=2)

    def forward(self, x):
        return self.recurrent(x)[0].mean(dim=1)


def test_a_task_plugs_in_with_export_modules(tmp_path, monkeypatch):
    torch.manual_seed(0)
    classifier, summary = SequenceClassifier(3, 2, 5, cell="gru").eval(), MeanOfOutputs().eval()

    def export_modules(run_dir):
        summary_graph = export.graph(summary, "forward", {"x": torch.randn(2, 3, 3)}, ["mean"],
                                     {"x": {0: "batch", 1: "time"}, "mean": {0: "batch"}})
        return {"classifier": export.classifier(classifier), "summary": summary_graph}, {"labels": ["no", "yes"]}

    monkeypatch.setitem(sys.modules, "rnnkit.tasks.toy", types.SimpleNamespace(export_modules=export_modules))
    (tmp_path / "config.json").write_text(json.dumps({"task": "toy"}), encoding="utf-8")
    main(["export", str(tmp_path)])
    out = tmp_path / "export"
    sidecar = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert sidecar["labels"] == ["no", "yes"] and sidecar["graphs"]["classifier"]["file"] == "classifier.onnx"
    assert sidecar["graphs"]["summary"]["outputs"]["mean"] == {"dtype": "float32", "shape": ["batch", 5]}
    x, lengths = torch.randn(6, 7, 3), torch.randint(1, 8, (6,))
    with torch.no_grad():
        assert_close(classifier(x, lengths), run_onnx(out / "classifier.onnx", {"x": x, "lengths": lengths}))
        assert_close(summary(x), run_onnx(out / "summary.onnx", {"x": x}))


@pytest.mark.parametrize("make_run, message", [
    (lambda tmp: tmp, "no config.json"),
    (lambda tmp: (tmp / "config.json").write_text('{"task": "namaskar"}') and tmp, "has no exporter"),
    (lambda tmp: (tmp / "config.json").write_text("[1, 2]") and tmp, 'no "task"'),
])
def test_bad_runs_exit_2_with_one_line(tmp_path, capsys, make_run, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(make_run(tmp_path))])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("rnnkit: error:") and message in error and error.count("\n") == 1
