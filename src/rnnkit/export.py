"""Export trained models to ONNX and TorchScript with a dynamic batch size AND sequence length.

Tracing records one run of the Python code, so a loop over time written in Python is frozen
at the example's length T. The exported graphs keep time dynamic in two ways:

- Cells with a fused kernel (Elman, LSTM, GRU): `Recurrent` runs path="fused", a single
  `torch.rnn_tanh`/`rnn_relu`/`lstm`/`gru` call over the whole sequence, which the ONNX
  exporter maps to the ONNX `RNN`/`LSTM`/`GRU` operators (time is their first, dynamic axis).
- The other cells (Jordan, multi-lag, LayerNorm-LSTM): one step of the cell is traced (a step
  has no time axis), and a scripted TorchScript loop `for t in range(x.size(1))` drives it;
  the ONNX exporter turns that loop into an ONNX `Loop`.

Either way the model is traced once with `torch.jit.trace`: that ScriptModule is the
TorchScript file, and `torch.onnx.export(..., dynamo=False)` turns it into the ONNX file.
(The dynamo exporter, torch.onnx.export's default, was measured on torch 2.13 and not used:
it maps torch.lstm/gru to ONNX LSTM/GRU, but unrolls torch.rnn_tanh into T steps and silently
fixes T to the example's length, cannot keep a Python loop dynamic, and takes 15-25 s per
model instead of a fraction of a second.)

A model leaves as a set of named graphs, each an `Exportable`; recurrent state is explicit
inputs `state_0`, `state_1`, … and outputs `state_0_out`, … (h, or h and c for LSTMs, or the K
past states of a multi-lag cell; each (layers · directions, batch, size)), so a consumer
drives generation one step at a time. Beside the graphs, `export.json` (the sidecar) holds
what a consumer needs: every graph's inputs and outputs and the task's vocabulary or scaler
and config.

A task plugs in by defining, in its module `rnnkit.tasks.<task>`,

    export_modules(run_dir: Path) -> (dict[str, Exportable], dict)

the graphs to write, built with the helpers below (`sequence_model`, `classifier`,
`seq2seq`, `decoder_step`, `conditioned_generator`, `recurrent`, or `graph` for a task's own
module), and the task's sidecar entries (vocabulary, classes, scaler, config).
`rnnkit export RUN` finds it through config.json's "task".

Limits, measured on torch 2.13 with onnxruntime 1.31:
- Not exported: training-time behaviour (dropout and weight dropout are off; scheduled
  sampling in `Decoder.forward`; `Recurrent.step_hook`), sampling and beam search (the
  consumer runs them on the exported logits), and `Recurrent(batch_first=False)`.
- State inputs are explicit, so a model with `initial_state="learned"` starts from its learned
  state only if the consumer feeds it (the graphs that take no state, classifier and
  encoder, use it); export.json does not carry it.
- torch 2.13 marks torch.jit.trace/script deprecated (they still work); they are used because
  the scripted loop is what keeps time dynamic for the cells without a fused kernel.
- Float32 results match PyTorch to about 1e-7 (fused) and 1e-6 (LayerNorm-LSTM over 40 steps).
"""

import copy
import importlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write_bytes, write_json
from .recurrent import Recurrent

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
EXAMPLE_BATCH, EXAMPLE_STEPS = 2, 3  # export-time shapes: tests check the graphs on other shapes
EXAMPLE_LENGTHS = torch.tensor([EXAMPLE_STEPS, EXAMPLE_STEPS - 1])


@dataclass
class Exportable:
    """One graph: the module, an example input per named input, its output names, and the
    axes that stay dynamic ({name: {axis: "batch" | "time"}})."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]


# -----------------------------------------------------------------------------
# a Recurrent whose time axis survives tracing


class CellLoop(nn.Module):
    """One layer and direction: the traced one-step cell applied at every step, scripted so
    the loop runs x.size(1) times. The state is the cell's state tensors concatenated;
    `valid` (batch, time) marks real steps (a padded step keeps the state and outputs 0)."""

    def __init__(self, step: nn.Module, reverse: bool):
        super().__init__()
        self.step = step
        self.reverse = reverse

    def forward(self, x: torch.Tensor, state: torch.Tensor, valid: torch.Tensor):
        if self.reverse:  # the backward direction reads time reversed
            x, valid = x.flip(1), valid.flip(1)
        outputs: list[torch.Tensor] = []
        for t in range(x.size(1)):
            output, new_state = self.step(x[:, t], state)
            keep = valid[:, t, None]
            state = torch.where(keep, new_state, state)
            outputs.append(output * keep)
        stacked = torch.stack(outputs, dim=1)
        return stacked.flip(1) if self.reverse else stacked, state


class ConcatenatedStateCell(nn.Module):
    """A cell with its state tuple as one tensor (the scripted loop needs a fixed signature)."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell
        self.sizes = list(cell.state_sizes)

    def forward(self, x: torch.Tensor, state: torch.Tensor):
        output, new_state = self.cell(x, tuple(state.split(self.sizes, dim=-1)))
        return output, torch.cat(new_state, dim=-1)


