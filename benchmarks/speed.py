"""Speed benchmark (`rnnkit bench`): training throughput, GEMM efficiency, generation, memory.

Everything is measured in ONE process (the memory runs each get a child process, so that each
peak is its own), with the same thread count (`--threads`, default 1). Run:

    rnnkit bench [--quick] [--threads N] [--out benchmarks/RESULTS.md]
    python benchmarks/speed.py [--quick] [--threads N] [--out PATH]

1. Training throughput. Shapes small (B=32, H=64, T=50), medium (B=64, H=256, T=100), large
   (B=32, H=512, T=200); one layer, unidirectional, batch_first, input size = hidden size.
   One measured step = forward over x (B, T, H) from a zero state, backward from the outputs'
   gradient R / (B·T·H) for a fixed random R (the gradient of the loss mean(outputs ⊙ R), handed
   to backward as PyTorch's own RNN benchmark, benchmarks/fastrnns, hands its outputs a fixed
   random gradient) to the parameters and to x (as for any layer but a model's first),
   `torch.optim.SGD(lr=1e-3).step()`, zero_grad. So a step times the layer, and not the two
   elementwise passes of a loss over its outputs, each into a fresh (B, T, H) tensor, that every
   contender would pay alike (without them, paired rounds at the medium shape, a step of Jordan,
   multi-lag, nn.RNN or nn.LSTM took 0.88-0.96x the time, LayerNorm-LSTM 0.94-1.03x in five runs).
   Contenders per cell: rnnkit `Recurrent(path="auto")` for the custom cells; for Elman, LSTM and GRU both
   path="fused" and path="bptt", and the "auto" row repeats the one of them that "auto" picks
   when training at that shape; the torch module (nn.RNN tanh/relu for Elman, nn.RNN tanh for
   Jordan and multi-lag, nn.LSTM for LSTM and LayerNorm-LSTM, nn.GRU for GRU); the Python loop
   (`Recurrent(path="loop")`, and for Elman/LSTM/GRU also a plain loop over
   torch.nn.RNNCell/LSTMCell/GRUCell). After warm-up, R interleaved rounds: round r times
   every contender of the shape once, in an order shuffled anew each round (seeded; a plain
   rotation would keep every contender behind the same neighbour, whose leftover cache and
   allocator state then biases it the same way every round); the median per contender is
   reported as tokens/s = B·T / median seconds, and its spread as the interquartile range of
   the step times ÷ their median. Two rows run the very same kernel (Elman "fused" = torch.rnn_tanh/relu =
   nn.RNN), so their ratio shows the noise of the measurement.
   Ratios are paired: ×torch = the median over rounds of the torch module's step time ÷ the
   contender's in the same round; ×loop the same against rnnkit's path="loop", ×cell-loop
   against the nn.*Cell loop. On a VM whose speed drifts by ±10% over minutes, a ratio of two
   medians mixes rounds taken at different speeds; each round's pair shares one.

2. GEMM efficiency. Useful FLOPs of one step count only the matrix products:
       forward  F = 2·B·T·G·H·(I + H_rec)  [+ 2·B·T·H·O for Jordan's output projection]
       useful   = 3·F                        (backward = two products per forward product)
   with G gates (1 Elman/Jordan/multi-lag, 3 GRU, 4 LSTM/LayerNorm-LSTM), H_rec the width of the
   recurrent input (H; K·H for K-lag; O = output size for Jordan). The reference is fp32 products,
   each shape by the faster of MKL's torch.mm and oneDNN's matmul (calibrated before the rounds;
   oneDNN packs the weight of a per-step product once per step, as rnnkit's loops do; nn.LSTM's
   kernel is oneDNN's too), exactly the products of that step, run back to back: for every
   forward product (M, K) × (K, N) done c times — the input projection (B·T, I) × (I, G·H) once,
   the recurrent product (B, H_rec) × (H_rec, G·H) T times, Jordan's (B, H) × (H, O) T times —
   its backward products dA = (M, N) × (N, K) c times and dW = (N, c·M) × (c·M, K) once (the
   weight gradient summed over all steps in one product). Those products, 3·F FLOPs, are one
   more contender of each round ("gemm/<cell>"), so they are timed amid the steps they are
   compared with: this machine's speed drifts by up to 1.5× within an hour, and a rate measured
   apart from the steps moved the efficiencies by as much. Efficiency = the median over rounds
   of (the products' time ÷ the contender's step time) in that round; the GEMM rate shown is
   3·F ÷ the products' median time.

3. Generation with the default text model `build_model(TextConfig(), vocab_size=103)` (untrained
   weights; speed does not depend on them), a 100-character prime: `rnnkit.tasks.text.generate`
   (the state carried; the prime read once) single stream and with num_samples=32 (chars/s
   counts every stream), against re-reading: every new character runs the model over the whole
   text so far (quadratic, so fewer characters are written).

4. Peak memory (peak RSS, VmHWM, of a child process) of training a small text model on a synthetic
   stream of L characters: full BPTT = the whole stream as ONE sequence (batch 1, one
   forward/backward); truncated BPTT = `StreamBatches` (batch 32, bptt 100), the state carried
   and detached, every chunk of the stream processed. A full-BPTT run whose peak or time,
   extrapolated linearly from the shorter runs, would pass MEMORY_LIMIT_MB or
   FULL_BPTT_TIME_LIMIT_S is skipped and reported as skipped.

Results are printed and written into --out between `<!-- speed:begin -->` and
`<!-- speed:end -->`; the rest of that file is left as it is.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the rnnkit command does

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
SHAPES = {"small": (32, 64, 50), "medium": (64, 256, 100), "large": (32, 512, 200)}  # (B, H, T)
VOCAB_SIZE = 103
MEMORY_MODEL = {"cell": "lstm", "embedding_size": 64, "hidden_size": 128}  # TextConfig fields
MEMORY_LIMIT_MB = 8000
FULL_BPTT_TIME_LIMIT_S = 300

# Targets (issue "speed"), checked in `targets`.
HAND_BPTT_VS_RNN = 1.25
FUSED_VS_TORCH = 1.0
CUSTOM_VS_LSTM = 0.85
CUSTOM_VS_LOOP_SMALL = 3.0
EFFICIENCY = 0.85
GENERATION_CHARS_S = 20_000
TRUNCATED_FLATNESS = 0.10


@dataclass
class Settings:
    rounds: dict           # shape -> interleaved rounds
    inner: dict            # shape -> steps per timed measurement
    warmup: int
    gen_chars: int         # carried state, single stream
    gen_rounds: int        # of each single-stream variant, interleaved (the median is reported)
    gen_batched_chars: int  # carried state, per stream, 32 streams
    reread_chars: int      # re-reading the prefix
    text_rounds: int       # training steps of the text model per variant
    memory_lengths: tuple


FULL = Settings(rounds={"small": 15, "medium": 15, "large": 9}, inner={"small": 5, "medium": 1, "large": 1},
                warmup=1, gen_chars=20_000, gen_rounds=5, gen_batched_chars=500, reread_chars=100, text_rounds=9,
                memory_lengths=(10_000, 100_000, 1_000_000))
QUICK = Settings(rounds={"small": 5, "medium": 3}, inner={"small": 3, "medium": 1},
                 warmup=1, gen_chars=3_000, gen_rounds=3, gen_batched_chars=200, reread_chars=50, text_rounds=3,
                 memory_lengths=(10_000, 100_000))


# -----------------------------------------------------------------------------
# what is compared


@dataclass(frozen=True)
class CellSpec:
    """A cell as benchmarked: its rnnkit name and options, the torch module it is compared
    with, its nn.*Cell (if any), and what its products look like (gates, recurrent width)."""
    label: str
    cell: str
    options: dict = field(default_factory=dict, hash=False, compare=False)
    torch_ref: str = "nn.RNN(tanh)"
    torch_cell: str | None = None
    gates: int = 1
    lags: int = 1              # H_rec = lags · H
    jordan: bool = False       # + output projection; H_rec = O = H
    fused: bool = False        # has a fused kernel: time path="fused" and path="bptt"


CELL_SPECS = (
    CellSpec("elman-tanh", "elman", {"nonlinearity": "tanh"}, "nn.RNN(tanh)", "nn.RNNCell(tanh)", fused=True),
    CellSpec("elman-relu", "elman", {"nonlinearity": "relu"}, "nn.RNN(relu)", "nn.RNNCell(relu)", fused=True),
    CellSpec("jordan", "jordan", {}, "nn.RNN(tanh)", jordan=True),
    CellSpec("multilag-2", "multilag", {"lags": 2}, "nn.RNN(tanh)", lags=2),
    CellSpec("multilag-3", "multilag", {"lags": 3}, "nn.RNN(tanh)", lags=3),
    CellSpec("lstm", "lstm", {}, "nn.LSTM", "nn.LSTMCell", gates=4, fused=True),
    CellSpec("gru", "gru", {}, "nn.GRU", "nn.GRUCell", gates=3, fused=True),
    CellSpec("lnlstm", "lnlstm", {}, "nn.LSTM", gates=4),
)
TORCH_SPECS = {  # the torch modules, as specs for their FLOPs
    "nn.RNN(tanh)": CellSpec("nn.RNN(tanh)", "elman"),
    "nn.RNN(relu)": CellSpec("nn.RNN(relu)", "elman"),
    "nn.LSTM": CellSpec("nn.LSTM", "lstm", gates=4),
    "nn.GRU": CellSpec("nn.GRU", "gru", gates=3),
}
CUSTOM_CELLS = ("jordan", "multilag-2", "multilag-3", "lnlstm")
HAND_BPTT_CELLS = (("elman-tanh", "auto"), ("elman-relu", "auto"), ("jordan", "auto"),
                   ("multilag-2", "auto"), ("multilag-3", "auto"))


def forward_products(spec: CellSpec, batch: int, hidden: int, steps: int) -> list[tuple[int, int, int, int]]:
    """The forward matrix products of one layer over a sequence: (M, K, N, count) for
    (M, K) × (K, N) done `count` times."""
    width = spec.gates * hidden
    products = [(batch * steps, hidden, width, 1), (batch, spec.lags * hidden, width, steps)]
    if spec.jordan:
        products.append((batch, hidden, hidden, steps))
    return products


def step_products(spec: CellSpec, batch: int, hidden: int, steps: int) -> list[tuple[int, int, int, int]]:
    """Forward and backward products (rows, inner, cols, count) of one training step."""
    products = []
    for m, k, n, count in forward_products(spec, batch, hidden, steps):
        products += [(m, k, n, count), (m, n, k, count), (n, m * count, k, 1)]
    return products


def useful_flops(spec: CellSpec, batch: int, hidden: int, steps: int) -> int:
    """3 × the forward GEMM FLOPs: 3 · 2·B·T·G·H·(I + H_rec) (+ 3 · 2·B·T·H·O for Jordan)."""
    return 3 * sum(2 * m * k * n * count for m, k, n, count in forward_products(spec, batch, hidden, steps))


# -----------------------------------------------------------------------------
# training steps


def _training_step(forward, parameters, x: torch.Tensor, weight: torch.Tensor):
    """forward(x) -> outputs; returns a function doing one full training step, backward from the
    gradient of mean(outputs ⊙ weight). x requires grad, as the input of any layer but a model's
    first does: the backward forms ∂L/∂x, the product that the useful FLOPs (3 × forward) count."""
    optimizer = torch.optim.SGD(parameters, lr=1e-3)
    grad_outputs = weight / weight.numel()

    def step():
        forward(x).backward(grad_outputs)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        x.grad = None
    return step


def _cell_loop(cell: nn.Module, hidden: int, lstm: bool):
    def forward(x):
        h = x.new_zeros(x.shape[0], hidden)
        state = (h, h) if lstm else h
        outputs = []
        for t in range(x.shape[1]):
            state = cell(x[:, t], state)
            outputs.append(state[0] if lstm else state)
        return torch.stack(outputs, dim=1)
    return forward


def build_step(key: str, batch: int, hidden: int, steps: int, seed: int = 0):
    """The training-step function of contender `key` ("torch/nn.LSTM", "lstm/auto",
    "lstm/bptt", "lstm/loop", "lstm/cell-loop", ...) at this shape."""
    from rnnkit.recurrent import Recurrent

    torch.manual_seed(seed)
    x = torch.randn(batch, steps, hidden, requires_grad=True)
    weight = torch.randn(batch, steps, hidden)
    group, kind = key.split("/", 1)
    if group == "gemm":
        return _products_step(step_products(SPEC_BY_LABEL[kind], batch, hidden, steps))
    if group == "torch":
        modules = {"nn.RNN(tanh)": lambda: nn.RNN(hidden, hidden, nonlinearity="tanh", batch_first=True),
                   "nn.RNN(relu)": lambda: nn.RNN(hidden, hidden, nonlinearity="relu", batch_first=True),
                   "nn.LSTM": lambda: nn.LSTM(hidden, hidden, batch_first=True),
                   "nn.GRU": lambda: nn.GRU(hidden, hidden, batch_first=True)}
        module = modules[kind]()
        return _training_step(lambda inputs: module(inputs)[0], module.parameters(), x, weight)
    spec = SPEC_BY_LABEL[group]
    if kind == "cell-loop":
        name = spec.torch_cell
        if name.startswith("nn.RNNCell"):
            cell = nn.RNNCell(hidden, hidden, nonlinearity=spec.options["nonlinearity"])
        else:
            cell = {"nn.LSTMCell": nn.LSTMCell, "nn.GRUCell": nn.GRUCell}[name](hidden, hidden)
        return _training_step(_cell_loop(cell, hidden, name == "nn.LSTMCell"), cell.parameters(), x, weight)
    layer = Recurrent(spec.cell, hidden, hidden, **spec.options)
    return _training_step(lambda inputs: layer(inputs, path=kind)[0], layer.parameters(), x, weight)


SPEC_BY_LABEL = {spec.label: spec for spec in CELL_SPECS}


def _products_step(products: list[tuple[int, int, int, int]]):
    """A function doing the products (rows, inner, cols, count) back to back on preallocated fp32
    matrices: the GEMM work of one training step, and nothing else. Each product shape runs
    through whichever library a calibration here found faster for its `count` calls: MKL's
    torch.mm, or oneDNN's matmul, which for a product done more than once a step packs the
    right-hand matrix first, once per step (as rnnkit's loops pack a recurrent weight, which
    changes at every update). So the GEMM rate is this machine's, not one library's."""
    runs = []
    for rows, inner, cols, count in products:
        a, b, out = torch.randn(rows, inner), torch.randn(inner, cols), torch.empty(rows, cols)

        def with_mkl(a=a, b=b, out=out, count=count):
            for _ in range(count):
                torch.mm(a, b, out=out)
        runs.append(with_mkl)
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            continue

        def pack(b=b, rows=rows, count=count):
            return torch.ops.mkldnn._reorder_linear_weight(b.t(), rows) if count > 1 else b.t()

        def with_onednn(a=a, count=count, pack=pack):
            weight = pack()
            for _ in range(count):
                torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")
        # the calibration times one call of each and the packing, not all `count` calls
        weight = pack()
        mkl = count * _call_time(lambda: torch.mm(a, b, out=out))
        onednn = (_call_time(pack) if count > 1 else 0.0) + count * _call_time(
            lambda: torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], ""))
        if onednn < mkl:
            runs[-1] = with_onednn

    def step():
        for run in runs:
            run()
    return step


def _call_time(call, repeats: int = 5) -> float:
    """The median time of `repeats` calls, after one more."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_key(key: str) -> str:
    """The "gemm/<cell>" contender timing the products of contender `key`'s step (cells with the
    same products share one: nn.RNN and both Elman cells, nn.LSTM and the LSTMs)."""
    spec = contender_spec(key)
    twin = next(s for s in CELL_SPECS if (s.gates, s.lags, s.jordan) == (spec.gates, spec.lags, spec.jordan))
    return f"gemm/{twin.label}"


