"""Export cost and exported-model speed: the text model's default shape (LSTM, 512 units, 1 layer).

    OMP_NUM_THREADS=1 python benchmarks/export_speed.py [--dynamo]

Prints seconds to export (TorchScript-based ONNX exporter, as `rnnkit export` does; with
--dynamo also torch.onnx.export's default dynamo exporter, for comparison) and the time per
generated character, batch 1, one step at a time: PyTorch vs onnxruntime vs TorchScript.
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from rnnkit import export
from rnnkit.models import SequenceModel

VOCAB, EMBEDDING, HIDDEN, STEPS = 100, 64, 512, 300


def per_step_ms(step, repeats: int = STEPS) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dynamo", action="store_true", help="also time the dynamo exporter")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SequenceModel(EMBEDDING, VOCAB, HIDDEN, cell="lstm", vocab_size=VOCAB).eval()
    graph = export.sequence_model(model)
    folder = Path(tempfile.mkdtemp())
    for format in ("onnx", "torchscript"):
        start = time.perf_counter()
        export.save(graph, folder / f"model{export.FORMATS[format]}", format)
        print(f"export {format:<12} {time.perf_counter() - start:6.2f} s")
    if args.dynamo:  # fails on rnnkit's models: their input checks branch on tensor values
        batch = torch.export.Dim("batch")
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(graph.module, tuple(graph.inputs.values()), str(folder / "dynamo.onnx"),
                                  input_names=list(graph.inputs), output_names=graph.outputs, verbose=False,
                                  dynamic_shapes={"x": {0: batch, 1: torch.export.Dim("time")},
                                                  "inputs": ({1: batch}, {1: batch})})
            outcome = "exported"
        except Exception as error:  # report why, whatever the exporter raised
            cause = error.__cause__ or error
            outcome = f"failed: {type(cause).__name__}: {str(cause).strip().splitlines()[0][:120]}"
        print(f"export onnx-dynamo  {time.perf_counter() - start:6.2f} s  {outcome}")

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options)
    scripted = torch.jit.load(str(folder / "model.pt"))
    token = torch.zeros(1, 1, dtype=torch.long)
    state = tuple(torch.zeros(1, 1, HIDDEN) for _ in range(2))
    feeds = {"x": token.numpy(), "state_0": state[0].numpy(), "state_1": state[1].numpy()}
    with torch.no_grad():
        timings = {"pytorch (path auto)": per_step_ms(lambda: model(token, state)),
                   "torchscript": per_step_ms(lambda: scripted(token, *state)),
                   "onnxruntime": per_step_ms(lambda: session.run(None, feeds))}
    for name, ms in timings.items():
        print(f"one character, {name:<20} {ms:6.3f} ms")
    check = session.run(None, feeds)[0]
    with torch.no_grad():
        print(f"max |onnxruntime - pytorch| logits: {np.abs(check - model(token, state)[0].numpy()).max():.1e}")


if __name__ == "__main__":
    main()
