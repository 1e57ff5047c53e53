"""Labelled sequences: scikit-learn's bundled 8×8 digits and any CSV of sequences + labels.

A data set is float `values` (N, T, F) padded with zeros after each sequence's `lengths`
(N,) valid steps, integer `labels` (N,) indexing `classes`. Values are raw; the task
standardises them with the training split's statistics.

The digits (1,797 images, pixel values 0…16) are read either a row at a time (8 steps ×
8 features) or a pixel at a time (64 steps × 1 feature), top-left to bottom-right.

CSV format (`rnnkit classify --csv FILE --features F`): one sequence per row,

    label,v1,v2,v3,...

the label first (any text: a class name), then the values time-major, F per step
(v1…vF is step 1, vF+1…v2F step 2, …). Rows may differ in length; trailing empty cells are
ignored. A first row whose first cell is `label` is a header and is skipped. For
prediction the same rows come without the label.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DIGIT_PIXELS = 64
READINGS = {"rows": 8, "pixels": 1}  # reading → features per step
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)  # train, validation, test
SPLIT_SEED = 0  # fixed, so every run (whatever its --seed) is tested on the same sequences


@dataclass
class LabelledSequences:
    values: torch.Tensor   # (N, T, F) float, zero after each sequence's end
    lengths: torch.Tensor  # (N,) valid steps
    labels: torch.Tensor   # (N,) class indices
    classes: list[str]

    def subset(self, index: torch.Tensor) -> "LabelledSequences":
        return LabelledSequences(self.values[index], self.lengths[index], self.labels[index], self.classes)


def split_indices(count: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded permutation of range(count) cut into train / validation / test by SPLIT_FRACTIONS."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    train_end = round(SPLIT_FRACTIONS[0] * count)
    val_end = train_end + round(SPLIT_FRACTIONS[1] * count)
    if not 0 < train_end < val_end < count:
        raise ValueError(f"need at least 3 sequences for a train/validation/test split, got {count}")
    return order[:train_end], order[train_end:val_end], order[val_end:]


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8) with values 0…16, labels (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target


def load_digits_sequences(reading: str = "rows") -> LabelledSequences:
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {sorted(READINGS)}, got {reading!r}")
    images, labels = digit_images()
    values = torch.from_numpy(images).reshape(len(images), -1, READINGS[reading])
    return LabelledSequences(values, torch.full((len(images),), values.shape[1]),
                             torch.from_numpy(labels).long(), [str(d) for d in range(10)])


def parse_sequence(cells: list[str], features: int, where: str) -> torch.Tensor:
    """The (steps, features) tensor of one sequence's value cells; ValueError naming `where`."""
    while cells and not cells[-1].strip():
        cells = cells[:-1]
    if not cells:
        raise ValueError(f"{where}: empty sequence (no values)")
    try:
        values = [float(cell) for cell in cells]
    except ValueError:
        bad = next(cell for cell in cells if not _is_number(cell))
        raise ValueError(f"{where}: {bad.strip()!r} is not a number") from None
    if not all(np.isfinite(values)):
        raise ValueError(f"{where}: values must be finite numbers")
    if len(values) % features:
        raise ValueError(f"{where}: {len(values)} values do not make whole steps of {features} features")
    return torch.tensor(values, dtype=torch.float32).view(-1, features)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def pad(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T_max, F) zero-padded values and the (N,) lengths of a list of (T_i, F) tensors."""
    lengths = torch.tensor([len(s) for s in sequences])
    return torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True), lengths


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank row, the header skipped."""
    if not path.is_file():
        raise ValueError(f"CSV file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = [(number, row) for number, row in enumerate(csv.reader(file), 1) if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a readable UTF-8 CSV file: {error}") from None
    if rows and rows[0][1][0].strip().lower() == "label":
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path} has no sequences")
    return rows


def read_labelled_csv(path, features: int) -> LabelledSequences:
    """Sequences + labels from a CSV file in the module's format; classes sorted by name."""
    path = Path(path)
    labels, sequences = [], []
    for number, row in _csv_rows(path):
        label = row[0].strip()
        if not label:
            raise ValueError(f"{path} line {number}: the label (first cell) is missing")
        labels.append(label)
        sequences.append(parse_sequence(row[1:], features, f"{path} line {number}"))
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"{path}: need at least 2 different labels to classify, got {classes}")
    values, lengths = pad(sequences)
    index = {name: i for i, name in enumerate(classes)}
    return LabelledSequences(values, lengths, torch.tensor([index[name] for name in labels]), classes)


def read_unlabelled(inputs: list[str], file: str | None, features: int) -> list[torch.Tensor]:
    """Sequences to predict: each input a comma-separated list of values, or the rows of `file`."""
    if file is not None:
        path = Path(file)
        return [parse_sequence(row, features, f"{path} line {number}") for number, row in _csv_rows(path)]
    if not inputs:
        raise ValueError("give sequences to predict (comma-separated values) or --file PATH")
    return [parse_sequence(text.split(","), features, f"input {i + 1}") for i, text in enumerate(inputs)]
