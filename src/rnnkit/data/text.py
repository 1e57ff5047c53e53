"""Text data for the character language model: corpora, vocabulary, splits, batches.

A corpus is one long string. The vocabulary maps each of its characters to an id,
the id stream is cut into contiguous train/val/test parts, and StreamBatches serves
a part as truncated-BPTT chunks whose streams continue from chunk to chunk, so a
hidden state carried across chunks keeps describing the text that came before.
"""

import functools
import math
import os
import sysconfig

import torch

STDLIB_MAX_CHARS = 2_000_000  # keeps the code corpus a few MB whatever the Python version
STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3"}


# -----------------------------------------------------------------------------
# corpora


def load_corpus(source="pydoc"):
    """Return the text of a corpus, with Windows line endings turned into "\\n".

    source is "pydoc" (English prose shipped with CPython), "stdlib" (the standard
    library's own Python source), or the path of a UTF-8 file or of a folder of them.
    The two names win over files of the same name; write "./pydoc" to mean the file.
    """
    if source == "pydoc":
        text = _pydoc_corpus()
    elif source == "stdlib":
        text = _stdlib_corpus()
    elif os.path.isfile(source):
        text = _read_utf8(source)
        if not text:
            raise ValueError(f"corpus file {source} is empty")
    elif os.path.isdir(source):
        text = _read_folder(source)
    else:
        raise ValueError(f"corpus {source!r} is not 'pydoc', 'stdlib' or an existing file or folder")
    return text.replace("\r\n", "\n")


def _pydoc_corpus():
    """The help topics behind pydoc's help(), about 465 kB of prose; always installed."""
    from pydoc_data.topics import topics

    # Each topic ends with a newline, so joining with one more leaves a blank line between.
    return "\n".join(topics[name] for name in sorted(topics))


@functools.lru_cache(maxsize=1)
def _stdlib_corpus():
    """The standard library's .py files in path order, cut at STDLIB_MAX_CHARS."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.endswith(".py") and os.path.isfile(path):
            paths.append(name)  # a top-level module
        elif name not in STDLIB_SKIP_DIRS and os.path.isfile(os.path.join(path, "__init__.py")):
            paths += _files_under(path, root, skip_dirs=STDLIB_SKIP_DIRS, suffix=".py")
    texts, total = [], 0
    for path in sorted(paths):
        try:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue  # a few old modules are latin-1; the corpus is big enough without them
        texts.append(text)
        total += len(text) + 1
        if total >= STDLIB_MAX_CHARS:
            break
    return "\n".join(texts)[:STDLIB_MAX_CHARS]


def _files_under(folder, relative_to, skip_dirs=(), suffix=""):
    """Paths (relative to relative_to) of the regular files under folder, hidden ones left out
    (a pipe or a device would block or never end when read; a broken link has nothing to read)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # Pruning dirnames in place stops os.walk from descending into them.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip_dirs]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not name.startswith(".") and name.endswith(suffix) and os.path.isfile(path):
                found.append(os.path.relpath(path, relative_to))
    return found


def _read_folder(folder):
    """Concatenate the UTF-8 files under folder, sorted by path, one newline between files."""
    paths = sorted(_files_under(folder, folder))
    texts = [_read_utf8(os.path.join(folder, path)) for path in paths]
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError(f"corpus folder {folder} has no text (no non-empty, non-hidden files)")
    return "\n".join(texts)


def _read_utf8(path):
    """The text of a UTF-8 file, or a ValueError saying why it is not one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"corpus file {path} cannot be read: {e.strerror}") from None
    # Text never holds NUL bytes, while almost every binary file does: a clearer message
    # than the decode error, which may only come megabytes later or not at all.
    if b"\0" in data:
        raise ValueError(f"corpus file {path} is binary (contains NUL bytes), expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"corpus file {path} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


# -----------------------------------------------------------------------------
# vocabulary


class Vocabulary:
    """A fixed list of characters; a character's id is its position in the list."""

    def __init__(self, chars):
        chars = "".join(chars)
        if not chars:
            raise ValueError("vocabulary must have at least one character")
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be distinct")
        self.chars = chars  # a str: every element is exactly one character
        self.ids = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        """Every distinct character of text, sorted by code point."""
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self):
        return f"Vocabulary({len(self)} characters)"

    def unknown_chars(self, text):
        """The distinct characters of text that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.ids.keys())

    def encode(self, text, on_unknown="error"):
        """Ids of text's characters as a LongTensor.

        on_unknown="error" raises on characters outside the vocabulary; "skip" drops
        them (call unknown_chars first to report which ones were dropped).
        """
        if on_unknown not in ("error", "skip"):
            raise ValueError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}")
        unknown = self.unknown_chars(text)
        if unknown and on_unknown == "error":
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(f"text has {len(unknown)} characters not in the vocabulary: {shown}{more}")
        ids = self.ids
        return torch.tensor([ids[ch] for ch in text if ch in ids], dtype=torch.long)

    def decode(self, ids):
        """The text spelled by a 1-D tensor or list of ids."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode expects a 1-D tensor of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise ValueError(f"ids must be in 0..{len(self.chars) - 1}, got {bad[:10]}")
        return "".join(self.chars[i] for i in ids)

    def to_json(self):
        """A dict of plain JSON types from which from_json rebuilds the same vocabulary."""
        return {"chars": self.chars}

    @classmethod
    def from_json(cls, data):
        """Rebuild a vocabulary saved by to_json, keeping its order so ids stay the same."""
        if not isinstance(data, dict) or not isinstance(data.get("chars"), str):
            raise ValueError("vocabulary JSON must be an object with a 'chars' string")
        return cls(data["chars"])


