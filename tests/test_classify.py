"""Sequence classification: data loading, the CSV format, training end to end, prediction, bad input."""

import json
import math

import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.sequences import (load_digits_sequences, parse_sequence, read_labelled_csv, read_unlabelled,
                                   split_indices)
from rnnkit.tasks.classify import feature_statistics, standardize


def write_csv(path, rows):
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def frequency_csv(path, count=240, seed=0):
    """Sequences of 2 features: a sine of frequency 1, 2 or 3 (the label) plus noise, 10 to 20 steps."""
    generator = torch.Generator().manual_seed(seed)
    rows = ["label,values"]
    for i in range(count):
        label = i % 3
        steps = int(torch.randint(10, 21, (1,), generator=generator))
        t = torch.arange(steps) / 5
        wave = torch.sin((label + 1) * t + torch.rand(1, generator=generator) * 6)
        noise = 0.1 * torch.randn(steps, 2, generator=generator)
        values = torch.stack([wave, torch.cos((label + 1) * t)], 1) + noise
        rows.append(",".join([f"f{label + 1}", *(f"{v:.4f}" for v in values.flatten().tolist())]))
    return write_csv(path, rows)


def run_cli(argv, capsys):
    main(argv)
    return capsys.readouterr().out


def fails_with(argv, capsys, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and message in error, error


def test_digits_rows_and_pixels_are_the_same_pixels():
    rows, pixels = load_digits_sequences("rows"), load_digits_sequences("pixels")
    assert rows.values.shape == (1797, 8, 8) and pixels.values.shape == (1797, 64, 1)
    assert torch.equal(rows.values.flatten(1), pixels.values.flatten(1))
    assert rows.values[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]  # the first image's top row, a zero
    assert rows.labels[0] == 0 and rows.classes == [str(d) for d in range(10)]


def test_split_is_fixed_disjoint_and_complete():
    train, val, test = split_indices(1797)
    assert (len(train), len(val), len(test)) == (1258, 270, 269)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(1797))
    assert torch.equal(split_indices(1797)[2], test)


def test_standardize_by_hand():
    values = torch.tensor([[[1.0], [3.0]], [[5.0], [0.0]]])  # second sequence: 1 valid step
    lengths = torch.tensor([2, 1])
    data = type("Data", (), {"values": values, "lengths": lengths})
    mean, std = feature_statistics(data)
    assert mean == [3.0] and std == pytest.approx([math.sqrt(8 / 3)])
    z = standardize(values, lengths, mean, std)
    sigma = math.sqrt(8 / 3)
    torch.testing.assert_close(z[:, :, 0], torch.tensor([[-2 / sigma, 0.0], [2 / sigma, 0.0]]))


def test_csv_format(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["label,v1,v2,v3,v4", "b,1,2,3,4", "a,5,6,,", "", "b,7,8"])
    data = read_labelled_csv(path, features=2)
    assert data.classes == ["a", "b"] and data.labels.tolist() == [1, 0, 1]
    assert data.lengths.tolist() == [2, 1, 1]
    assert data.values[0].tolist() == [[1, 2], [3, 4]] and data.values[1].tolist() == [[5, 6], [0, 0]]
    assert read_unlabelled(["1,2,3,4"], None, 2)[0].tolist() == [[1, 2], [3, 4]]
    assert parse_sequence(["1", " 2.5", "", " "], 1, "x").tolist() == [[1.0], [2.5]]  # trailing blanks end it


