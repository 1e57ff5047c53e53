"""Files a run appends to (metrics.csv, samples.txt, gradient_flow.csv) are cut back to the
checkpoint on resume, so rows written between the last checkpoint and a crash never appear twice."""

import csv

import pytest

from conftest import small_trainer
from rnnkit.files import cut_back_appends, file_marks


class Crash(Exception):
    pass


def test_a_crash_between_checkpoints_leaves_no_duplicate_rows(tmp_path, corpus):
    crashed = small_trainer(corpus, tmp_path / "crashed", max_steps=14)
    save_checkpoints = crashed.save_checkpoints

    def crash_at_step_9(*args):  # after step 9's rows, samples and gradient flow were written
        if crashed.step == 9:
            raise Crash
        save_checkpoints(*args)

    crashed.save_checkpoints = crash_at_step_9
    crashed.config.eval_every = 3  # checkpoints at 3 and 6; the crash at 9 comes before its own
    with pytest.raises(Crash):
        crashed.fit()
    run_dir = crashed.run_dir
    assert "=== step 9 ===" in (run_dir / "samples.txt").read_text()

    resumed = small_trainer(corpus, run_dir, max_steps=14, eval_every=3)
    resumed.resume(run_dir / "last.pt")
    assert resumed.step == 6 and "=== step 9 ===" not in (run_dir / "samples.txt").read_text()
    resumed.fit()
    straight = small_trainer(corpus, tmp_path / "straight", max_steps=14, eval_every=3)
    straight.fit()
    for name in ("samples.txt", "gradient_flow.csv"):
        assert (run_dir / name).read_text() == (straight.run_dir / name).read_text(), name
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == list(range(1, 15))
    assert (run_dir / "samples.txt").read_text().count("=== step 9 ===") == 1


def test_only_files_that_were_appended_to_are_cut_back(tmp_path):
    (tmp_path / "log.csv").write_text("a,b\n1,2\n")
    (tmp_path / "config.json").write_text('{"steps": 5}\n')
    (tmp_path / "shrunk.txt").write_text("0123456789")
    marks = file_marks(tmp_path)
    with open(tmp_path / "log.csv", "a") as file:
        file.write("3,4\n5,")  # a row, then half a row from a kill mid-append
    (tmp_path / "config.json").write_text('{"steps": 500000}\n')  # rewritten, longer
    (tmp_path / "shrunk.txt").write_text("01")
    (tmp_path / "new.txt").write_text("made after the checkpoint")
    assert cut_back_appends(tmp_path, marks) == ["log.csv"]
    assert (tmp_path / "log.csv").read_text() == "a,b\n1,2\n"
    assert (tmp_path / "config.json").read_text() == '{"steps": 500000}\n'
    assert (tmp_path / "shrunk.txt").read_text() == "01"
    assert (tmp_path / "new.txt").exists()


def test_a_run_begun_with_fewer_metric_columns_keeps_its_rows_aligned(tmp_path, corpus):
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=2)
    (trainer.run_dir / "metrics.csv").write_text("step,train_loss,val_loss\n1,3.5,\n")  # an older rnnkit's
    trainer.fit()
    with open(trainer.run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["step", "train_loss", "val_loss"] and all(len(row) == 3 for row in rows)
    assert [row[0] for row in rows[1:]] == ["1", "1", "2"] and rows[-1][2] != ""