def contender_keys(specs=CELL_SPECS) -> list[str]:
    """Every contender of a shape, each once (torch modules are shared between cells)."""
    keys = []
    for spec in specs:
        keys += [f"{spec.label}/fused", f"{spec.label}/bptt"] if spec.fused else [f"{spec.label}/auto"]
        keys.append(f"{spec.label}/loop")
        if spec.torch_cell:
            keys.append(f"{spec.label}/cell-loop")
        if f"torch/{spec.torch_ref}" not in keys:
            keys.append(f"torch/{spec.torch_ref}")
    if any(spec.label in CUSTOM_CELLS for spec in specs) and "torch/nn.LSTM" not in keys:
        keys.append("torch/nn.LSTM")  # the custom cells' 0.85× target is against nn.LSTM
    return keys


def contender_spec(key: str) -> CellSpec:
    group, kind = key.split("/", 1)
    return TORCH_SPECS[kind] if group == "torch" else SPEC_BY_LABEL[kind if group == "gemm" else group]


def time_contenders(keys: list[str], batch: int, hidden: int, steps: int, rounds: int, warmup: int = 1,
                    inner: int = 1, progress=None) -> dict[str, list[float]]:
    """Seconds per training step of each contender (`time_steps` on their `build_step`s)."""
    step_fns = {key: build_step(key, batch, hidden, steps) for key in keys}
    return time_steps(step_fns, rounds, warmup, inner, progress)


