"""Text data: corpora, vocabulary, contiguous splits and truncated-BPTT batches."""

import json

import pytest
import torch

from rnnkit.data.text import StreamBatches, Vocabulary, load_corpus, split_text


# corpora


def test_pydoc_corpus_is_english_prose():
    text = load_corpus("pydoc")
    assert len(text) > 400_000
    assert 'The "for" statement' in text
    assert "\r" not in text
    assert load_corpus() == text  # the default corpus


def test_stdlib_corpus_is_python_source():
    text = load_corpus("stdlib")
    assert "def " in text and "import " in text
    assert 500_000 < len(text) <= 2_000_000


def test_file_corpus_normalises_line_endings(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_bytes("roses are red\r\nviolets — 中 😀\r\n".encode())
    assert load_corpus(str(path)) == "roses are red\nviolets — 中 😀\n"


def test_folder_corpus_concatenates_files_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("two\n")
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / ".hidden").write_bytes(b"\0\xff")  # hidden files are never read
    assert load_corpus(str(tmp_path)) == "one\n\ntwo\n"


def write_bytes(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: d / "missing.txt", "not 'pydoc', 'stdlib' or an existing file"),
        (lambda d: write_bytes(d / "empty.txt", b""), "is empty"),
        (lambda d: write_bytes(d / "model.bin", b"PK\x03\x04\0\0\x14"), "binary"),
        (lambda d: write_bytes(d / "latin1.txt", "café".encode("latin-1")), "not valid UTF-8 .* at offset 3"),
    ],
)
def test_bad_corpus_file_is_rejected_naming_it(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=problem) as error:
        load_corpus(str(path))
    assert str(path) in str(error.value)


def test_folder_with_binary_file_is_rejected_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("fine\n")
    binary = write_bytes(tmp_path / "image.png", b"\x89PNG\r\n\x1a\n\0\0")
    with pytest.raises(ValueError, match="binary") as error:
        load_corpus(str(tmp_path))
    assert str(binary) in str(error.value)


def test_empty_folder_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="has no text") as error:
        load_corpus(str(tmp_path))
    assert str(tmp_path) in str(error.value)


# vocabulary

TEXT = "Café au lait, 中文, and 😀 too.\n"


def test_vocabulary_round_trip_with_non_ascii():
    vocab = Vocabulary.from_text(TEXT)
    assert list(vocab.chars) == sorted(set(TEXT))
    assert len(vocab) == len(set(TEXT))
    ids = vocab.encode(TEXT)
    assert ids.dtype == torch.long and ids.shape == (len(TEXT),)
    assert vocab.decode(ids) == TEXT
    assert vocab.decode(ids.tolist()) == TEXT


def test_unknown_characters_raise_with_their_repr():
    vocab = Vocabulary.from_text("abc ")
    with pytest.raises(ValueError, match=r"2 characters not in the vocabulary: 'é', '😀'"):
        vocab.encode("a é b 😀")


def test_many_unknown_characters_are_summarised():
    vocab = Vocabulary.from_text("a")
    with pytest.raises(ValueError, match=r"26 characters .* and 16 more"):
        vocab.encode("abcdefghijklmnopqrstuvwxyz{")


def test_skip_drops_unknown_characters():
    vocab = Vocabulary.from_text("abc ")
    text = "a é b 😀"
    assert vocab.unknown_chars(text) == ["é", "😀"]
    assert vocab.decode(vocab.encode(text, on_unknown="skip")) == "a  b "


def test_vocabulary_json_round_trip_keeps_ids():
    vocab = Vocabulary.from_text(TEXT)
    restored = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert restored == vocab
    assert torch.equal(restored.encode(TEXT), vocab.encode(TEXT))


# splits


def test_split_is_contiguous_with_the_given_proportions():
    ids = torch.arange(1000)
    train, val, test = split_text(ids, (0.8, 0.15, 0.05))
    assert (len(train), len(val), len(test)) == (800, 150, 50)
    assert torch.equal(torch.cat([train, val, test]), ids)


@pytest.mark.parametrize(
    "fractions, problem",
    [((0.9, 0.05), "sum to 1"), ((1.1, -0.05, -0.05), "negative"), ((0.98, 0.01, 0.01), ">= 2")],
)
def test_bad_split_is_rejected(fractions, problem):
    with pytest.raises(ValueError, match=problem):
        split_text(torch.arange(100), fractions)


# batches


def test_chunks_have_the_right_shape_and_shifted_targets():
    ids = torch.arange(103)  # 4 streams of 25, 3 tokens dropped
    batches = StreamBatches(ids, batch_size=4, bptt=10)
    assert len(batches) == 3  # 24 inputs per stream: 10 + 10 + 4
    assert batches.tokens_per_epoch == 4 * 24
    shapes = [tuple(inputs.shape) for inputs, _ in batches]
    assert shapes == [(4, 10), (4, 10), (4, 4)]
    for inputs, targets in batches:
        assert inputs.dtype == targets.dtype == torch.long
        assert torch.equal(targets, inputs + 1)  # next token of the same stream


def test_consecutive_chunks_continue_each_stream():
    ids = torch.randint(0, 50, (1000,))
    batches = StreamBatches(ids, batch_size=3, bptt=7)
    inputs = torch.cat([x for x, _ in batches], dim=1)
    targets = torch.cat([y for _, y in batches], dim=1)
    for b in range(3):
        stream = ids[b * 333 : (b + 1) * 333]
        assert torch.equal(inputs[b], stream[:-1])
        assert torch.equal(targets[b], stream[1:])


def test_resume_from_chunk_k_matches_a_full_epoch():
    batches = StreamBatches(torch.randint(0, 50, (500,)), batch_size=4, bptt=8)
    full = list(batches)
    for k in (0, 5, len(batches) - 1, len(batches)):
        resumed = list(batches.chunks(start=k))
        assert len(resumed) == len(full) - k
        for (x, y), (fx, fy) in zip(resumed, full[k:]):
            assert torch.equal(x, fx) and torch.equal(y, fy)
    x, y = batches.chunk(5)
    assert torch.equal(x, full[5][0]) and torch.equal(y, full[5][1])


@pytest.mark.parametrize(
    "length, batch_size, bptt, problem",
    [(7, 4, 5, "too few"), (100, 0, 5, "batch_size"), (100, 4, 0, "bptt")],
)
def test_bad_batches_are_rejected(length, batch_size, bptt, problem):
    with pytest.raises(ValueError, match=problem):
        StreamBatches(torch.arange(length), batch_size, bptt)
