"""benchmarks/speed.py (`rnnkit bench`): one tiny measurement and the RESULTS.md writer, not the benchmark."""

import importlib.util
import statistics
from pathlib import Path

import pytest
import torch

from rnnkit.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_measurement_gives_positive_speeds_and_documented_ratios(speed):
    specs = [speed.SPEC_BY_LABEL["lstm"], speed.SPEC_BY_LABEL["jordan"]]
    keys = speed.contender_keys(specs)
    assert {"lstm/fused", "lstm/bptt", "lstm/loop", "lstm/cell-loop", "torch/nn.LSTM",
            "jordan/auto", "jordan/loop", "torch/nn.RNN(tanh)"} == set(keys)
    batch, hidden, steps = 2, 4, 3
    keys += sorted({speed.gemm_key(key) for key in keys})
    assert keys[-2:] == ["gemm/jordan", "gemm/lstm"]  # nn.LSTM's products are the LSTM's
    times = speed.time_contenders(keys, batch, hidden, steps, rounds=3, warmup=1)
    assert all(len(values) == 3 and min(values) > 0 for values in times.values())
    rows = speed.summarize(times, batch, hidden, steps, specs)
    rows += speed.auto_rows(rows, batch, hidden, steps, specs)
    speed_of = {key: batch * steps / statistics.median(values) for key, values in times.items()}
    lstm = {r["kind"]: r for r in rows if r["cell"] == "lstm"}
    assert set(lstm) == {"fused", "bptt", "loop", "cell-loop", "torch", "auto"}
    assert lstm["auto"]["contender"] == "rnnkit auto (= loop)"  # 3 steps: short enough for the loop
    assert lstm["auto"]["path"] == "loop"
    assert all(r["tokens_s"] > 0 for r in rows)
    assert lstm["fused"]["tokens_s"] == pytest.approx(speed_of["lstm/fused"])

    def paired(key, reference):  # each round's two times, then the median over rounds
        return statistics.median(r / k for r, k in zip(times[reference], times[key]))
    assert lstm["fused"]["x_torch"] == pytest.approx(paired("lstm/fused", "torch/nn.LSTM"))
    assert lstm["bptt"]["x_loop"] == pytest.approx(paired("lstm/bptt", "lstm/loop"))
    assert lstm["bptt"]["x_fused"] == pytest.approx(paired("lstm/bptt", "lstm/fused"))
    assert lstm["fused"]["x_cell_loop"] == pytest.approx(paired("lstm/fused", "lstm/cell-loop"))
    assert lstm["torch"]["x_torch"] == pytest.approx(1.0)
    flops = 3 * 2 * batch * steps * 4 * hidden * (hidden + hidden)  # 3 · 2·B·T·G·H·(I + H)
    assert speed.useful_flops(specs[0], batch, hidden, steps) == flops
    per_round = [gemm / step for gemm, step in zip(times["gemm/lstm"], times["lstm/fused"])]
    assert lstm["fused"]["efficiency"] == pytest.approx(statistics.median(per_round))
    assert lstm["torch"]["efficiency"] == pytest.approx(statistics.median(
        gemm / step for gemm, step in zip(times["gemm/lstm"], times["torch/nn.LSTM"])))
    jordan = {r["kind"]: r for r in rows if r["cell"] == "jordan"}
    assert jordan["auto"]["x_cell_loop"] is None  # no nn.*Cell for Jordan
    assert jordan["auto"]["x_lstm"] == pytest.approx(paired("jordan/auto", "torch/nn.LSTM"))
    # Jordan: 2·B·T·H·(I + O) + 2·B·T·H·O forward
    assert speed.useful_flops(specs[1], batch, hidden, steps) == 3 * 2 * batch * steps * hidden * (3 * hidden)


def test_the_gemm_contender_does_exactly_the_products_of_a_step(speed, monkeypatch):
    """gemm/<cell> runs every product of the cell's training step, each as often as the step does,
    by MKL's torch.mm or oneDNN's matmul; together they are the useful FLOPs that the efficiency
    counts."""
    spec = speed.SPEC_BY_LABEL["jordan"]
    products = speed.step_products(spec, 2, 4, 3)
    assert sum(2 * r * k * n * c for r, k, n, c in products) == speed.useful_flops(spec, 2, 4, 3)
    done = []
    real_mm, real_linear = speed.torch.mm, torch.ops.mkldnn._linear_pointwise

    def counted_mm(a, b, out):
        done.append((*a.shape, b.shape[1]))
        return real_mm(a, b, out=out)

    def counted_linear(a, packed, *options):
        result = real_linear(a, packed, *options)
        done.append((*a.shape, result.shape[1]))
        return result
    monkeypatch.setattr(speed.torch, "mm", counted_mm)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted_linear)
    step = speed.build_step("gemm/jordan", 2, 4, 3)
    done.clear()  # the calibration's calls
    step()
    assert sorted(done) == sorted(product[:3] for product in products for _ in range(product[3]))


def test_results_writer_replaces_only_its_section(speed, tmp_path):
    out = tmp_path / "RESULTS.md"
    speed.write_section(out, "first")
    assert speed.BEGIN in out.read_text() and "first" in out.read_text()
    other = "# Results\n\nintro\n\n<!-- quality:begin -->\nquality numbers\n<!-- quality:end -->\n\n"
    out.write_text(other + f"{speed.BEGIN}\nold speed\n{speed.END}\n\ntrailing text\n")
    speed.write_section(out, "new speed")
    text = out.read_text()
    assert text == other + f"{speed.BEGIN}\nnew speed\n{speed.END}\n\ntrailing text\n"
    plain = tmp_path / "plain.md"
    plain.write_text("# Other\n\nkept\n")
    speed.write_section(plain, "added")
    assert plain.read_text() == f"# Other\n\nkept\n\n{speed.BEGIN}\nadded\n{speed.END}\n"


def test_bench_command_rejects_bad_threads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_ceilings_script_measures_each_ceiling_from_the_same_rounds(monkeypatch):
    """benchmarks/ceilings.py (the open targets' ceilings, cited in RESULTS.md) at a tiny shape."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("ceilings_under_test", SCRIPT.parent / "ceilings.py")
    ceilings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceilings)
    monkeypatch.setitem(ceilings.speed.SHAPES, "tiny", (2, 4, 6))
    result = ceilings.measure("tiny", rounds=3)
    ratios = {key: value for key, value in result.items() if key.startswith(("ceiling", "rnnkit", "efficiency"))}
    assert len(ratios) == 11 and all(value > 0 for value in ratios.values())
    # the pointwise work is added to the floor round by round: that ceiling sits below the floor's alone
    assert all(result[f"ceiling with pointwise {f}"] < result[f"ceiling {f}"] for f in ("tanh", "relu"))
    # the layer norms' time is added to the LSTM's round by round, so that bound sits below the LSTM alone
    assert result["efficiency lstm + layer norms"] < result["efficiency lstm"]
    assert "| tiny | " in ceilings.table([result])
