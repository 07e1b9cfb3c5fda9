"""Tiny regression problem for the trainer tests, and the torchrun worker for the DDP test.

Run under torchrun: ``python -m torch.distributed.run --standalone --nproc_per_node=2
tests/_ddp_worker.py OUT_DIR BATCH_SIZE``; every rank saves its final weights to
``OUT_DIR/rank{R}.pt`` so the test can check that ranks agree.
"""
from __future__ import annotations

import os
import sys

import torch

from sertk.train.trainer import TrainConfig, Trainer, TrainError, seed_everything


class Regression(torch.utils.data.Dataset):
    """``y = tanh(x W) + noise``; fixed by ``seed``; items are dicts like real datasets."""

    def __init__(self, n: int, seed: int = 123, dim: int = 6, out: int = 2):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.randn(dim, out, generator=torch.Generator().manual_seed(7))
        self.y = torch.tanh(self.x @ w) + 0.05 * torch.randn(n, out, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"id": f"utt{i:03d}", "x": self.x[i], "y": self.y[i]}


def collate(items):
    return {"ids": [it["id"] for it in items], "x": torch.stack([it["x"] for it in items]),
            "y": torch.stack([it["y"] for it in items])}


def make_model(dropout: float = 0.0, seed: int = 0, hidden: int = 16) -> torch.nn.Module:
    seed_everything(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(hidden, 2))


def mse_loss(model, batch):
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


def train_once(expdir, batch_size: int, n_train: int = 43, **cfg) -> Trainer:
    """The DDP test's run: the same in one process and under torchrun."""
    conf = {"epochs": 3, "batch_size": batch_size, "lr": 0.02, "optimizer": "sgd", "momentum": 0.9,
            "scheduler": "linear", "warmup_steps": 2, "max_grad_norm": 1.0, "progress": False, "log_interval": 1}
    conf.update(cfg)
    trainer = Trainer(make_model(), Regression(n_train), Regression(16, seed=99), collate, mse_loss, None,
                      TrainConfig.from_dict(conf), expdir)
    trainer.fit()
    return trainer


def main() -> int:
    torch.set_num_threads(1)
    out, batch_size = sys.argv[1], int(sys.argv[2])
    trainer = train_once(os.path.join(out, "exp"), batch_size)
    rank = os.environ.get("RANK", "0")
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
               os.path.join(out, f"rank{rank}.pt"))
    # a batch sampler that gives ranks different batch counts must fail on every rank, not hang
    uneven = Trainer(make_model(), Regression(16), None, collate, mse_loss, None,
                     TrainConfig.from_dict({"epochs": 1, "progress": False}), os.path.join(out, "uneven"),
                     batch_sampler_fn=lambda ds, epoch, r, w: [[i] for i in range(r, len(ds) - 2 * r, w)])
    try:
        uneven.fit()
    except TrainError as e:
        with open(os.path.join(out, f"rank{rank}_uneven.txt"), "w") as f:
            f.write(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
