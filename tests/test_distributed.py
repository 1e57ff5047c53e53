"""Data-parallel training: 2 processes on loopback (gloo) equal 1 process with the same global batch."""

import subprocess
import sys
from pathlib import Path

import torch

from test_text_training import TEXT

WORKER = Path(__file__).with_name("ddp_worker.py")


def run(command, tmp_path):
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def torchrun(*args):
    # --standalone: a rendezvous on a free loopback port, nothing outside this machine
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def test_two_processes_stay_identical_and_match_one(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run([sys.executable, str(WORKER), str(corpus), str(tmp_path)], tmp_path)
    run(torchrun(str(WORKER), str(corpus), str(tmp_path)), tmp_path)
    single = torch.load(tmp_path / "world1-rank0.pt")
    rank0, rank1 = torch.load(tmp_path / "world2-rank0.pt"), torch.load(tmp_path / "world2-rank1.pt")
    for name in single:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)  # replicas never drift
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5)


def test_torchrun_drives_the_cli(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    done = run(torchrun("-m", "rnnkit", "train", "text", "--corpus", str(corpus), "--max-steps", "6",
                        "--hidden-size", "32", "--layers", "1", "--batch-size", "8", "--bptt", "20",
                        "--runs-dir", str(tmp_path / "runs"), "--quiet"), tmp_path)
    assert done.stdout.count("validation bpc") == 1  # only rank 0 reports
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "report.html").exists() and (run_dir / "best.pt").exists()