def time_steps(step_fns: dict, rounds: int, warmup: int = 1, inner: int = 1, progress=None) -> dict[str, list[float]]:
    """Seconds per call of each step function: `warmup` untimed calls each, then `rounds`
    interleaved rounds; each round times every function once (`inner` calls, averaged), in a
    seeded random order drawn anew each round."""
    keys = list(step_fns)
    for step in step_fns.values():
        for _ in range(warmup):
            step()
    times = {key: [] for key in keys}
    generator = torch.Generator().manual_seed(0)
    for r in range(rounds):
        for index in torch.randperm(len(keys), generator=generator).tolist():
            key = keys[index]
            start = time.perf_counter()
            for _ in range(inner):
                step_fns[key]()
            times[key].append((time.perf_counter() - start) / inner)
        if progress:
            progress(f"  round {r + 1}/{rounds} done")
    return times


# -----------------------------------------------------------------------------
# summary


def efficiency(times: dict[str, list[float]], key: str) -> float | None:
    """The median over rounds of the step's products' time ÷ contender `key`'s step time (times
    in round order); None without its "gemm/<cell>" timings."""
    products = times.get(gemm_key(key))
    if products is None:
        return None
    return statistics.median(gemm / step for gemm, step in zip(products, times[key]))


def paired_ratio(times: dict[str, list[float]], key: str, reference: str) -> float | None:
    """How many times faster contender `key` ran than `reference`: the median over rounds of the
    reference's step time ÷ key's, each pair timed in the same round (times in round order), so
    that a drift of the whole machine's speed between rounds cancels. None without `reference`."""
    if reference not in times:
        return None
    return statistics.median(ref / mine for ref, mine in zip(times[reference], times[key]))


