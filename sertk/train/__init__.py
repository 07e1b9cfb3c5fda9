"""Training: the shared trainer (resume, DDP, AMP), losses and batching helpers."""
from sertk.train.losses import ccc_loss, masked_ce
from sertk.train.trainer import (CheckpointError, TrainConfig, Trainer, TrainError, default_batches, load_weights,
                                 seed_everything, shard_global_batches)

__all__ = ["Trainer", "TrainConfig", "TrainError", "CheckpointError", "ccc_loss", "masked_ce", "default_batches",
           "shard_global_batches", "load_weights", "seed_everything"]