@pytest.mark.parametrize("rows, features, message", [
    (["a,1,2,3", "b,1,2"], 2, "line 1: 3 values do not make whole steps of 2 features"),
    (["a,1,x", "b,1"], 1, "line 1: 'x' is not a number"),
    (["a,", "b,1"], 1, "line 1: empty sequence"),
    ([",1,2", "b,1"], 1, "line 1: the label (first cell) is missing"),
    (["a,1", "a,2"], 1, "need at least 2 different labels"),
    (["label,v1"], 1, "has no sequences"),
])
def test_bad_csv_files_are_named_errors(tmp_path, rows, features, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labelled_csv(write_csv(tmp_path / "bad.csv", rows), features)


def test_a_csv_classifier_learns_and_predicts(tmp_path, capsys):
    data = frequency_csv(tmp_path / "waves.csv")
    out = run_cli(["classify", "--csv", str(data), "--features", "2", "--hidden-size", "32", "--max-steps", "120",
                   "--eval-every", "40", "--runs-dir", str(tmp_path), "--name", "waves", "--quiet"], capsys)
    run = tmp_path / "waves"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8, out  # chance is 1/3
    for name in ("config.json", "metrics.csv", "best.pt", "confusion_matrix.png", "report.html"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["classes"] == ["f1", "f2", "f3"]
    sequences = [row.split(",", 1) for row in data.read_text().splitlines()[1:13]]
    predict_file = write_csv(tmp_path / "predict.csv", [values for _, values in sequences])
    lines = run_cli(["predict", str(run), "--file", str(predict_file)], capsys).splitlines()
    predicted = [line.split("\t")[0] for line in lines]
    assert len(lines) == 12 and sum(p == label for p, (label, _) in zip(predicted, sequences)) >= 9
    assert all(0 < float(line.split("\t")[1]) <= 1 for line in lines)


def test_digits_rows_learn_on_a_small_budget(tmp_path, capsys):
    run_cli(["classify", "digits", "--hidden-size", "32", "--max-steps", "150", "--eval-every", "50",
             "--runs-dir", str(tmp_path), "--name", "digits", "--quiet"], capsys)
    summary = json.loads((tmp_path / "digits" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.85  # chance is 0.1
    image = ",".join(str(int(v)) for v in load_digits_sequences().values[0].flatten().tolist())  # a zero
    assert run_cli(["predict", str(tmp_path / "digits"), image], capsys).split("\t")[0] == "0"
    fails_with(["predict", str(tmp_path / "digits"), image + ",3"], capsys, "65 values do not make whole steps of 8")
    fails_with(["predict", str(tmp_path / "digits"), image.rsplit(",", 8)[0]], capsys, "a digit image has 64")
    fails_with(["predict", str(tmp_path / "digits"), ""], capsys, "input 1: empty sequence")
    fails_with(["predict", str(tmp_path / "digits")], capsys, "give sequences to predict")


def test_digits_classifier_exports_to_onnx_with_its_standardisation(tmp_path, capsys):
    """The exported graph plus export.json's mean/std give the run's own probabilities."""
    import numpy as np
    import onnxruntime

    run_cli(["classify", "digits", "--hidden-size", "16", "--max-steps", "3", "--eval-every", "3",
             "--runs-dir", str(tmp_path), "--name", "digits", "--quiet"], capsys)
    run = tmp_path / "digits"
    images = load_digits_sequences().values[:5]
    inline = [",".join(str(int(v)) for v in image.flatten().tolist()) for image in images]
    expected = [float(line.split("\t")[1]) for line in run_cli(["predict", str(run), *inline], capsys).splitlines()]
    run_cli(["export", str(run)], capsys)
    sidecar = json.loads((run / "export" / "export.json").read_text())
    session = onnxruntime.InferenceSession(str(run / "export" / "classifier.onnx"))
    x = ((images.numpy() - np.array(sidecar["mean"])) / np.array(sidecar["std"])).astype(np.float32)
    (logits,) = session.run(None, {"x": x, "lengths": np.full(5, 8, dtype=np.int64)})
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities.max(-1), expected, atol=2e-3)  # predict prints 3 decimals


def test_bad_command_lines_exit_2_with_one_line(tmp_path, capsys):
    bad = write_csv(tmp_path / "bad.csv", ["a,1,2", "b,1,oops"])
    fails_with(["classify", "--csv", str(bad), "--runs-dir", str(tmp_path)], capsys, "line 2: 'oops' is not a number")
    fails_with(["classify", "--csv", str(tmp_path / "missing.csv")], capsys, "does not exist")
    fails_with(["classify", "digits", "--csv", str(bad)], capsys, "not both")
    fails_with(["classify", "--csv", str(bad), "--pixels"], capsys, "--pixels")
    assert not list(tmp_path.glob("classify-*"))  # no run folder is left by a refused start
