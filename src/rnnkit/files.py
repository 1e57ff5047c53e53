"""Reading and writing the files of a run folder, safely.

Every writer here is atomic: the data goes to a temporary file in the destination's own
folder, is flushed to disk, then os.replace() swaps it in under the final name in one step.
A crash or a kill mid-write therefore leaves the old file or the new one, never half of one.
(The temporary file must sit in the same folder: a rename is atomic only within one file
system.)

Append-only logs (metrics.csv, text samples) are the one kind of file not rewritten whole:
`file_marks` records where they stood when a checkpoint was taken, and `cut_back_appends`
puts them back there when the run resumes from it.
"""

import contextlib
import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def atomic_write_bytes(path, data):
    """Write bytes to path atomically, creating its folder if needed; return path as a Path.

    On any failure (disk full, read-only folder, an interrupt) the temporary file is removed
    and the file already at path is untouched; an OSError names path itself.
    """
    path = Path(path)
    temp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A hidden name ending in .tmp, so globs such as *.png or *.json never see a write in progress.
        fd, temp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.chmod(temp_path, 0o644)  # mkstemp creates files readable by their owner only
        os.replace(temp_path, path)
    except BaseException as error:
        if temp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise
    return path


def remove_temp_files(folder):
    """Delete the temporary files that a process killed mid-write left in folder."""
    for temp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)


def file_marks(folder):
    """{name: [size, sha256]} of the plain files in folder (hidden files and checkpoints left out).

    Taken with a checkpoint, they let `cut_back_appends` undo what was appended after it.
    """
    marks = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix != ".pt":
            data = path.read_bytes()
            marks[path.name] = [len(data), hashlib.sha256(data).hexdigest()]
    return marks


def cut_back_appends(folder, marks):
    """Truncate each file of folder that has grown since `marks` were taken but still begins
    with exactly the marked bytes, i.e. was only appended to; return the names cut back.
    A file rewritten since (its first bytes differ) is left as it is."""
    cut = []
    for name, (size, digest) in marks.items():
        path = Path(folder) / name
        if not path.is_file() or path.stat().st_size <= size:
            continue
        with open(path, "rb") as file:
            unchanged = hashlib.sha256(file.read(size)).hexdigest() == digest
        if unchanged:
            os.truncate(path, size)
            cut.append(name)
    return cut


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
