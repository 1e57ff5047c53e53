import pytest

from rnnkit.cli import main
from rnnkit.tasks.tag import TAG_LETTERS, show_tags, token_tags


def letters(source):
    return "".join(TAG_LETTERS[i] for i in token_tags(source))


@pytest.mark.parametrize("source, tags", [
    ("x = f(1)  # hi\n", "N_O_NO9O__####$"),
    ("if a:\n    b = r'r'\n", "NN_NO$>>>>N_O_SSSS$"),       # the indentation of a deeper line is INDENT
    ("if a:\n    b\nc\n", "NN_NO$>>>>N$N$"),
    ("f(1,\n  2)\n\n", "NO9On__9O$n"),                    # a newline inside brackets, a blank line: NL
    ("x = 0x1F + 2.5e3 \\\n  + 'a'", "N_O_9999_O_99999_____O_SSS"),  # a line continuation is whitespace
])
def test_every_character_gets_its_token_type_by_hand(source, tags):
    assert letters(source) == tags


def test_source_that_does_not_tokenize_is_refused():
    with pytest.raises(ValueError, match="does not tokenize"):
        token_tags("f(1,\n")


def test_tags_are_shown_under_their_lines():
    assert show_tags("ab\ncd\n", "NN$OO$") == "ab\nNN$\ncd\nOO$"
    assert show_tags("ab\ncd", "NN$OO") == "ab\nNN$\ncd\nOO"


def test_tag_pytokens_learns_writes_its_run_and_predicts(tmp_path, capsys):
    main(["tag", "pytokens", "--max-chars", "120000", "--max-steps", "150", "--eval-every", "75",
          "--hidden-size", "32", "--runs-dir", str(tmp_path), "--name", "tag", "--quiet"])
    out = capsys.readouterr().out
    accuracy = float(out.split("accuracy")[1].split(": ")[1].split("%")[0]) / 100
    # Tagging every character with the most common tag (STRING here) scores 0.36.
    assert accuracy > 0.85, out
    run = tmp_path / "tag"
    for name in ("config.json", "metrics.csv", "best.pt", "confusion.png", "report.html", "samples.txt"):
        assert (run / name).is_file(), name
    main(["predict", str(run), "def f(x):"])
    line, tags = capsys.readouterr().out.splitlines()
    assert line == "def f(x):" and len(tags) == len(line) and tags.startswith("NNN_N")

    for inputs, message in ((["x = 'ä' ∑"], "outside the vocabulary"), ([""], "empty")):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(run), *inputs])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err

    # exported, the tagger gives the same tags from onnxruntime
    import json

    import numpy as np
    import onnxruntime

    main(["export", str(run)])
    sidecar = json.loads((run / "export" / "export.json").read_text())
    session = onnxruntime.InferenceSession(str(run / "export" / "tagger.onnx"))
    line = "for i in range(10):  # count"
    x = np.array([[sidecar["vocab"].index(c) for c in line]])
    states = {name: np.zeros([1 if size == "batch" else size for size in spec["shape"]], dtype=np.float32)
              for name, spec in sidecar["graphs"]["tagger"]["inputs"].items() if name.startswith("state")}
    logits = session.run(None, {"x": x, **states})[0]
    capsys.readouterr()
    main(["predict", str(run), line])
    assert capsys.readouterr().out.splitlines()[1] == "".join(sidecar["tag_letters"][i] for i in logits[0].argmax(-1))
