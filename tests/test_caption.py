"""Digit captioning: the caption tokens, training end to end, prediction and bad input."""

import json

import pytest

from rnnkit.cli import main
from rnnkit.data.sequences import load_digits_sequences
from rnnkit.tasks.caption import ALPHABET, IGNORE, WORDS, caption_tokens, decode, encode, predict_command


def test_caption_tokens_by_hand():
    inputs, targets = caption_tokens()
    assert inputs.shape == targets.shape == (10, 6)  # "three", "seven" and "eight" + "$"
    assert decode(inputs[1].tolist()) == "^one"  # "^one" then "$" padding
    assert inputs[1].tolist() == encode("^one$$")
    assert targets[1].tolist() == encode("one$") + [IGNORE, IGNORE]
    assert targets[3].tolist() == encode("three$")
    assert decode(encode("seven$ei")) == "seven" and decode(encode("nin")) == "nin"
    assert ALPHABET[:2] == "^$" and set(ALPHABET[2:]) == set("".join(WORDS))


def test_captioner_learns_and_predicts(tmp_path, capsys):
    main(["caption", "digits", "--encoder-size", "48", "--hidden-size", "48", "--max-steps", "150",
          "--eval-every", "50", "--runs-dir", str(tmp_path), "--name", "cap", "--quiet"])
    out = capsys.readouterr().out
    run = tmp_path / "cap"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_exact_match"] > 0.8, out  # a caption for each digit: chance is 0.1
    for name in ("config.json", "metrics.csv", "best.pt", "test_captions.png", "report.html"):
        assert (run / name).is_file(), name

    digits = load_digits_sequences()
    images = [",".join(str(int(v)) for v in digits.values[i].flatten().tolist()) for i in range(20)]
    main(["predict", str(run), *images])
    captions = capsys.readouterr().out.splitlines()
    assert len(captions) == 20 and sum(c == WORDS[d] for c, d in zip(captions, digits.labels[:20])) >= 16

    for argv, message in ((["predict", str(run), images[0] + ",1,2,3,4,5,6,7,8"], "image 1 has 72 values"),
                          (["predict", str(run), images[0].replace("0", "zero", 1)], "'zero' is not a number"),
                          (["predict", str(run), "--file", str(tmp_path / "none.csv")], "does not exist")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        error = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and message in error, error


def test_captioner_exports_and_captions_from_onnxruntime_alone(tmp_path, capsys):
    """encoder -> bridge -> decoder one character at a time, driven only by onnxruntime and
    export.json, writes the same captions as `rnnkit predict`."""
    import numpy as np
    import onnxruntime

    main(["caption", "digits", "--encoder-size", "16", "--hidden-size", "16", "--max-steps", "20",
          "--eval-every", "20", "--runs-dir", str(tmp_path), "--name", "cap", "--quiet"])
    run = tmp_path / "cap"
    digits = load_digits_sequences()
    images = digits.values[:6].numpy()
    capsys.readouterr()
    main(["predict", str(run), *(",".join(str(int(v)) for v in image.flatten()) for image in images)])
    expected = capsys.readouterr().out.splitlines()
    main(["export", str(run)])
    out = run / "export"
    sidecar = json.loads((out / "export.json").read_text())
    session = {name: onnxruntime.InferenceSession(str(out / f"{name}.onnx")) for name in ("encoder", "bridge", "decoder")}
    x = ((images - np.array(sidecar["mean"])) / np.array(sidecar["std"])).astype(np.float32)
    (condition,) = session["encoder"].run(None, {"images": x})
    state = session["bridge"].run(None, {"condition": condition})
    alphabet = sidecar["alphabet"]
    tokens = np.full((len(x), 1), alphabet.index(sidecar["start"]), dtype=np.int64)
    written = []
    for _ in range(sidecar["max_length"]):
        feeds = {"tokens": tokens, **{f"state_{i}": s for i, s in enumerate(state)}}
        logits, *state = session["decoder"].run(None, feeds)
        tokens = logits[:, -1].argmax(-1)[:, None]
        written.append(tokens[:, 0])
    captions = ["".join(alphabet[i] for i in row).split(sidecar["end"])[0] for row in np.stack(written, 1)]
    assert captions == expected


def test_predict_refuses_another_tasks_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "classify"}))
    with pytest.raises(ValueError, match="is not a caption run"):
        predict_command(tmp_path, ["1"], None)