# -----------------------------------------------------------------------------
# splits and batches


def split_text(ids, fractions=(0.9, 0.05, 0.05)):
    """Cut a 1-D id stream into contiguous parts, one per fraction, in order."""
    if ids.dim() != 1:
        raise ValueError(f"split_text expects a 1-D tensor of ids, got shape {tuple(ids.shape)}")
    if any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must not be negative, got {tuple(fractions)}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {tuple(fractions)} (sum {sum(fractions):g})")
    # Rounding cumulative sums (not each part) keeps the parts adding up to len(ids).
    cumulative = [0.0]
    for f in fractions:
        cumulative.append(cumulative[-1] + f)
    cuts = [round(c * len(ids)) for c in cumulative[:-1]] + [len(ids)]
    parts = tuple(ids[start:end] for start, end in zip(cuts, cuts[1:]))
    if any(len(part) < 2 for part in parts):
        sizes = [len(part) for part in parts]
        raise ValueError(f"split of {len(ids)} tokens by {tuple(fractions)} gives parts of {sizes}; each needs >= 2")
    return parts


class StreamBatches:
    """Truncated-BPTT chunks of one long id stream, as in PyTorch's word_language_model.

    The stream is cut into batch_size equal contiguous streams (the remainder dropped),
    one per row. Chunk k holds columns k*bptt onwards of every row: inputs of shape
    (batch_size, <= bptt) and targets one character further along the same row. Chunk
    k+1 starts where chunk k stopped, so row b's hidden state can be carried between
    them. The last chunk of an epoch may be shorter than bptt.

    `shard=(rank, world_size)` keeps only this process's contiguous block of
    batch_size / world_size streams, for data-parallel training over the same global batch.
    """

    def __init__(self, ids, batch_size, bptt, device=None, shard=(0, 1)):
        if batch_size < 1 or bptt < 1:
            raise ValueError(f"batch_size and bptt must be >= 1, got batch_size={batch_size}, bptt={bptt}")
        if ids.dim() != 1:
            raise ValueError(f"StreamBatches expects a 1-D tensor of ids, got shape {tuple(ids.shape)}")
        stream_length = len(ids) // batch_size
        if stream_length < 2:
            raise ValueError(
                f"{len(ids)} tokens are too few for batch_size={batch_size}: each stream needs >= 2 tokens"
            )
        rank, world_size = shard
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must divide evenly over {world_size} processes")
        rows = batch_size // world_size
        self.batch_size = rows
        self.bptt = bptt
        streams = ids[: batch_size * stream_length].view(batch_size, stream_length)
        self.streams = streams[rank * rows : (rank + 1) * rows].to(device)

    def __len__(self):
        # Every token but the last of a stream is an input, and bptt inputs fit in a chunk.
        return math.ceil((self.streams.size(1) - 1) / self.bptt)

    @property
    def tokens_per_epoch(self):
        """How many next-character predictions one pass over all chunks makes."""
        return self.batch_size * (self.streams.size(1) - 1)

    def chunk(self, k):
        """(inputs, targets) of chunk k, both of shape (batch_size, chunk length)."""
        if not 0 <= k < len(self):
            raise IndexError(f"chunk index {k} out of range for {len(self)} chunks")
        start = k * self.bptt
        end = min(start + self.bptt, self.streams.size(1) - 1)
        return self.streams[:, start:end], self.streams[:, start + 1 : end + 1]

    def chunks(self, start=0):
        """Iterate over chunks start, start+1, ... to the end of the epoch (for resuming)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start chunk must be in 0..{len(self)}, got {start}")
        for k in range(start, len(self)):
            yield self.chunk(k)

    def __iter__(self):
        return self.chunks()