def summarize(times: dict[str, list[float]], batch: int, hidden: int, steps: int, specs=CELL_SPECS) -> list[dict]:
    """Rows (one per cell and contender): tokens/s = B·T / median step seconds; paired ratios to
    the same run's torch module / rnnkit loop / nn.*Cell loop / nn.LSTM / the cell's fused path;
    GEMM efficiency."""
    tokens = batch * steps
    speed = {key: tokens / statistics.median(values) for key, values in times.items()}
    rows = []
    for spec in specs:
        kinds = (["fused", "bptt"] if spec.fused else ["auto"]) + ["loop"] + (["cell-loop"] if spec.torch_cell else [])
        entries = [(f"{spec.label}/{kind}", kind) for kind in kinds] + [(f"torch/{spec.torch_ref}", "torch")]
        for key, kind in entries:
            if key not in speed:
                continue
            flops = useful_flops(contender_spec(key), batch, hidden, steps)
            rows.append({
                "cell": spec.label, "kind": kind, "contender": _contender_name(spec, kind),
                "tokens_s": speed[key], "seconds": statistics.median(times[key]),
                "spread": _spread(times[key]),
                "x_torch": paired_ratio(times, key, f"torch/{spec.torch_ref}"),
                "x_loop": paired_ratio(times, key, f"{spec.label}/loop"),
                "x_cell_loop": paired_ratio(times, key, f"{spec.label}/cell-loop"),
                "x_lstm": paired_ratio(times, key, "torch/nn.LSTM"),
                "x_fused": paired_ratio(times, key, f"{spec.label}/fused"),
                "gflops": flops / statistics.median(times[key]) / 1e9,
                "efficiency": efficiency(times, key),
            })
    return rows


def auto_rows(rows: list[dict], batch: int, hidden: int, steps: int, specs=CELL_SPECS) -> list[dict]:
    """For the cells timed on both paths: an "auto" row repeating the path that
    Recurrent(path="auto") takes when training at this shape on the CPU."""
    from rnnkit.recurrent import Recurrent

    added = []
    for spec in specs:
        if spec.fused:
            layer = Recurrent(spec.cell, hidden, hidden, **spec.options)
            chosen = layer._fastest_path(torch.empty(batch, steps, hidden))
            row = _row(rows, spec.label, chosen)
            if row is not None:
                added.append({**row, "kind": "auto", "path": chosen, "contender": f"rnnkit auto (= {chosen})"})
    return added


def _spread(values: list[float]) -> float:
    """Interquartile range ÷ median (0 with fewer than 2 values)."""
    if len(values) < 2:
        return 0.0
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return (high - low) / statistics.median(values)


def _contender_name(spec: CellSpec, kind: str) -> str:
    if kind == "torch":
        return spec.torch_ref
    if kind == "cell-loop":
        return f"{spec.torch_cell} loop"
    return f"rnnkit {kind}"


def run_shape(name: str, settings: Settings, log, specs=CELL_SPECS) -> dict:
    batch, hidden, steps = SHAPES[name]
    keys = contender_keys(specs)
    keys += sorted({gemm_key(key) for key in keys})  # the steps' products, timed in the same rounds
    log(f"[{name}] B={batch} H={hidden} T={steps}: {len(keys)} contenders, "
        f"{settings.rounds[name]} rounds × {settings.inner[name]} step(s)")
    start = time.perf_counter()
    times = time_contenders(keys, batch, hidden, steps, settings.rounds[name], settings.warmup,
                            settings.inner[name], progress=log)
    rows = summarize(times, batch, hidden, steps, specs)
    rows += auto_rows(rows, batch, hidden, steps, specs)
    cell_rates = {spec.label: useful_flops(spec, batch, hidden, steps)
                  / statistics.median(times[gemm_key(f"{spec.label}/auto")]) for spec in specs}
    return {"shape": name, "batch": batch, "hidden": hidden, "steps": steps, "rows": rows,
            "gemm_rates": cell_rates, "seconds": time.perf_counter() - start}


# -----------------------------------------------------------------------------
# generation


