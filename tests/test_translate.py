import datetime
import random

import pytest

from rnnkit.cli import main
from rnnkit.data.parallel import DATE_FORMATS, ParallelData, date_pair, number_words, write_date
from rnnkit.tasks.translate import TranslateConfig, Translator


def test_dates_in_every_spelling_by_hand():
    date = datetime.date(2021, 3, 3)
    spellings = [write_date(date, style) for style in range(len(DATE_FORMATS))]
    assert spellings == ["3 March 2021", "03 Mar 2021", "March 3, 2021", "Mar 3 2021", "Wednesday, March 3, 2021",
                         "Wed 3 Mar 2021", "3rd of March 2021", "March 3rd, 2021", "03.03.2021", "3/3/2021",
                         "2021/03/03", "03-MAR-2021", "3 march 2021", "MARCH 3, 2021"]
    assert [write_date(datetime.date(2000, 1, day), 6)[:4] for day in (1, 2, 11, 12, 13, 21, 22, 23)] == \
        ["1st ", "2nd ", "11th", "12th", "13th", "21st", "22nd", "23rd"]


def test_every_spelling_names_one_date():
    """No spelling is ambiguous (day-first vs month-first), so 100% exact match is reachable."""
    rng, seen = random.Random(0), {}
    for _ in range(5000):
        date, source, target = date_pair(rng)
        assert seen.setdefault(source, target) == target == date.isoformat()


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (13, "thirteen"), (40, "forty"), (42, "forty-two"), (100, "one hundred"),
    (115, "one hundred fifteen"), (1000, "one thousand"), (1_000_001, "one million one"),
    (342_105, "three hundred forty-two thousand one hundred five"),
    (999_999_999, "nine hundred ninety-nine million nine hundred ninety-nine thousand nine hundred ninety-nine"),
])
def test_number_words_by_hand(n, words):
    assert number_words(n) == words


def test_held_out_keys_never_reach_training():
    data = ParallelData("words-to-numbers", max_digits=3)
    held_out = data.held_out(300, seed=1)
    keys = {key for key, _, _ in held_out}
    assert len(keys) == 300 and all(source == number_words(int(target)) for _, source, target in held_out)
    assert min(keys) >= 100  # the words below 100 are the vocabulary: always trained on
    rng = random.Random(0)
    trained = {data.training_pair(rng, keys)[0] for _ in range(5000)}
    assert not keys & trained and set(range(100)) <= trained
    with pytest.raises(ValueError, match="distinct held-out"):
        data.held_out(901, seed=1)  # there are only 900 numbers of 3 digits


def test_translate_dates_learns_writes_its_run_and_predicts(tmp_path, capsys):
    main(["translate", "dates", "--max-steps", "200", "--eval-every", "100", "--hidden-size", "48",
          "--lr", "0.01", "--val-size", "100", "--test-size", "200", "--beam-width", "3",
          "--runs-dir", str(tmp_path), "--name", "dates", "--quiet"])
    out = capsys.readouterr().out
    exact = float(out.split("exact match ")[1].split("%")[0]) / 100
    assert exact > 0.5, out  # an untrained decoder matches none of the 200 held-out dates
    run = tmp_path / "dates"
    for name in ("config.json", "metrics.csv", "best.pt", "attention.png", "report.html", "summary.json"):
        assert (run / name).is_file(), name
    main(["predict", str(run), "3 March 2021", "12/25/1999"])
    assert capsys.readouterr().out.splitlines() == ["2021-03-03", "1999-12-25"]

    for inputs, message in ((["3 Mär 2021"], "outside the vocabulary: 'ä'"), ([""], "empty")):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(run), *inputs])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_number_longer_than_trained_on_is_refused():
    config = TranslateConfig(data="numbers-to-words", max_digits=3)
    translator = Translator(config, ParallelData(config.data, config.max_digits))
    assert translator.encode_sources(["999"])[1].tolist() == [3]
    with pytest.raises(ValueError, match="more than 3 digits"):
        translator.encode_sources(["1000"])


@pytest.mark.parametrize("args, message", [
    (["translate", "numbers", "--max-digits", "12"], "max_digits"),
    (["translate", "dates", "--attention", "cosine"], "invalid choice"),
    (["translate", "numbers", "--direction", "sideways"], "invalid choice"),
])
def test_bad_translate_flags_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing half-made is left behind


def test_an_exported_translator_decodes_from_onnxruntime_alone(tmp_path, capsys):
    """encoder, then the decoder one character at a time with its attention memory, greedy:
    the same strings as the PyTorch translator's greedy decoding."""
    import json

    import numpy as np
    import onnxruntime

    from rnnkit.tasks.translate import load_translator

    main(["translate", "dates", "--max-steps", "5", "--eval-every", "5", "--hidden-size", "16", "--val-size", "10",
          "--test-size", "10", "--runs-dir", str(tmp_path), "--name", "dates", "--quiet"])
    run = tmp_path / "dates"
    main(["export", str(run)])
    sidecar = json.loads((run / "export" / "export.json").read_text())
    sources = ["3 March 2021", "12/25/1999", "Jan 1, 2000"]
    ids = [[sidecar["source_vocab"].index(c) for c in text] for text in sources]
    source = np.zeros((len(ids), max(map(len, ids))), dtype=np.int64)
    for row, text_ids in enumerate(ids):
        source[row, :len(text_ids)] = text_ids
    encoder = onnxruntime.InferenceSession(str(run / "export" / "encoder.onnx"))
    decoder = onnxruntime.InferenceSession(str(run / "export" / "decoder.onnx"))
    encoded = dict(zip([o.name for o in encoder.get_outputs()],
                       encoder.run(None, {"source": source, "source_lengths": np.array([len(i) for i in ids])})))
    states = {name[:-len("_out")]: value for name, value in encoded.items() if name.startswith("state")}
    memory = {name: value for name, value in encoded.items() if name.startswith("memory")}
    vocab = sidecar["target_vocab"]
    tokens = np.full((len(ids), 1), vocab.index(sidecar["start"]), dtype=np.int64)
    written = []
    for _ in range(sidecar["max_output_length"]):
        logits, *new_states = decoder.run(None, {"tokens": tokens, **states, **memory})
        states = dict(zip(states, new_states))
        tokens = logits[:, -1].argmax(-1)[:, None]
        written.append(tokens[:, 0])
    outputs = ["".join(vocab[i] for i in row).split(sidecar["end"])[0] for row in np.stack(written, 1)]
    assert outputs == load_translator(run).translate(sources, beam_width=1)
