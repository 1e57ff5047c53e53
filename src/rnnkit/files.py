"""Reading and writing the files of a run folder, safely.

Every writer here is atomic: the data goes to a temporary file in the destination's own
folder, is flushed to disk, then os.replace() swaps it in under the final name in one step.
A crash or a kill mid-write therefore leaves the old file or the new one, never half of one.
(The temporary file must sit in the same folder: a rename is atomic only within one file
system.)
"""

import csv
import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path, data):
    """Write bytes to path atomically, creating its folder if needed; return path as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name ending in .tmp, so globs such as *.png or *.json never see a write in progress.
    fd, temp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.chmod(temp_path, 0o644)  # mkstemp creates files readable by their owner only
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise
    return path


def atomic_write_text(path, text, encoding="utf-8"):
    """Write a string to path atomically (newlines kept as they are); return path as a Path."""
    return atomic_write_bytes(path, text.encode(encoding))


def write_json(path, obj):
    """Write obj as indented JSON (keys in insertion order, non-ASCII kept) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def read_csv_columns(path):
    """Return a CSV file as {column name: [cell strings]} in header order ({} for an empty file).

    A row whose cell count differs from the header's is skipped: it is a blank line, or the
    last line of a file that another process is still appending to.
    """
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, [])
        columns = {name: [] for name in header}
        for row in reader:
            if len(row) != len(header):
                continue
            for name, cell in zip(header, row):
                columns[name].append(cell)
    return columns