def run_generation(settings: Settings, log) -> dict:
    from rnnkit.data.text import Vocabulary
    from rnnkit.tasks.text import TextConfig, build_model, exponential_noise, generate, sample

    vocab = Vocabulary([chr(32 + i) for i in range(VOCAB_SIZE)])
    torch.manual_seed(0)
    model = build_model(TextConfig(), VOCAB_SIZE).eval()
    prime = vocab.decode(torch.randint(0, VOCAB_SIZE, (100,)))
    generate(model, vocab, prime, length=20, seed=0)  # warm-up

    def timed(function):
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    def at_threads(count: int, function):
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            return function()
        finally:
            torch.set_num_threads(previous)

    # One stream at the bench's thread count and, on a machine with two cores or more, at two
    # (the compiled loop then splits each large product with a helper thread), with the weight
    # matrices in float32 and in float16 (`half_weights`), in interleaved rounds.
    thread_counts = sorted({torch.get_num_threads(), *([2] if (os.cpu_count() or 1) >= 2 else [])})
    single_times = {(half, count): [] for half in (False, True) for count in thread_counts}
    for _ in range(settings.gen_rounds):
        for half, count in single_times:
            single_times[half, count].append(at_threads(count, lambda: timed(
                lambda: generate(model, vocab, prime, length=settings.gen_chars, seed=0, half_weights=half))))
    single_by_threads, half_single_by_threads = (
        {count: settings.gen_chars / statistics.median(single_times[half, count]) for count in thread_counts}
        for half in (False, True))
    batched = timed(lambda: generate(model, vocab, prime, length=settings.gen_batched_chars, num_samples=32, seed=0))

    @torch.no_grad()
    def reread():
        ids = vocab.encode(prime)[None]
        generator = torch.Generator().manual_seed(0)
        for _ in range(settings.reread_chars):
            logits, _ = model(ids)
            token = sample(logits[:, -1], noise=exponential_noise(1, VOCAB_SIZE, generator=generator))
            ids = torch.cat([ids, token], dim=1)

    rereading = timed(reread)

    def per_call_us(call, repeats: int, warmup: int) -> float:
        """µs per call of `call()`, after `warmup` untimed calls."""
        for _ in range(warmup):
            call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        return (time.perf_counter() - start) / repeats * 1e6

    @torch.no_grad()
    def one_step_us(step):
        """µs for the model to take one step from a carried state (all of a character but the
        sampling): the compiled stepper (beam search's), SequenceModel.step, and forward."""
        token = torch.tensor([5])
        _, state = model(vocab.encode(prime)[None])
        return per_call_us(lambda: step(token, state), repeats=200, warmup=5)

    def one_draw_us(draw):
        """µs to draw one character from a (1, V) row of logits."""
        logits, generator = torch.randn(1, VOCAB_SIZE), torch.Generator().manual_seed(0)
        return per_call_us(lambda: draw(logits, generator), repeats=2000, warmup=50)

    with torch.no_grad():
        stepper = model.stepper()
    result = {
        "model": "build_model(TextConfig(), vocab_size=103): embedding 64 → LSTM 512 → linear 103",
        "threads": torch.get_num_threads(),
        "single_chars": settings.gen_chars, "single_rounds": settings.gen_rounds, "single_chars_s": single_by_threads[torch.get_num_threads()],
        "single_chars_s_by_threads": single_by_threads, "half_single_chars_s_by_threads": half_single_by_threads,
        "batched_chars": settings.gen_batched_chars * 32, "batched_chars_s": settings.gen_batched_chars * 32 / batched,
        "reread_chars": settings.reread_chars, "reread_chars_s": settings.reread_chars / rereading,
        "step_us": {"compiled stepper": one_step_us(stepper),
                    "SequenceModel.step": one_step_us(model.step),
                    "forward over one step": one_step_us(lambda token, state: model(token[:, None], state))},
        "sample_us": {"exponential race (`sample`)":
                      one_draw_us(lambda logits, generator: sample(
                          logits, noise=exponential_noise(*logits.shape, generator=generator))),
                      "softmax + torch.multinomial":
                      one_draw_us(lambda logits, generator: torch.multinomial(torch.softmax(logits, -1), 1,
                                                                              generator=generator))},
    }
    log(f"[generation] single {result['single_chars_s']:.0f} chars/s, 32 streams {result['batched_chars_s']:.0f}, "
        f"re-reading {result['reread_chars_s']:.0f}")
    return result


def run_text_training(settings: Settings, log) -> dict:
    """Training steps of the default text model (rnnkit's Trainer on the pydoc corpus) in
    float32 and under bf16 autocast (`--precision`), and with locked dropout, interleaved."""
    import tempfile

    from rnnkit.tasks.text import TextConfig, TextTask, default_train_config
    from rnnkit.train.trainer import Trainer, bf16_is_native, bf16_is_supported

    variants = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16, locked dropout": ("bf16", True)}
    if not bf16_is_supported("cpu"):  # no bf16 kernels (an AVX2-only CPU): fp32 with locked dropout instead
        variants = {"fp32": ("fp32", False), "fp32, locked dropout": ("fp32", True)}
    trainers = {}
    for name, (precision, locked) in variants.items():
        torch.manual_seed(0)
        task = TextTask(TextConfig(locked_dropout=locked))
        config = replace(default_train_config(), precision=precision, max_steps=10**6, gradient_flow=False)
        trainers[name] = Trainer(task, config, Path(tempfile.gettempdir()), {}, quiet=True)
        trainers[name].train_step()  # warm-up
    chars = TextConfig().batch_size * TextConfig().bptt  # per step, the same for every variant
    times = {name: [] for name in variants}
    order = random.Random(0)
    for _ in range(settings.text_rounds):
        for name in order.sample(list(variants), len(variants)):
            start = time.perf_counter()
            trainers[name].train_step()
            times[name].append(time.perf_counter() - start)
    result = {"model": "TextConfig() defaults: embedding 64 → LSTM 512 → linear, batch 32 × 100 characters, Adam",
              "native_bf16": bf16_is_native("cpu"), "bf16_supported": bf16_is_supported("cpu"),
              "chars_s": {name: chars / statistics.median(t) for name, t in times.items()}}
    log("[text training] " + ", ".join(f"{name} {rate:.0f} chars/s" for name, rate in result["chars_s"].items()))
    return result


# -----------------------------------------------------------------------------
# memory


