"""The reference for the text quality bar: a plain PyTorch character LSTM, as issue 3 states it.

Embedding 64 → nn.LSTM 2×256 → Linear; 64 contiguous streams read 100 characters at a time
with the state carried; Adam 2e-3; gradient norm clipped at 1.0; no dropout, no schedule.
Returns the validation bits per character measured every `eval_every` seconds of training
(evaluation time excluded), so the curve can be drawn beside rnnkit's.
"""

import math
import time

import torch
import torch.nn.functional as F
from torch import nn


class CharLSTM(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 64)
        self.lstm = nn.LSTM(64, 256, num_layers=2, batch_first=True)
        self.out = nn.Linear(256, vocab_size)

    def forward(self, x, state=None):
        h, state = self.lstm(self.embed(x), state)
        return self.out(h), state


def batchify(ids, streams):
    length = len(ids) // streams
    return ids[: streams * length].view(streams, length)


@torch.no_grad()
def val_bpc(model, val, bptt=100):
    data, state, total = batchify(val, 16), None, 0.0
    for i in range(0, data.size(1) - 1, bptt):
        x, y = data[:, i:i + bptt], data[:, i + 1:i + 1 + bptt]
        x = x[:, :y.size(1)]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    return total / (data.size(0) * (data.size(1) - 1)) / math.log(2)


def train_reference(train, val, vocab_size, seconds, eval_every=30.0, seed=0):
    torch.manual_seed(seed)
    model = CharLSTM(vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    data, curve, elapsed, next_eval, state, i = batchify(train, 64), [], 0.0, eval_every, None, 0
    while elapsed < seconds:
        started = time.perf_counter()
        if i + 1 >= data.size(1):
            i, state = 0, None
        x, y = data[:, i:i + 100], data[:, i + 1:i + 101]
        x, i = x[:, :y.size(1)], i + 100
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed += time.perf_counter() - started
        if elapsed >= next_eval or elapsed >= seconds:
            curve.append((round(elapsed, 1), val_bpc(model.eval(), val)))
            model.train()
            next_eval += eval_every
    return curve
