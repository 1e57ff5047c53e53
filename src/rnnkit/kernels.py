"""Compiled loops for hand BPTT and for generation: `rnnkit/csrc/*.cpp`, built on first use.

Only the recursion along time is sequential, but it is a Python loop of small operations, and
at small sizes the interpreter between them costs more than the arithmetic. The C++ loops run
the same steps on raw pointers, with BLAS's gemm (which libtorch exports) for the products, or
oneDNN's on a weight packed once where a step's product is large (csrc/gemm.h): Elman (K lags)
and Jordan (elman_jordan.cpp), LSTM (lstm.cpp) and GRU (gru.cpp) with one pass per batch row
for each step's pointwise work, and LayerNorm-LSTM, whose step is a dozen
pointwise operations (three layer norms, the activations, the cell update), the same way
(lnlstm.cpp). In the AVX2 build the whole-sequence products of hand BPTT take the same panel
kernel as the loops' per-step ones (projection.cpp). The loops use their own activations
(csrc/activations.h): ATen's, through MKL and ATen's parallel loop, wake a sleeping thread per
call at 2 threads with passive waiting.
The buffers and equations are those of the Functions in `rnnkit.bptt`, whose Python loops
remain the fallback and the readable statement of each recursion. Generation writes one token
per step; for a token-reading LSTM, GRU or Elman model, language_model_step.cpp runs the
writing loop, steps and draws, in one call per 256 tokens (`SequenceModel.writer`) and a single
step in one call (`SequenceModel.stepper`, for beam search), with `SequenceModel.step` and
`rnnkit.tasks.text.sample` as the fallback.

`ops()` builds the extension once per machine with torch's JIT extension builder (about 20 s
with gcc, kept in TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions) and returns
`torch.ops.rnnkit_kernels`, or None where it cannot be built (no C++ compiler, or the build
fails). RNNKIT_KERNELS=0 turns the compiled loops off.
"""

import logging
import os
from functools import cache
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name("csrc") / name for name in (
    "elman_jordan.cpp", "lstm.cpp", "gru.cpp", "lnlstm.cpp", "language_model_step.cpp", "projection.cpp")]
# Vector instructions for the pointwise loops, by the capability ATen itself dispatches to on this
# CPU; the build is named after it, so a home directory shared by different CPUs keeps one per kind.
VECTOR_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
}
log = logging.getLogger(__name__)


@cache
def ops():
    """torch.ops.rnnkit_kernels once built; None where the compiled loops are unavailable."""
    if os.environ.get("RNNKIT_KERNELS", "1") == "0":
        return None
    try:
        import ninja  # torch's builder runs the `ninja` binary, which an unactivated venv lacks on PATH
        from torch.utils.cpp_extension import load

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
        log.info("rnnkit: loading the compiled loops (built the first time on a machine: about 20 s)")
        capability = torch.backends.cpu.get_cpu_capability()
        # -fopenmp: ATen's parallel_for, inlined from its headers, runs its threads only where the
        # extension is built with OpenMP (it then shares libtorch's OpenMP runtime, already loaded)
        load(f"rnnkit_kernels_{capability.lower()}", sources=[str(path) for path in SOURCES],
             extra_cflags=["-O3", "-fopenmp", *VECTOR_FLAGS.get(capability, [])], extra_ldflags=["-fopenmp"],
             is_python_module=False)
    except Exception as error:  # no compiler, no ninja, a failed build: the Python loops do the work
        log.warning("rnnkit: compiled loops unavailable, running the Python ones (%s)", error)
        return None
    return torch.ops.rnnkit_kernels


if __name__ == "__main__":  # `python -m rnnkit.kernels`: build now (the Makefile's set-up does), say how it went
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("rnnkit compiled loops:", "ready" if ops() is not None else "unavailable (the Python loops will run)")