def _max_rss_mb() -> float:
    """This process's peak resident set size in MB: VmHWM, which starts afresh at exec (Linux's
    ru_maxrss does not: it keeps the parent's high-water mark across fork + exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def memory_child(mode: str, length: int) -> dict:
    """Train the memory model once over a synthetic stream of `length` characters; peak RSS."""
    from rnnkit.data.text import StreamBatches
    from rnnkit.tasks.text import TextConfig, build_model

    torch.manual_seed(0)
    model = build_model(TextConfig(**MEMORY_MODEL), VOCAB_SIZE)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids = torch.randint(0, VOCAB_SIZE, (length,))
    baseline = _max_rss_mb()
    start = time.perf_counter()
    chunks = 0
    if mode == "full":
        logits, _ = model(ids[None, :-1])
        F.cross_entropy(logits[0], ids[1:]).backward()
        optimizer.step()
        chunks = 1
    else:
        state = None
        for inputs, targets in StreamBatches(ids, 32, 100):
            logits, state = model(inputs, state)
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            chunks += 1
    return {"mode": mode, "length": length, "peak_mb": _max_rss_mb(), "baseline_mb": baseline,
            "seconds": time.perf_counter() - start, "chunks": chunks}


def _run_child(mode: str, length: int, threads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", mode, str(length),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"mode": mode, "length": length, "skipped": f"child failed: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_memory(settings: Settings, threads: int, log) -> dict:
    results = {"full": [], "truncated": []}
    for mode in ("truncated", "full"):
        for length in settings.memory_lengths:
            done = results[mode]
            if mode == "full" and len(done) >= 2 and all("peak_mb" in d for d in done[-2:]):
                (a, b) = done[-2:]  # linear in length: extrapolate from the last two
                slope_mb = (b["peak_mb"] - a["peak_mb"]) / (b["length"] - a["length"])
                peak = b["peak_mb"] + slope_mb * (length - b["length"])
                seconds = b["seconds"] * length / b["length"]
                if peak > MEMORY_LIMIT_MB or seconds > FULL_BPTT_TIME_LIMIT_S:
                    done.append({"mode": mode, "length": length, "skipped":
                                 f"skipped: extrapolated peak ≈ {peak:.0f} MB, time ≈ {seconds:.0f} s "
                                 f"(limits {MEMORY_LIMIT_MB} MB, {FULL_BPTT_TIME_LIMIT_S} s)"})
                    log(f"[memory] {mode} {length}: {done[-1]['skipped']}")
                    continue
            done.append(_run_child(mode, length, threads))
            entry = done[-1]
            log(f"[memory] {mode} {length}: " + (entry.get("skipped") or
                f"peak {entry['peak_mb']:.0f} MB (baseline {entry['baseline_mb']:.0f}) in {entry['seconds']:.1f} s"))
    results["model"] = ("build_model(TextConfig(cell='lstm', embedding_size=64, hidden_size=128), 103) — "
                        "smaller than the default (H=512) so that 1M characters fit the time budget")
    return results


# -----------------------------------------------------------------------------
# targets and report


def _fmt(value, digits=2, suffix=""):
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _row(rows, cell, kind):
    return next((r for r in rows if r["cell"] == cell and r["kind"] == kind), None)


def targets(shapes: dict, generation: dict, memory: dict) -> list[tuple[str, bool | None, str]]:
    """(target, met (None: not measured), the numbers)."""
    checks = []

    def check(title, pairs, threshold, wanted_shapes):
        """pairs: (shape, label, value); met when every value >= threshold."""
        missing = [s for s in wanted_shapes if s not in shapes]
        values = [(s, label, v) for s, label, v in pairs if v is not None]
        if not values:
            checks.append((title, None, "not measured (" + ", ".join(missing) + " not run)"))
            return
        failing = [f"{label}@{s} {v:.2f}" for s, label, v in values if v < threshold]
        text = "; ".join(f"{label}@{s} {v:.2f}" for s, label, v in values)
        if missing:
            text += f" (not run: {', '.join(missing)})"
        met = not failing and not missing
        checks.append((title, met if not missing or failing else None,
                       text + (f" — below: {', '.join(failing)}" if failing else "")))

    mid = [s for s in ("medium", "large")]
    pairs = [(s, f"{c}[{k}]", (_row(shapes[s]["rows"], c, k) or {}).get("x_torch"))
             for s in mid if s in shapes for c, k in HAND_BPTT_CELLS]
    check(f"Elman/Jordan/multi-lag hand BPTT ≥ {HAND_BPTT_VS_RNN}× nn.RNN (medium, large)", pairs,
          HAND_BPTT_VS_RNN, mid)
    every = list(SHAPES)
    # [fused]: auto took the fused kernel, torch's own, so the ratio is 1 up to noise
    pairs = [(s, f"{c}[{row['path']}]", row["x_torch"])
             for s in every if s in shapes for c in ("lstm", "gru")
             for row in [_row(shapes[s]["rows"], c, "auto")] if row is not None]
    check(f"LSTM/GRU auto ≥ {FUSED_VS_TORCH}× nn.LSTM/nn.GRU (every shape)", pairs, FUSED_VS_TORCH, every)
    pairs = [(s, c, (_row(shapes[s]["rows"], c, "auto") or {}).get("x_lstm"))
             for s in every if s in shapes for c in CUSTOM_CELLS]
    check(f"custom cells (Jordan, multi-lag, LayerNorm-LSTM) auto ≥ {CUSTOM_VS_LSTM}× nn.LSTM (every shape)",
          pairs, CUSTOM_VS_LSTM, every)
    pairs = [("small", c, (_row(shapes["small"]["rows"], c, "auto") or {}).get("x_loop"))
             for c in CUSTOM_CELLS] if "small" in shapes else []
    check(f"custom cells auto ≥ {CUSTOM_VS_LOOP_SMALL}× their Python loop (small)", pairs,
          CUSTOM_VS_LOOP_SMALL, ["small"])
    pairs = [(s, spec.label, (_row(shapes[s]["rows"], spec.label, "auto") or {}).get("efficiency"))
             for s in mid if s in shapes for spec in CELL_SPECS]
    check(f"GEMM efficiency of auto ≥ {EFFICIENCY:.0%} (medium, large, every cell)", pairs, EFFICIENCY, mid)
    rates = {"float32": generation["single_chars_s_by_threads"],
             "float16 (`--half-weights`)": generation["half_single_chars_s_by_threads"]}
    checks.append((f"generation ≥ {GENERATION_CHARS_S:,} chars/s single stream",
                   max(rate for by_threads in rates.values() for rate in by_threads.values()) >= GENERATION_CHARS_S,
                   "; ".join(f"weight matrices in {weights}: " + ", ".join(
                       f"{rate:,.0f} chars/s at {count} thread{'s' * (count > 1)}" for count, rate in by_threads.items())
                       for weights, by_threads in rates.items())))
    truncated = [d for d in memory["truncated"] if "peak_mb" in d]
    if truncated and truncated[0]["length"] == 10_000:
        base = truncated[0]["peak_mb"]
        spread = max(abs(d["peak_mb"] / base - 1) for d in truncated)
        longest = truncated[-1]["length"]
        text = ", ".join(f"{d['length']:,}: {d['peak_mb']:.0f} MB" for d in truncated) + f"; max change {spread:.1%}"
        met = spread <= TRUNCATED_FLATNESS if longest >= 1_000_000 else None
        if longest < 1_000_000:
            text += f" (only up to {longest:,} characters measured)"
        checks.append((f"truncated BPTT peak memory flat within {TRUNCATED_FLATNESS:.0%} from 10k to 1M characters",
                       met if not (longest < 1_000_000 and spread > TRUNCATED_FLATNESS) else False, text))
    return checks


def shape_table(shape: dict) -> str:
    lines = [f"### {shape['shape']}: B={shape['batch']}, H=I={shape['hidden']}, T={shape['steps']} "
             f"({shape['batch'] * shape['steps']:,} tokens per step)",
             "",
             "| cell | contender | tokens/s | spread | × torch module | × rnnkit loop | × nn.Cell loop | GFLOP/s "
             "| GEMM eff. |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in shape["rows"]:
        lines.append(f"| {r['cell']} | {r['contender']} | {r['tokens_s']:,.0f} | {100 * r['spread']:.0f}% | "
                     f"{_fmt(r['x_torch'])} | "
                     f"{_fmt(r['x_loop'])} | {_fmt(r['x_cell_loop'])} | {r['gflops']:.1f} | "
                     f"{_fmt(None if r['efficiency'] is None else 100 * r['efficiency'], 0, '%')} |")
    lines += ["", "GEMM rate (fp32, the step's products each by the faster of MKL and oneDNN, timed in the same rounds, "
              "GFLOP/s): " +
              ", ".join(f"{cell} {rate / 1e9:.1f}" for cell, rate in shape["gemm_rates"].items())]
    return "\n".join(lines)


def noise_gauge(shapes: dict) -> str:
    """Elman "fused" runs the same kernel as nn.RNN: their ratio is the measurement's noise."""
    parts = [f"{name} {cell[6:]} {_row(shape['rows'], cell, 'fused')['x_torch']:.2f}"
             for name, shape in shapes.items() for cell in ("elman-tanh", "elman-relu")]
    return ("Noise gauge — rnnkit Elman \"fused\" and nn.RNN run the same fused kernel, so their ratio "
            "would be 1.00 without noise: " + ", ".join(parts) + ".")