class ExportRecurrent(nn.Module):
    """Stands in for a `Recurrent` inside a model being exported: same forward(x, state,
    lengths) and result, computed by the fused kernel or by scripted cell loops."""

    def __init__(self, recurrent: Recurrent):
        super().__init__()
        if not recurrent.batch_first:
            raise ValueError("export needs a batch_first Recurrent")
        self.recurrent = recurrent
        for name in ("num_layers", "num_directions", "input_size", "hidden_size", "output_size", "state_sizes"):
            setattr(self, name, getattr(recurrent, name))
        self.loops = None
        if not recurrent.fused_mode:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: see the module docstring
                self.loops = nn.ModuleList(
                    torch.jit.script(CellLoop(_trace_step(cell), reverse=index % self.num_directions == 1))
                    for index, cell in enumerate(recurrent.cells))

    def forward(self, x: torch.Tensor, state=None, lengths=None):
        if self.loops is None:
            return self.recurrent(x, state, lengths=lengths, path="fused")
        states = self.recurrent._initial_states(x.shape[0], x) if state is None else _as_tuple(state)
        outputs, states = self.recurrent._unroll(x, states, lengths, self._run_direction)
        return outputs, _unwrap(states)

    def _run_direction(self, layer, direction, cell, x, state, valid):
        """`Recurrent._unroll`'s per-direction hook, run by the scripted loop."""
        valid = torch.ones(x.shape[:2], dtype=torch.bool) if valid is None else valid
        outputs, final = self.loops[layer * self.num_directions + direction](x, torch.cat(state, dim=-1), valid)
        return outputs, tuple(final.split(list(cell.state_sizes), dim=-1))


def _trace_step(cell: nn.Module):
    example = (torch.zeros(EXAMPLE_BATCH, cell.input_size), torch.zeros(EXAMPLE_BATCH, sum(cell.state_sizes)))
    return torch.jit.trace(ConcatenatedStateCell(cell), example)


def _as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _unwrap(states: tuple[torch.Tensor, ...]):
    return states[0] if len(states) == 1 else states


def exportable_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every `Recurrent` inside it replaced by an `ExportRecurrent`."""
    model = copy.deepcopy(model).eval()
    if isinstance(model, Recurrent):
        return ExportRecurrent(model).eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Recurrent) and not isinstance(parent, ExportRecurrent):
                setattr(parent, name, ExportRecurrent(child).eval())
    return model


# -----------------------------------------------------------------------------
# graphs for each topology: what goes in, what comes out


def _flatten(result) -> tuple[torch.Tensor, ...]:
    """A module's result as a flat tuple of tensors: nested tuples opened, None left out."""
    if result is None:
        return ()
    if isinstance(result, torch.Tensor):
        return (result,)
    return tuple(tensor for part in result for tensor in _flatten(part))


class _StatefulGraph(nn.Module):
    """(x, *state, *memory) -> flat result of `model.method(x, state[, memory])`: the state
    tensors as separate inputs, for a SequenceModel or Recurrent (forward) or a Decoder (step;
    memory = the encoder's outputs and mask when it attends)."""

    def __init__(self, model: nn.Module, method: str, num_states: int):
        super().__init__()
        self.model = model
        self.method = method
        self.num_states = num_states

    def forward(self, x, *inputs):
        state, memory = inputs[:self.num_states], inputs[self.num_states:]
        return _flatten(getattr(self.model, self.method)(x, _unwrap(state), *([memory] if memory else [])))


