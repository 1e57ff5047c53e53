"""Disk full and read-only run folders, simulated inside the atomic write (the suite runs as
root, whom chmod does not stop): a clear error, the previous file intact, no temporary file."""

import errno
import json
import os
import tempfile

import pytest

from conftest import small_trainer
from rnnkit.cli import main
from rnnkit.files import atomic_write_bytes
from rnnkit.train.checkpoint import load_checkpoint


def failing(code, real=None, only=""):
    """A stand-in that raises OSError(code); with `only`, just for a destination ending so."""
    def fail(*args, **kwargs):
        if not only or str(args[-1]).endswith(only):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)
    return fail


# Where a full disk or a read-only folder shows itself during an atomic write.
FAULTS = {
    "read-only: cannot create the temporary file": ("tempfile.mkstemp", errno.EROFS),
    "disk full: the flush to disk fails": ("os.fsync", errno.ENOSPC),
    "read-only: the rename fails": ("os.replace", errno.EROFS),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, figures, fault):
    figures["disk fault scenarios"] += 1
    target, code = FAULTS[fault]
    module, name = target.split(".")
    path = tmp_path / "last.pt"
    path.write_bytes(b"the good checkpoint")
    monkeypatch.setattr({"tempfile": tempfile, "os": os}[module], name, failing(code))
    with pytest.raises(OSError) as error:
        atomic_write_bytes(path, b"the new one")
    monkeypatch.undo()
    assert error.value.errno == code and error.value.filename == str(path)
    assert path.read_bytes() == b"the good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("target, code, only, message", [
    ("fsync", errno.ENOSPC, "", "No space left on device"),
    ("replace", errno.EROFS, "", "Read-only file system"),
    ("replace", errno.ENOSPC, ".pt", "best.pt: No space left on device"),  # mid-training, at step 6
])
def test_resuming_onto_a_full_or_read_only_disk_exits_2_and_keeps_the_checkpoint(
        tmp_path, corpus, monkeypatch, capsys, figures, target, code, only, message):
    figures["disk fault scenarios"] += 1
    trainer = small_trainer(corpus, tmp_path / "run", max_steps=4)
    trainer.fit()
    run_dir = trainer.run_dir
    (run_dir / "config.json").write_text("{}")  # `rnnkit train --resume` rewrites it first
    good = (run_dir / "last.pt").read_bytes()
    monkeypatch.setattr(os, target, failing(code, getattr(os, target), only))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "text", "--resume", str(run_dir), "--max-steps", "8", "--quiet"])
    monkeypatch.undo()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnnkit: error: cannot write ") and message in err
    assert (run_dir / "last.pt").read_bytes() == good
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["step"] == 4
    config = (run_dir / "config.json").read_text()
    assert config == "{}" if not only else json.loads(config)["train"]["max_steps"] == 8  # old or new, whole
    assert not any(run_dir.glob(".*.tmp"))
