"""Checkpoints: written atomically, loaded as data only.

A checkpoint is a dict of tensors and plain values, serialised with `torch.save` and written
with `rnnkit.files.atomic_write_bytes` (temporary file beside the target, then `os.replace`),
so a crash or a kill mid-save leaves the previous checkpoint intact. Loading uses `weights_only=True`:
a checkpoint is data, never code, and a pickle that tries to run anything is refused.
"""

import io
from pathlib import Path

import torch

from ..files import atomic_write_bytes

FORMAT_VERSION = 1


def save_checkpoint(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """The checkpoint's dict; ValueError with one line saying what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, not a checkpoint, or a pickle that wants to run code
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"checkpoint {path} cannot be loaded safely: {first_line}") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"checkpoint {path} is not an rnnkit checkpoint of format {FORMAT_VERSION} (found {found!r})")
    return payload