class _FlatGraph(nn.Module):
    """(inputs…) -> flat result of `model.method(inputs…)` (an encoder's state and memory)."""

    def __init__(self, model: nn.Module, method: str = "forward"):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *inputs):
        return _flatten(getattr(self.model, self.method)(*inputs))


def _state_io(recurrent):
    """Example zero state, input and output names, and dynamic axes of a recurrent state."""
    count = recurrent.num_layers * recurrent.num_directions
    inputs = {f"state_{i}": torch.zeros(count, EXAMPLE_BATCH, size) for i, size in enumerate(recurrent.state_sizes)}
    outputs = [f"{name}_out" for name in inputs]
    return inputs, outputs, {name: {1: "batch"} for name in [*inputs, *outputs]}


def _tokens(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (EXAMPLE_BATCH, EXAMPLE_STEPS))


def _sequence_input(sequence_input, input_size: int) -> torch.Tensor:
    if sequence_input.embedding is None:
        return torch.randn(EXAMPLE_BATCH, EXAMPLE_STEPS, input_size)
    return _tokens(sequence_input.vocab_size)


BATCH_TIME = {0: "batch", 1: "time"}
MEMORY_AXES = {"memory": {0: "batch", 1: "source_time"}, "memory_mask": {0: "batch", 1: "source_time"}}


def sequence_model(model) -> Exportable:
    """A SequenceModel (language model, tagger, forecaster): (x, *state) -> (logits, *state).
    Generation feeds a prime with a zero state, then one step at a time with the state it returned."""
    model = exportable_copy(model)
    states, state_outputs, state_axes = _state_io(model.recurrent)
    inputs = {"x": _sequence_input(model.input, model.recurrent.input_size), **states}
    return Exportable(_StatefulGraph(model, "forward", len(states)), inputs, ["logits", *state_outputs],
                      {"x": BATCH_TIME, "logits": BATCH_TIME, **state_axes})


def classifier(model) -> Exportable:
    """A SequenceClassifier: (x, lengths) -> logits; `lengths` (batch,) int64 are the valid steps."""
    model = exportable_copy(model)
    inputs = {"x": _sequence_input(model.input, model.recurrent.input_size), "lengths": EXAMPLE_LENGTHS}
    return Exportable(model, inputs, ["logits"], {"x": BATCH_TIME, "lengths": {0: "batch"}, "logits": {0: "batch"}})


def recurrent(layer: Recurrent) -> Exportable:
    """A bare Recurrent: (x, *state) -> (outputs, *state)."""
    layer = exportable_copy(layer)
    states, state_outputs, state_axes = _state_io(layer)
    inputs = {"x": torch.randn(EXAMPLE_BATCH, EXAMPLE_STEPS, layer.input_size), **states}
    return Exportable(_StatefulGraph(layer, "forward", len(states)), inputs, ["outputs", *state_outputs],
                      {"x": BATCH_TIME, "outputs": BATCH_TIME, **state_axes})


def graph(model: nn.Module, method: str, inputs: dict[str, torch.Tensor], outputs: list[str],
          dynamic_axes: dict[str, dict[int, str]]) -> Exportable:
    """Any model's `method(*inputs)` as one graph, its result flattened into `outputs` (for a
    task's own module, e.g. a forecaster or a caption encoder). Its Recurrents keep time
    dynamic; any other Python loop in it is frozen at the example's length."""
    return Exportable(_FlatGraph(exportable_copy(model), method), inputs, outputs, dynamic_axes)


def decoder_step(decoder, memory: dict[str, torch.Tensor] | None = None) -> Exportable:
    """A Decoder: (tokens, *state[, memory, memory_mask]) -> (logits, *state); one token at a
    time for greedy decoding; `memory` holds example "memory" and "memory_mask" when it attends."""
    decoder = exportable_copy(decoder)
    memory = memory or {}
    states, state_outputs, state_axes = _state_io(decoder.recurrent)
    inputs = {"tokens": _tokens(decoder.vocab_size), **states, **memory}
    return Exportable(_StatefulGraph(decoder, "step", len(states)), inputs, ["logits", *state_outputs],
                      {"tokens": BATCH_TIME, "logits": BATCH_TIME, **state_axes, **{name: MEMORY_AXES[name] for name in memory}})


