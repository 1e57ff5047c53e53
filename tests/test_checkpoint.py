import pickle

import pytest
import torch

from rnnkit.train.checkpoint import load_checkpoint, save_checkpoint


class RunsCode:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 3})
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as file:
        pickle.dump({"format_version": 1, "payload": RunsCode()}, file)
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "cannot be loaded"),
    (b"not a checkpoint at all", "cannot be loaded"),
])
def test_corrupt_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_a_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an rnnkit checkpoint"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(path)