def fused_vs_bptt(shapes: dict) -> str:
    lines = ["| shape | cell | fused tokens/s | hand BPTT tokens/s | bptt ÷ fused | faster |", "|---|---|---:|---:|---:|---|"]
    for name, shape in shapes.items():
        for cell in ("elman-tanh", "elman-relu", "lstm", "gru"):
            fused, bptt = _row(shape["rows"], cell, "fused"), _row(shape["rows"], cell, "bptt")
            if fused and bptt:
                ratio = bptt["x_fused"]
                lines.append(f"| {name} | {cell} | {fused['tokens_s']:,.0f} | {bptt['tokens_s']:,.0f} | "
                             f"{ratio:.2f} | {'hand BPTT' if ratio > 1 else 'fused'} |")
    return "\n".join(lines)


def reference_comparison(shapes: dict) -> str:
    if "medium" not in shapes:
        return ""
    rows = shapes["medium"]["rows"]
    lstm, rnn = _row(rows, "lstm", "torch"), _row(rows, "elman-tanh", "torch")
    cell_loop = _row(rows, "lstm", "cell-loop")
    return (f"Reference machine (medium, 1 thread): nn.LSTM ≈ 13.0k tokens/s (≈ 92% of GEMM rate), nn.RNN ≈ 38.5k "
            f"(≈ 74%), LSTMCell loop ≈ 0.68× nn.LSTM. Here: nn.LSTM {lstm['tokens_s'] / 1e3:.1f}k "
            f"({100 * lstm['efficiency']:.0f}%), nn.RNN {rnn['tokens_s'] / 1e3:.1f}k ({100 * rnn['efficiency']:.0f}%), "
            f"LSTMCell loop {cell_loop['x_torch']:.2f}× nn.LSTM.")


def generation_table(gen: dict) -> str:
    carried = gen["single_chars_s"]
    return "\n".join([
        f"Model: {gen['model']}; prime of 100 characters; sampling at temperature 1; one stream: the median of "
        f"{gen['single_rounds']} interleaved rounds.", "",
        "| method | characters written | chars/s | ÷ re-reading |", "|---|---:|---:|---:|",
        f"| carried state, 1 stream (`generate`: the compiled writing loop) | {gen['single_chars']:,} | {carried:,.0f} | "
        f"{carried / gen['reread_chars_s']:.1f} |",
        *[f"| carried state, 1 stream, {count} threads | {gen['single_chars']:,} | {rate:,.0f} | "
          f"{rate / gen['reread_chars_s']:.1f} |" for count, rate in gen["single_chars_s_by_threads"].items()
          if count != gen["threads"]],
        *[f"| carried state, 1 stream, {count} thread{'s' * (count > 1)}, float16 weight matrices "
          f"(`half_weights`) | {gen['single_chars']:,} | {rate:,.0f} | {rate / gen['reread_chars_s']:.1f} |"
          for count, rate in gen["half_single_chars_s_by_threads"].items()],
        f"| carried state, 32 streams (`generate(num_samples=32)`) | {gen['batched_chars']:,} | "
        f"{gen['batched_chars_s']:,.0f} | {gen['batched_chars_s'] / gen['reread_chars_s']:.1f} |",
        f"| re-reading the whole text so far, 1 stream | {gen['reread_chars']:,} | {gen['reread_chars_s']:,.0f} | 1.0 |",
        "", "One step of the model (batch 1, one character, carried state; all of a character but the "
        "sampling): " + ", ".join(f"{how} {us:.0f} µs" for how, us in gen["step_us"].items()) + ". "
        "Drawing one character from the logits: " + ", ".join(f"{how} {us:.0f} µs" for how, us in gen["sample_us"].items())
        + ".",
    ])


