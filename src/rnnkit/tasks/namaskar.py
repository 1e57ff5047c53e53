"""Toy task: learn to predict each next letter of the word "namaskar".

The network reads "namaska" one letter at a time and must output "amaskar".
The letter "a" is followed by "m", then "s", then "r", so the current input
alone cannot decide the answer: only a network that remembers what it has
already seen can get every position right.
"""

from dataclasses import dataclass

import numpy as np

from rnnkit.reference import Adagrad, Params, backward, clip_by_global_norm, forward


@dataclass
class NamaskarConfig:
    word: str = "namaskar"
    hidden_size: int = 16
    steps: int = 200
    learning_rate: float = 0.1
    clip: float = 5.0
    seed: int = 0
    print_every: int = 50

    def validate(self):
        if len(self.word) < 2:
            raise ValueError(f"word must have at least 2 letters, got {self.word!r}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class NamaskarResult:
    losses: list  # summed cross-entropy over the word, one entry per training step
    predictions: str  # most likely next letter after each input letter
    accuracy: float  # fraction of positions where the prediction equals the target
    params: Params


def encode(word):
    """Sorted vocabulary, one-hot inputs for word[:-1], target indices for word[1:]."""
    vocab = sorted(set(word))
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = np.array([index[ch] for ch in word])
    inputs = np.eye(len(vocab))[ids[:-1]]
    return vocab, inputs, ids[1:]


def train_namaskar(config, log=print):
    """Train the reference RNN on one word with Adagrad and report what it learned."""
    config.validate()
    vocab, inputs, targets = encode(config.word)
    rng = np.random.default_rng(config.seed)
    params = Params.init(len(vocab), config.hidden_size, len(vocab), rng)
    optimizer = Adagrad(params, config.learning_rate)

    def predict(probs):
        return "".join(vocab[i] for i in probs.argmax(axis=1))

    losses = []
    for step in range(1, config.steps + 1):
        loss, cache = forward(params, inputs, targets)
        grads, _ = clip_by_global_norm(backward(params, inputs, targets, cache), config.clip)
        optimizer.step(params, grads)
        losses.append(loss)
        if step % config.print_every == 0 or step == 1:
            log(f"step {step:4d}  loss {loss:.4f}  predicts {predict(cache['probs'])!r}")

    # Score the trained weights, not the ones from before the last update.
    _, cache = forward(params, inputs, targets)
    probs = cache["probs"]
    predictions = predict(probs)
    target_letters = config.word[1:]
    correct = sum(p == t for p, t in zip(predictions, target_letters))
    accuracy = correct / len(target_letters)

    log("input -> predicted (prob)   target")
    for t, (ch, pred, target) in enumerate(zip(config.word, predictions, target_letters)):
        mark = "ok" if pred == target else "WRONG"
        log(f"  {ch}   ->  {pred} ({probs[t].max():.3f})        {target}   {mark}")
    log(f"next-letter accuracy {correct}/{len(target_letters)} = {accuracy:.0%}")
    return NamaskarResult(losses, predictions, accuracy, params)
