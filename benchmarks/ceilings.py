"""Ceilings of the two speed targets still open (issue 4), measured the way `rnnkit bench` measures.

1. Elman ≥ 1.25× nn.RNN. A step doing only the Elman step's matrix products (the bench's GEMM
   reference: each product shape by the faster of MKL's torch.mm and oneDNN's matmul), the
   bench's output gradient handed to an output of the step's shape, and the SGD update is what
   any Elman implementation must do at least. nn.RNN ÷ that step is the most any Elman can lead
   nn.RNN by. An Elman also applies f to every pre-activation and forms δ = ∂L/∂h ⊙ f'(a) and the
   bias gradient's sum over all of them; that pointwise work, one pass each (ATen's kernels),
   added to the floor round by round gives the lower ceiling that counts it.
2. LayerNorm-LSTM ≥ 85% of the GEMM rate. The hand-BPTT LSTM's step plus ATen's own layer-norm
   kernels run once over each of the three whole tensors a LayerNorm-LSTM normalises (LN_ih and
   LN_hh over (T·B, 4H), LN_c over (T·B, H); forward and backward) costs no per-step overhead for
   the layer norms at all: its efficiency says where ATen's layer norms would put it.

Every contender of a shape is timed in the same interleaved rounds (order shuffled each round),
medians reported, ratios taken per round:

    OMP_NUM_THREADS=1 python benchmarks/ceilings.py [--shapes medium,large] [--rounds 12]
"""

import argparse

import numpy as np
import torch
from torch import nn

import speed


def _floor_step(batch: int, hidden: int, steps: int):
    """The Elman step's products, the bench's backward from its output gradient and an SGD update of
    nn.RNN's parameters, nothing else."""
    products = speed._products_step(speed.step_products(speed.SPEC_BY_LABEL["elman-tanh"], batch, hidden, steps))
    outputs = torch.randn(batch, steps, hidden, requires_grad=True)
    grad_outputs = torch.randn(batch, steps, hidden) / (batch * steps * hidden)
    parameters = list(nn.RNN(hidden, hidden).parameters())
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    optimizer = torch.optim.SGD(parameters, lr=1e-3)

    def step():
        products()
        outputs.backward(grad_outputs)
        optimizer.step()
        outputs.grad = None
    return step


def _pointwise_step(batch: int, hidden: int, steps: int, nonlinearity: str):
    """The pointwise work of an Elman step over all B·T·H pre-activations, one pass each: h = f(a),
    δ = ∂L/∂h ⊙ f'(a) (timed as one product of the two tensors it reads: the same memory traffic as
    the fused pass, a few fewer flops), and ∂L/∂b = Σ δ over the rows."""
    pre_activations, grad_h = torch.randn(batch * steps, hidden), torch.randn(batch * steps, hidden)
    h, delta, grad_bias = torch.empty_like(pre_activations), torch.empty_like(pre_activations), torch.empty(hidden)

    def step():
        if nonlinearity == "tanh":
            torch.tanh(pre_activations, out=h)
        else:
            torch.clamp_min(pre_activations, 0, out=h)
        torch.mul(grad_h, h, out=delta)
        torch.sum(delta, 0, out=grad_bias)
    return step


def _layer_norms_step(batch: int, hidden: int, steps: int):
    """ATen's layer norm, forward and backward, once over each of a LayerNorm-LSTM's three normalised tensors."""
    rows = batch * steps
    operands = [(torch.randn(rows, width), torch.randn(width), torch.randn(width), torch.randn(rows, width))
                for width in (4 * hidden, 4 * hidden, hidden)]

    def step():
        for inputs, gain, bias, grad in operands:
            _, mean, rstd = torch.native_layer_norm(inputs, (inputs.shape[1],), gain, bias, 1e-5)
            torch.ops.aten.native_layer_norm_backward(grad, inputs, [inputs.shape[1]], mean, rstd, gain, bias,
                                                      [True, True, True])
    return step


def median(per_round: np.ndarray) -> float:
    return float(np.median(per_round))


def measure(shape: str, rounds: int) -> dict[str, float]:
    batch, hidden, steps = speed.SHAPES[shape]
    keys = ["gemm/elman-tanh", "torch/nn.RNN(tanh)", "torch/nn.RNN(relu)", "elman-tanh/auto", "elman-relu/auto",
            "gemm/lnlstm", "lstm/auto", "lnlstm/auto"]
    contenders = {key: speed.build_step(key, batch, hidden, steps) for key in keys}
    contenders["floor"] = _floor_step(batch, hidden, steps)
    contenders["layer norms"] = _layer_norms_step(batch, hidden, steps)
    for nonlinearity in ("tanh", "relu"):
        contenders[f"pointwise {nonlinearity}"] = _pointwise_step(batch, hidden, steps, nonlinearity)
    t = {key: np.array(values) for key, values in speed.time_steps(contenders, rounds).items()}
    result = {"shape": shape, "rounds": rounds, "layer norms ms": float(np.median(t["layer norms"]) * 1e3)}
    for nonlinearity in ("tanh", "relu"):
        torch_rnn = t[f"torch/nn.RNN({nonlinearity})"]
        result[f"ceiling {nonlinearity}"] = median(torch_rnn / t["floor"])
        with_pointwise = t["floor"] + t[f"pointwise {nonlinearity}"]
        result[f"ceiling with pointwise {nonlinearity}"] = median(torch_rnn / with_pointwise)
        result[f"rnnkit {nonlinearity}"] = median(torch_rnn / t[f"elman-{nonlinearity}/auto"])
    result["efficiency floor"] = median(t["gemm/elman-tanh"] / t["floor"])
    result["efficiency nn.RNN(tanh)"] = median(t["gemm/elman-tanh"] / t["torch/nn.RNN(tanh)"])
    result["efficiency lstm"] = median(t["gemm/lnlstm"] / t["lstm/auto"])
    result["efficiency lnlstm"] = median(t["gemm/lnlstm"] / t["lnlstm/auto"])
    result["efficiency lstm + layer norms"] = median(t["gemm/lnlstm"] / (t["lstm/auto"] + t["layer norms"]))
    return result


def table(results: list[dict]) -> str:
    lines = ["| shape | Elman ÷ nn.RNN ceiling, tanh / relu | the same with f, f' and Σδ | rnnkit, tanh / relu "
             "| efficiency: floor / nn.RNN(tanh) "
             "| LSTM | LSTM + ATen's layer norms | LayerNorm-LSTM | layer norms (ms) |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['shape']} | {r['ceiling tanh']:.2f} / {r['ceiling relu']:.2f} "
                     f"| {r['ceiling with pointwise tanh']:.2f} / {r['ceiling with pointwise relu']:.2f} "
                     f"| {r['rnnkit tanh']:.2f} / {r['rnnkit relu']:.2f} "
                     f"| {r['efficiency floor']:.2f} / {r['efficiency nn.RNN(tanh)']:.2f} | {r['efficiency lstm']:.3f} "
                     f"| {r['efficiency lstm + layer norms']:.3f} | {r['efficiency lnlstm']:.3f} "
                     f"| {r['layer norms ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="medium,large")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(table([measure(shape, args.rounds) for shape in args.shapes.split(",")]))


if __name__ == "__main__":
    main()
