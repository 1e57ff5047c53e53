"""Trains the text task under torchrun (or alone) and saves this process's parameters.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py CORPUS OUT
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rnnkit.tasks.text import TextConfig, TextTask
from rnnkit.train.trainer import TrainConfig, Trainer, end_distributed_run, setup_distributed

corpus, out = sys.argv[1], Path(sys.argv[2])
torch.set_num_threads(1)
setup_distributed()
rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
torch.manual_seed(0)
config = TextConfig(corpus=corpus, hidden_size=32, num_layers=2, embedding_size=16, batch_size=8, bptt=20,
                    dropout=0.0)  # dropout masks would differ between 1 and 2 processes
task = TextTask(config, rank, world_size)
run_dir = out / f"world{world_size}-rank{rank}"
run_dir.mkdir(parents=True)
Trainer(task, TrainConfig(max_steps=12, eval_every=6, learning_rate=1e-2), run_dir, {}, quiet=True).fit()
torch.save(task.model.state_dict(), out / f"world{world_size}-rank{rank}.pt")
end_distributed_run()