def seq2seq(model) -> dict[str, Exportable]:
    """A Seq2Seq as two graphs: "encoder" (source, source_lengths) -> the decoder's initial
    state (and, for a decoder with attention, "memory" and "memory_mask"), and "decoder"
    (tokens, *state[, memory, memory_mask]) -> (logits, *state)."""
    model = exportable_copy(model)
    _, state_outputs, state_axes = _state_io(model.decoder.recurrent)
    source = {"source": _sequence_input(model.source_input, model.encoder.input_size),
              "source_lengths": EXAMPLE_LENGTHS}
    memory = {}
    if model.decoder.attention is not None:
        with torch.no_grad():
            memory = dict(zip(MEMORY_AXES, model.encode(*source.values())[1]))
    encoder = Exportable(_FlatGraph(model, "encode"), source, [*state_outputs, *memory],
                         {"source": BATCH_TIME, "source_lengths": {0: "batch"}, **state_axes,
                          **{name: MEMORY_AXES[name] for name in memory}})
    return {"encoder": encoder, "decoder": decoder_step(model.decoder, memory)}


def conditioned_generator(model) -> dict[str, Exportable]:
    """A ConditionedGenerator as "bridge" (condition) -> initial state, and "decoder" as in seq2seq."""
    model = exportable_copy(model)
    _, state_outputs, state_axes = _state_io(model.decoder.recurrent)
    condition = torch.randn(EXAMPLE_BATCH, model.bridge.projections[0].in_features)
    bridge = Exportable(_FlatGraph(model.bridge), {"condition": condition}, state_outputs,
                        {"condition": {0: "batch"}, **state_axes})
    return {"bridge": bridge, "decoder": decoder_step(model.decoder)}


# -----------------------------------------------------------------------------
# writing files


def save(graph: Exportable, path: Path, format: str) -> Path:
    """Trace `graph.module` once and write it as TorchScript or ONNX (atomically)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    args = tuple(graph.inputs.values())
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # Tracing warns about the models' Python-side input checks (they run once, at trace
        # time) and the exporter about its own deprecation; neither changes the graph.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph.module, args, check_trace=False)
        if format == "torchscript":
            torch.jit.save(traced, buffer)
        else:
            torch.onnx.export(traced, args, buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=list(graph.inputs), output_names=graph.outputs,
                              dynamic_axes=graph.dynamic_axes)
    return atomic_write_bytes(path, buffer.getvalue())


def describe(graph: Exportable) -> dict:
    """The sidecar entry of one graph: each input's and output's dtype and shape, with
    "batch" and "time" where the size is free."""
    with torch.no_grad():
        results = graph.module(*graph.inputs.values())
    tensors = {**graph.inputs, **dict(zip(graph.outputs, _as_tuple(results)))}

    def entry(name):
        axes = graph.dynamic_axes.get(name, {})
        return {"dtype": str(tensors[name].dtype).removeprefix("torch."),
                "shape": [axes.get(axis, size) for axis, size in enumerate(tensors[name].shape)]}

    return {"inputs": {name: entry(name) for name in graph.inputs},
            "outputs": {name: entry(name) for name in graph.outputs}}


def export_modules_of(task: str):
    """The export_modules function of rnnkit.tasks.<task>."""
    try:
        return importlib.import_module(f"rnnkit.tasks.{task}").export_modules
    except (ImportError, AttributeError):
        raise ValueError(f"task {task!r} has no exporter (rnnkit.tasks.{task}.export_modules)") from None


def export_run(run_dir, format: str = "onnx", out=None) -> Path:
    """Export the trained model of a run folder to `out` (default RUN/export/): one file per
    graph and export.json; return the folder."""
    run_dir = Path(run_dir)
    if format not in FORMATS:  # before the model is loaded
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{run_dir} is not a run folder (no config.json)")
    try:
        task = json.loads(config_path.read_text(encoding="utf-8"))["task"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError(f"{config_path} has no \"task\" field") from None
    graphs, sidecar = export_modules_of(str(task))(run_dir)
    out = run_dir / "export" if out is None else Path(out)
    files = {}
    for name, graph in graphs.items():
        path = save(graph, out / f"{name}{FORMATS[format]}", format)
        files[name] = {"file": path.name, **describe(graph)}
    write_json(out / "export.json", {"task": task, "format": format, "graphs": files, **sidecar})
    return out