def text_training_table(text: dict) -> str:
    base = text["chars_s"]["fp32"]
    lines = [f"Model: {text['model']}; one `Trainer.train_step` (forward, loss, backward, clipping, Adam); "
             f"this CPU {'has' if text['native_bf16'] else 'lacks'} native bf16 (AMX), so `--precision auto` "
             f"trains in {'bf16' if text['native_bf16'] else 'fp32'} here"
             + ("." if text["bf16_supported"] else "; it has no bf16 kernels at all, so there is no bf16 row."),
             "",
             "| precision | chars/s | ÷ fp32 |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:,.0f} | {rate / base:.2f} |" for name, rate in text["chars_s"].items()]
    return "\n".join(lines)


def memory_table(memory: dict) -> str:
    lines = [f"Model: {memory['model']}. Peak RSS of a child process (torch and the model included; "
             "baseline = peak before training).", "",
             "| BPTT | stream length | peak MB | baseline MB | peak ÷ 10k peak | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for mode in ("full", "truncated"):
        entries = memory[mode]
        base = next((d["peak_mb"] for d in entries if d.get("length") == 10_000 and "peak_mb" in d), None)
        label = "full (one sequence, batch 1)" if mode == "full" else "truncated (batch 32, bptt 100, state carried)"
        for d in entries:
            if "peak_mb" in d:
                lines.append(f"| {label} | {d['length']:,} | {d['peak_mb']:.0f} | {d['baseline_mb']:.0f} | "
                             f"{_fmt(None if base is None else d['peak_mb'] / base)} | {d['seconds']:.1f} |")
            else:
                lines.append(f"| {label} | {d['length']:,} | {d['skipped']} | | | |")
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    # The vector unit ATen dispatches to (AVX2, AVX512): same model names have shipped with either,
    # and the ratios move with it.
    return f"{model} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} logical CPUs"


def report(command: str, quick: bool, threads: int, shapes: dict, generation: dict, text_training: dict, memory: dict,
           seconds: float) -> str:
    lines = ["## Speed (`rnnkit bench`)", "",
             f"- command: `{command}`" + (" (quick: fewer rounds, no large shape, memory up to 100k)" if quick else ""),
             f"- machine: {machine()}; torch {torch.__version__}; **threads: {threads}**",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total time {seconds:.0f} s",
             "- method: one process, interleaved rounds (order shuffled each round); tokens/s from the median step time, "
             "ratios = the median over rounds of the two step times of one round; a step = forward + "
             "backward from a fixed output gradient (to the parameters and the input) + SGD step; efficiency = the time of the step's products alone (3 × the forward "
             "GEMM FLOPs, each product shape by the faster of MKL's torch.mm and oneDNN's matmul, timed in the same rounds) ÷ the step's time, median over rounds (see benchmarks/speed.py)", "",
             "### Targets", ""]
    for title, met, text in targets(shapes, generation, memory):
        status = "not measured" if met is None else ("met" if met else "NOT MET")
        lines.append(f"- **{status}** — {title}: {text}")
    lines += ["", reference_comparison(shapes), "", noise_gauge(shapes), "",
              "### Fused kernel vs hand BPTT", "", fused_vs_bptt(shapes), ""]
    for shape in shapes.values():
        lines += [shape_table(shape), ""]
    lines += ["### Training the text model: precision and dropout masks", "", text_training_table(text_training), "",
              "### Generation", "", generation_table(generation), "",
              "### Peak memory vs stream length", "", memory_table(memory)]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Put `text` between the speed markers of `path`, keeping everything outside them; create
    the file if missing; append the section if the markers are not there yet."""
    path = Path(path)
    section = f"{BEGIN}\n{text.rstrip()}\n{END}"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    start, stop = old.find(BEGIN), old.find(END)
    if start != -1 and stop > start:
        new = old[:start] + section + old[stop + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(new, encoding="utf-8")
    temporary.replace(path)


# -----------------------------------------------------------------------------


def parse_args(argv, prog):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and medium shapes, fewer rounds (< 2 minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the RESULTS.md to write the section into")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None, prog: str = "python benchmarks/speed.py") -> dict:
    args = parse_args(argv, prog)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        mode, length = args.memory_child
        print(json.dumps(memory_child(mode, int(length))))
        return {}
    started = time.perf_counter()
    settings = QUICK if args.quick else FULL

    def log(message):
        print(message, file=sys.stderr, flush=True)

    log(f"rnnkit speed benchmark: threads={torch.get_num_threads()} torch {torch.__version__} "
        f"{'quick' if args.quick else 'full'}")
    shapes = {name: run_shape(name, settings, log) for name in settings.rounds}
    generation = run_generation(settings, log)
    text = run_text_training(settings, log)
    memory = run_memory(settings, args.threads, log)
    command = " ".join([prog] + (list(argv) if argv is not None else sys.argv[1:]))
    section = report(command, args.quick, args.threads, shapes, generation, text, memory,
                     time.perf_counter() - started)
    print(section)
    write_section(args.out, section)
    log(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return {"shapes": shapes, "generation": generation, "text": text, "memory": memory}


if __name__ == "__main__":
    main()
