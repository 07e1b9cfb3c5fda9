"""One trainer for every sertk model: config-driven, seeded, resumable, DDP-ready.

A model plugs in with two callbacks: ``compute_loss(model, batch)`` and
``evaluate(model, dev_loader)``. The trainer owns everything around them:
batching (seeded shuffling sharded over DDP ranks), gradient accumulation,
AMP, clipping, schedules, dev-set checkpoint selection with early stopping,
atomic checkpoints and an exact ``resume``.

Guarantees a user relies on (tests/test_trainer.py checks each one):

* Resuming after a crash gives bit-identical weights to an uninterrupted run:
  every source of randomness of an epoch (batch order, dropout, numpy/python
  RNG) is derived from ``(seed, epoch, rank)`` at the start of that epoch, and
  the checkpoint restores model, optimizer, scheduler and grad scaler.
* Gradient accumulation and DDP are exact: each micro-batch loss is weighted
  by its share of the samples in its optimizer step (counted across micro-
  batches and ranks), so batch 8 = batch 4 x accum 2 = 2 ranks x batch 4, also
  for an uneven last batch, as long as ``compute_loss`` returns a per-sample
  mean.
* The checkpoint is chosen on the dev set only; the trainer never sees test data.
* A run that did not learn says so: ``collapsed`` in the fit() summary and
  best.json, with a WARNING, when the dev selection metric never cleared the
  task's chance level or the selected epoch's dev outputs were constant.
* A changed run never resumes: inside :func:`run_digest` (``sertk train``
  enters it with the digest of the config, data and code of the split, see
  :mod:`sertk.tasks.runner`) every checkpoint records that digest, and
  ``fit(resume=True)`` resumes only a checkpoint with the same one; any other
  run is moved aside to ``<expdir>.old-<n>`` (never deleted) and training starts
  fresh (tests/test_stale_models.py). Without a run digest, a checkpoint with
  other trajectory settings is refused with CheckpointError.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import re
import sys
import time
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from sertk.common.config import ConfigError
from sertk.common.fileio import atomic_path, move_aside, write_json_atomic
from sertk.common.logging import FORMAT
from sertk.data.dataset import make_bucket_batch_sampler
from sertk.train import distributed as D
from sertk.train.inference import amp_dtype, autocast, resolve_device, to_device

log = logging.getLogger("sertk.train")

CHECKPOINT_FORMAT = "sertk-trainer/1"
CHECKPOINT_RE = re.compile(r"^epoch(\d+)\.pt$")
# Settings that change the training trajectory: resuming under different values
# would silently mix two experiments, so it is refused.
TRAJECTORY_KEYS = ("batch_size", "grad_accum", "lr", "weight_decay", "optimizer", "momentum", "scheduler",
                   "warmup_steps", "max_grad_norm", "amp", "seed", "select_metric", "select_mode")


_RUN_DIGEST: list[str | None] = [None]


@contextlib.contextmanager
def run_digest(digest: str | None):
    """Trainers made inside this block record ``digest`` in their checkpoints and resume only on a match."""
    _RUN_DIGEST.append(digest)
    try:
        yield
    finally:
        _RUN_DIGEST.pop()


def current_run_digest() -> str | None:
    """The digest of the run being trained (None outside :func:`run_digest`)."""
    return _RUN_DIGEST[-1]


class TrainError(RuntimeError):
    """Training cannot go on (diverged, bad callback output, ranks disagree)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model/config being trained."""


@dataclass
class TrainConfig:
    """The ``train:`` section of a config. Build it with :meth:`from_dict`.

    ``batch_size`` is per process and per micro-step: the optimizer sees
    ``batch_size * world_size * grad_accum`` samples per step.
    """
    epochs: int = 10
    batch_size: int = 8
    eval_batch_size: int | None = None  # dev batches; default batch_size
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0  # on weights with >= 2 dims; biases and norms are not decayed
    optimizer: str = "adamw"  # adamw | adam | sgd
    momentum: float = 0.0  # sgd only
    scheduler: str = "constant"  # constant | linear | cosine (decay to 0 at the last step)
    warmup_steps: int = 0  # linear warm-up, in optimizer steps
    max_grad_norm: float | None = 5.0
    amp: bool | str = "auto"  # auto|true: bf16 (fp16 if unsupported) on CUDA, off on CPU; bf16; fp16; false
    seed: int = 0
    num_workers: int = 0
    select_metric: str = "loss"  # a key of evaluate()'s dict; "loss" = mean dev loss
    select_mode: str = "min"  # min | max
    patience: int | None = None  # stop after this many epochs without a dev improvement
    log_interval: int = 20  # optimizer steps between log lines
    keep_checkpoints: int | None = 2  # newest epoch checkpoints kept; None keeps all
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True  # tqdm bars (only on a terminal, only rank 0)
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters skip forward

    @classmethod
    def from_dict(cls, cfg: dict | None) -> "TrainConfig":
        """Validated config; unknown keys and wrong types raise ConfigError naming the key."""
        cfg = dict(cfg or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ConfigError(f"train: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        return cls(**{k: _coerce(k, v) for k, v in cfg.items()})

    def __post_init__(self) -> None:
        for k in ("epochs", "batch_size", "grad_accum", "log_interval"):
            if getattr(self, k) < 1:
                raise ConfigError(f"train.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup_steps", "num_workers"):
            if getattr(self, k) < 0:
                raise ConfigError(f"train.{k} must be >= 0, got {getattr(self, k)}")
        for k in ("eval_batch_size", "keep_checkpoints", "patience"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ConfigError(f"train.{k} must be >= 1 or null, got {v}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"train.max_grad_norm must be positive or null, got {self.max_grad_norm}")
        for k, choices in (("optimizer", ("adamw", "adam", "sgd")), ("scheduler", ("constant", "linear", "cosine")),
                           ("select_mode", ("min", "max"))):
            if getattr(self, k) not in choices:
                raise ConfigError(f"train.{k} must be one of {', '.join(choices)}, got {getattr(self, k)!r}")
        if isinstance(self.amp, str):
            self.amp = self.amp.lower()
            if self.amp not in ("auto", "bf16", "fp16", "off"):
                raise ConfigError(f"train.amp must be auto, bf16, fp16, true or false, got {self.amp!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_INT = ("epochs", "batch_size", "eval_batch_size", "grad_accum", "warmup_steps", "seed", "num_workers", "patience",
        "log_interval", "keep_checkpoints")
_FLOAT = ("lr", "weight_decay", "momentum", "max_grad_norm")
_BOOL = ("progress", "find_unused_parameters")
_STR = ("optimizer", "scheduler", "select_metric", "select_mode", "device")
_NULLABLE = ("eval_batch_size", "patience", "keep_checkpoints", "max_grad_norm")


def _coerce(key: str, v: Any) -> Any:
    """YAML-friendly typing: ``1e-3`` (read as a string by YAML 1.1) is a float, ``8.0`` an int."""
    bad = ConfigError(f"train.{key}: invalid value {v!r}")
    if v is None:
        if key in _NULLABLE:
            return None
        raise bad
    if key in _FLOAT:
        if isinstance(v, bool):
            raise bad
        try:
            return float(v)
        except (TypeError, ValueError):
            raise bad from None
    if key in _INT:
        if isinstance(v, bool):
            raise bad
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise bad from None
        if not f.is_integer():
            raise bad
        return int(f)
    if key in _BOOL:
        if not isinstance(v, bool):
            raise bad
        return v
    if key in _STR:
        if not isinstance(v, str):
            raise bad
        return v.lower() if key != "select_metric" else v
    if key == "amp":
        if isinstance(v, bool):
            return v
        if isinstance(v, str):
            return v
        raise bad
    return v


# ----------------------------------------------------------------- batching --

def _seed_seq(seed: int, tag: str, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(tag.encode()), *[int(k) for k in keys]])


def config_seed(train: dict | None) -> int:
    """A config's ``train.seed`` (default 0), typed as :class:`TrainConfig` reads it."""
    return _coerce("seed", (train or {}).get("seed", TrainConfig.seed))


def chance_level(select_metric: str, num_classes: int | None = None) -> dict:
    """Trainer ``chance_metric``/``chance_margin`` for the selection metrics whose chance level is known.

    UAR over C classes is 1/C for any input-independent guess; any constant
    prediction scores CCC 0. Other metrics get no verdict ({}).
    """
    if select_metric == "uar" and num_classes:
        return {"chance_metric": 1.0 / num_classes, "chance_margin": 0.02}
    if select_metric.startswith("ccc"):
        return {"chance_metric": 0.0, "chance_margin": 0.05}
    return {}


def constant_outputs(outputs) -> float:
    """1.0 when every dev item got the same output (std < 1e-6 in each column), else 0.0.

    For an evaluate() dict (key ``constant_outputs``): a model that maps every
    input to one output learned nothing, whatever the metric says.
    """
    if len(outputs) < 2:
        return 0.0
    x = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    return float(float(x.std(axis=0).max()) < 1e-6)


def verdict(summary: dict) -> dict:
    """A fit() summary's "did not learn" verdict, as a task records it in its model.yaml."""
    return {"collapsed": bool(summary.get("collapsed")), "collapse_reason": summary.get("collapse_reason")}


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python ``random``; call before building a model."""
    _seed_all(np.random.SeedSequence([int(seed) & 0xFFFFFFFF]))


def _seed_all(ss: np.random.SeedSequence) -> None:
    s = ss.generate_state(4)
    torch.manual_seed(int(s[0]) | (int(s[1]) << 32))
    np.random.seed(int(s[2]))
    random.seed(int(s[3]))


def shard_global_batches(global_batches: Iterable[Sequence[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's part of each global micro-batch: contiguous, as even as possible.

    The union over ranks of micro-batch ``i`` is global batch ``i``, which is
    what makes a DDP run equal a single-process run with ``world_size`` times
    the batch size. A global batch with fewer items than ranks is dropped
    (every rank must take part in every step).
    """
    out = []
    for b in global_batches:
        b = list(b)
        m = len(b)
        if m < world_size:
            continue
        out.append(b[rank * m // world_size:(rank + 1) * m // world_size])
    return out


def default_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                    shuffle: bool = True) -> list[list[int]]:
    """Shuffled micro-batches of ``range(n)`` for one rank, a function of (seed, epoch) only."""
    order = np.random.default_rng(_seed_seq(seed, "shuffle", epoch)).permutation(n) if shuffle else np.arange(n)
    gb = batch_size * world_size
    return shard_global_batches((order[i:i + gb].tolist() for i in range(0, n, gb)), rank, world_size)


def bucketed_batches(batch_size: int, seed: int, num_buckets: int = 5, min_items: int = 1):
    """A Trainer ``batch_sampler_fn``: length-bucketed batches (less padding), reshuffled per
    (seed, epoch), each global batch sharded over the DDP ranks. The dataset gives ``durations()``.
    A global batch with fewer than ``min_items`` per rank joins its neighbour (a CCC loss needs 2)."""
    lengths: list[float] = []

    def batches(dataset, epoch: int, rank: int, world_size: int) -> list[list[int]]:
        if not lengths:
            lengths.extend(dataset.durations())
        sampler = make_bucket_batch_sampler(dataset, batch_size=batch_size * world_size, num_buckets=num_buckets,
                                            seed=seed, epoch=epoch, lengths=lengths)
        return shard_global_batches(merge_small_batches(sampler, min_items * world_size), rank, world_size)
    return batches


def merge_small_batches(batches: Iterable[Sequence[int]], min_size: int) -> list[list[int]]:
    """Batches in order, each one smaller than ``min_size`` joined to its predecessor (the first to its
    successor); a lone batch stays as it is."""
    merged: list[list[int]] = []
    for b in batches:
        if merged and len(b) < min_size:
            merged[-1].extend(b)
        else:
            merged.append(list(b))
    if len(merged) > 1 and len(merged[0]) < min_size:
        first = merged.pop(0)
        merged[0][:0] = first
    return merged



# ---------------------------------------------------------------- the trainer --

def _lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a ``best.safetensors`` written by the trainer (handles tied weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file (has training finished?)")
    try:
        load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except Exception as e:
        raise CheckpointError(f"{path}: does not fit this model: {e}") from e
    return model


class Trainer:
    """Train ``model`` on ``train_dataset``, select epochs on ``dev_dataset``.

    compute_loss(model, batch) -> loss tensor, or (loss, {name: float}) for
        extra training figures; ``batch`` is already on the device. Call the
        model through ``model(...)`` (under DDP it is the wrapper).
    evaluate(model, dev_loader) -> {name: float} (model in eval mode, no grad,
        float32); may be None. ``cfg.select_metric`` is read from it;
        "loss" is computed by the trainer when evaluate does not return it.
    batch_sampler_fn(dataset, epoch, rank, world_size) -> iterable of index
        lists for this rank (e.g. length buckets; epoch counts from 0). Every
        rank must get the same number of batches. Default: seeded shuffling
        (:func:`default_batches`).
    chance_metric, chance_margin: the dev ``select_metric`` of a model that
        learned nothing (see :func:`chance_level`); a run whose best dev value
        never gets past ``chance_metric`` by more than ``chance_margin`` is
        reported as collapsed. None: no chance-level verdict.
    """

    def __init__(self, model: torch.nn.Module, train_dataset, dev_dataset, collate_fn: Callable | None,
                 compute_loss: Callable, evaluate: Callable | None, cfg: TrainConfig, expdir: str | Path,
                 batch_sampler_fn: Callable | None = None, chance_metric: float | None = None,
                 chance_margin: float = 0.02):
        if isinstance(cfg, dict):
            cfg = TrainConfig.from_dict(cfg)
        self.cfg = cfg
        self.train_dataset, self.dev_dataset = train_dataset, dev_dataset
        self.collate_fn, self.compute_loss, self.evaluate = collate_fn, compute_loss, evaluate
        self.batch_sampler_fn = batch_sampler_fn
        self.chance_metric, self.chance_margin = chance_metric, chance_margin
        self.expdir = Path(expdir)
        self.ckpt_dir = self.expdir / "checkpoints"
        self.run_digest = current_run_digest()
        self.device = resolve_device(cfg.device)
        self.dist = D.init_distributed(self.device)
        self.model = model.to(self.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise TrainError("the model has no parameter with requires_grad=True: nothing to train")
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # ---- set-up -------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        if c.weight_decay > 0:
            decay = [p for p in self.trainable if p.ndim >= 2]
            rest = [p for p in self.trainable if p.ndim < 2]
            groups = [g for g in ({"params": decay, "weight_decay": c.weight_decay},
                                  {"params": rest, "weight_decay": 0.0}) if g["params"]]
        else:
            groups = [{"params": self.trainable, "weight_decay": 0.0}]
        if c.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=c.lr)
        if c.optimizer == "adam":
            return torch.optim.Adam(groups, lr=c.lr)
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        r, w = self.dist.rank, self.dist.world_size
        if self.batch_sampler_fn is None:
            batches = default_batches(len(self.train_dataset), self.cfg.batch_size, self.cfg.seed, epoch, r, w)
        else:
            batches = [list(b) for b in self.batch_sampler_fn(self.train_dataset, epoch, r, w)]
        n = torch.tensor([len(batches), -len(batches)], dtype=torch.long, device=self._coll_device)
        D.all_reduce(n, "max")
        if int(n[0]) != len(batches) or int(-n[1]) != len(batches):
            raise TrainError(f"epoch {epoch + 1}: ranks have different numbers of batches "
                             f"(between {int(-n[1])} and {int(n[0])}); a DDP batch sampler must give "
                             f"every rank the same count")
        if any(len(b) == 0 for b in batches):
            raise TrainError(f"epoch {epoch + 1}: the batch sampler produced an empty batch")
        if not batches:
            raise TrainError(f"epoch {epoch + 1}: no training batch (train set has {len(self.train_dataset)} items)")
        return batches

    @property
    def _coll_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # ---- checkpoints --------------------------------------------------------
    def _checkpoints(self) -> list[tuple[int, Path]]:
        if not self.ckpt_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.ckpt_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
        return sorted(found)

    def _save_checkpoint(self, state: dict) -> None:
        ck = {"format": CHECKPOINT_FORMAT, "epoch": state["epoch"], "global_step": state["global_step"],
              "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
              "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
              "history": state["history"], "best": state["best"], "stopped": state["stopped"],
              "config": self.cfg.to_dict(), "world_size": self.dist.world_size, "run_digest": self.run_digest,
              # randomness is re-derived from (seed, epoch, rank) at each epoch start
              "rng": {"scheme": "per-epoch", "seed": self.cfg.seed}}
        path = self.ckpt_dir / f"epoch{state['epoch']}.pt"
        with atomic_path(path) as tmp:
            torch.save(ck, tmp)
        if self.cfg.keep_checkpoints is not None:
            for _, old in self._checkpoints()[:-self.cfg.keep_checkpoints]:
                old.unlink()

    def _changed_run(self) -> str | None:
        """Why the newest checkpoint belongs to another run (None: same run, or nothing to compare)."""
        found = self._checkpoints()
        if self.run_digest is None or not found:
            return None
        path = found[-1][1]
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None  # unreadable: _load_checkpoint names the problem
        old = ck.get("run_digest") if isinstance(ck, dict) else None
        if old == self.run_digest:
            return None
        return (f"{path} was written by another run (run digest {str(old)[:12]}, this run {self.run_digest[:12]})"
                if old else f"{path} records no run digest (an older sertk)")

    def _set_aside_changed_run(self) -> None:
        """Move the expdir of a changed run to ``<expdir>.old-<n>`` so that this one starts fresh."""
        reason = self._changed_run()
        if reason and self.dist.is_main:
            dest = move_aside(self.expdir)
            log.warning("%s; moved %s aside to %s (kept, not deleted) and training from scratch", reason,
                        self.expdir, dest)
        D.barrier()

    def _load_checkpoint(self, path: Path) -> dict:
        hint = ("delete it to resume from an earlier checkpoint, or train in a new experiment directory")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e}); {hint}") from e
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a sertk trainer checkpoint; {hint}")
        own = self.model.state_dict()
        saved = ck["model"]
        problems = [f"missing {k}" for k in own if k not in saved]
        problems += [f"unexpected {k}" for k in saved if k not in own]
        problems += [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
                     for k, v in own.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
        if problems:
            more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            raise CheckpointError(f"{path}: checkpoint does not fit this model: {'; '.join(problems[:5])}{more}; "
                                  f"{hint}")
        old_cfg, new_cfg = ck.get("config", {}), self.cfg.to_dict()
        changed = [f"{k}: {old_cfg.get(k)!r} -> {new_cfg[k]!r}" for k in TRAJECTORY_KEYS
                   if k in old_cfg and old_cfg[k] != new_cfg[k]]
        if changed:
            raise CheckpointError(f"{path}: written with different training settings ({'; '.join(changed)}); "
                                  f"resuming would mix two experiments: use a new experiment directory "
                                  f"or fit(resume=False)")
        if old_cfg.get("epochs") not in (None, self.cfg.epochs) and self.cfg.scheduler != "constant":
            log.warning("%s: epochs changed %s -> %s; the %s schedule is stretched from here on", path,
                        old_cfg.get("epochs"), self.cfg.epochs, self.cfg.scheduler)
        if ck.get("world_size") != self.dist.world_size:
            log.warning("%s: written by %s process(es), resuming with %s: batches differ from here on", path,
                        ck.get("world_size"), self.dist.world_size)
        try:
            self.model.load_state_dict(saved)
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            if ck["scaler"]:
                self.scaler.load_state_dict(ck["scaler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot restore training state ({type(e).__name__}: {e}); {hint}") from e
        return {k: ck[k] for k in ("epoch", "global_step", "history", "best", "stopped")}

    def _write_best(self, state: dict) -> None:
        with atomic_path(self.expdir / "best.safetensors") as tmp:
            save_model(self.model, str(tmp))
        self._write_best_json(state)

    def _write_best_json(self, state: dict) -> None:
        b, reason = state["best"], self._collapse_reason(state)
        write_json_atomic(self.expdir / "best.json", {
            "epoch": b["epoch"], "global_step": state["global_step"], "select_metric": self.cfg.select_metric,
            "select_mode": self.cfg.select_mode, "metrics": b["metrics"], "collapsed": reason is not None,
            "collapse_reason": reason})

    def _write_learning_curve(self, state: dict) -> None:
        """``history.json`` (every epoch's train loss, dev metrics, lr, time) and ``learning_curve.png``."""
        from sertk.eval.plots import plot_learning_curve  # matplotlib only once training is done

        write_json_atomic(self.expdir / "history.json", {"select_metric": self.cfg.select_metric,
                                                         "best_epoch": state["best"]["epoch"],
                                                         "history": state["history"]})
        plot_learning_curve(state["history"], self.expdir / "learning_curve.png", self.cfg.select_metric,
                            state["best"]["epoch"], title=f"{self.expdir.parent.name}/{self.expdir.name}")

    def load_best(self) -> torch.nn.Module:
        """Load ``expdir/best.safetensors`` (the dev-selected epoch) into the model and return it."""
        return load_weights(self.model, self.expdir / "best.safetensors")

    # ---- logging --------------------------------------------------------------
    @contextlib.contextmanager
    def _log_file(self):
        if not self.dist.is_main:
            yield
            return
        path = (self.expdir / "log" / "train.log").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = [h for h in logging.getLogger().handlers + log.handlers
                    if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == path]
        handler = None
        if not existing:
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter(FORMAT))
            log.addHandler(handler)
        old_level = log.level
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        try:
            yield
        finally:
            log.setLevel(old_level)
            if handler is not None:
                log.removeHandler(handler)
                handler.close()

    def _info(self, msg: str, *args) -> None:
        if self.dist.is_main:
            log.info(msg, *args, stacklevel=2)

    # ---- training -------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict:
        """Train to ``cfg.epochs`` (or early stop); with ``resume`` continue from the newest checkpoint.

        Returns ``{"best_epoch", "best_metrics", "history", "stopped_early", "epochs_done", "collapsed",
        "collapse_reason"}``; ``collapsed`` is the "did not learn" verdict (see :meth:`_collapse_reason`).
        """
        D.barrier()  # rank 0 may have moved a changed run aside (sertk.tasks.runner) before the others look
        if resume:
            self._set_aside_changed_run()  # before the log file opens: the new run logs into a new dir
        with self._log_file():
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict:
        cfg, world = self.cfg, self.dist.world_size
        if self.dist.is_main:
            self.expdir.mkdir(parents=True, exist_ok=True)
            for stale in self.ckpt_dir.glob(".*.tmp") if self.ckpt_dir.is_dir() else []:
                stale.unlink()  # left by a killed writer; never a complete checkpoint
        steps_per_epoch = math.ceil(len(self._epoch_batches(0)) / cfg.grad_accum)
        total_steps = steps_per_epoch * cfg.epochs
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(cfg.scheduler, cfg.warmup_steps, total_steps))
        state = {"epoch": 0, "global_step": 0, "history": [], "best": None, "stopped": False}
        found = self._checkpoints()
        if resume and found:
            state = self._load_checkpoint(found[-1][1])
            self._info("resuming from %s (epoch %d, step %d)", found[-1][1], state["epoch"], state["global_step"])
        elif found and self.dist.is_main:
            log.warning("fit(resume=False): removing %d checkpoint(s) and best weights of an earlier run in %s",
                        len(found), self.expdir)
            for _, p in found:
                p.unlink()
            for name in ("best.safetensors", "best.json"):
                (self.expdir / name).unlink(missing_ok=True)
        D.barrier()
        n_train = sum(p.numel() for p in self.trainable)
        n_all = sum(p.numel() for p in self.model.parameters())
        self._info("training %d of %d parameters on %s x%d, amp=%s, %d steps/epoch (global batch %d x accum %d)",
                   n_train, n_all, self.device, world, self.amp_dtype, steps_per_epoch, cfg.batch_size * world,
                   cfg.grad_accum)
        net = self.model
        if world > 1:
            net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        for epoch in range(state["epoch"], cfg.epochs):
            if state["stopped"]:
                break
            t0 = time.time()
            train_stats = self._train_epoch(net, epoch, state)
            dev = self._dev_metrics() if self.dist.is_main else None
            dev = D.broadcast_object(dev)
            state["epoch"] = epoch + 1
            improved = self._select(dev, state)
            lr = self.optimizer.param_groups[0]["lr"]
            state["history"].append({"epoch": epoch + 1, "global_step": state["global_step"], "lr": lr,
                                     "time_s": round(time.time() - t0, 3), **train_stats, "dev": dev})
            best_epoch = state["best"]["epoch"] if state["best"] else None
            if cfg.patience is not None and best_epoch is not None and epoch + 1 - best_epoch >= cfg.patience:
                state["stopped"] = True
            if self.dist.is_main:
                if improved:
                    self._write_best(state)
                self._save_checkpoint(state)
            D.barrier()
            self._info("epoch %d/%d train_loss %.4f dev %s lr %.3g time %.1fs%s%s", epoch + 1, cfg.epochs,
                       train_stats["train_loss"], _fmt(dev), lr, time.time() - t0, " [best]" if improved else "",
                       f" (early stop: no {cfg.select_metric} gain in {cfg.patience} epochs)"
                       if state["stopped"] else "")
        if state["best"] is None:
            raise TrainError(f"no epoch had a finite dev {cfg.select_metric!r}; nothing to select "
                             f"(see {self.expdir / 'log' / 'train.log'})")
        reason = self._collapse_reason(state)
        if self.dist.is_main:
            self._write_best_json(state)  # the verdict needs every epoch: best.json was written before the last
            self._write_learning_curve(state)
            if reason:
                log.warning("%s: training did not learn: %s", self.expdir, reason)
        return {"best_epoch": state["best"]["epoch"], "best_metrics": state["best"]["metrics"],
                "history": state["history"], "stopped_early": state["stopped"], "epochs_done": state["epoch"],
                "collapsed": reason is not None, "collapse_reason": reason}

    def _train_epoch(self, net: torch.nn.Module, epoch: int, state: dict) -> dict:
        cfg, world = self.cfg, self.dist.world_size
        _seed_all(_seed_seq(cfg.seed, "epoch", epoch, self.dist.rank))
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)
        batches = self._epoch_batches(epoch)
        accum = cfg.grad_accum
        n_steps = math.ceil(len(batches) / accum)
        # samples per optimizer step over all ranks: each micro-batch loss is weighted by its share
        step_n = torch.zeros(n_steps, dtype=torch.float64, device=self._coll_device)
        for i, b in enumerate(batches):
            step_n[i // accum] += len(b)
        D.all_reduce(step_n)
        step_n = step_n.cpu().tolist()
        loader = DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=self.collate_fn,
                            num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        net.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        extra_sum: dict[str, float] = {}
        n_local = 0
        show = cfg.progress and self.dist.is_main and sys.stderr.isatty()
        bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
                   dynamic_ncols=True)
        window_loss, window_n, grad_norm = 0.0, 0, float("nan")
        for i, batch in enumerate(loader):
            step, n = i // accum, len(batches[i])
            last = i % accum == accum - 1 or i == len(batches) - 1
            weight = n * world / step_n[step]
            sync = contextlib.nullcontext() if last or world == 1 else net.no_sync()
            with sync:
                with self._autocast():
                    out = self.compute_loss(net, to_device(batch, self.device, non_blocking=True))
                loss, extra = out if isinstance(out, tuple) else (out, {})
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise TrainError("compute_loss must return a scalar tensor (or (scalar, dict))")
                self.scaler.scale(loss.float() * weight).backward()
            loss_sum += loss.detach().double() * n
            n_local += n
            for k, v in extra.items():
                extra_sum[k] = extra_sum.get(k, 0.0) + float(v) * n
            bar.update(1)
            if not last:
                continue
            if cfg.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm))
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if scale is None or self.scaler.get_scale() >= scale:  # fp16 steps skipped on overflow keep the lr
                self.scheduler.step()
            state["global_step"] += 1
            if state["global_step"] % cfg.log_interval == 0 or step == n_steps - 1:
                total = float(loss_sum)
                if not math.isfinite(total):
                    raise TrainError(f"training loss became non-finite in epoch {epoch + 1} (step "
                                     f"{state['global_step']}); lower the lr, set max_grad_norm, or check the data")
                window = (total - window_loss) / max(1, n_local - window_n)
                window_loss, window_n = total, n_local
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{window:.4f}", lr=f"{lr:.2e}")
                if state["global_step"] % cfg.log_interval == 0:
                    self._info("epoch %d step %d (%d/%d) loss %.4f lr %.3g grad_norm %.3g", epoch + 1,
                               state["global_step"], step + 1, n_steps, window, lr, grad_norm)
        bar.close()
        totals = torch.tensor([float(loss_sum), float(n_local), *extra_sum.values()], dtype=torch.float64,
                              device=self._coll_device)
        D.all_reduce(totals)
        stats = {"train_loss": float(totals[0] / totals[1])}
        stats.update({f"train_{k}": float(v / totals[1]) for k, v in zip(extra_sum, totals[2:])})
        return stats

    # ---- dev selection -----------------------------------------------------
    def _dev_metrics(self) -> dict:
        if self.dev_dataset is None:
            return {}
        cfg = self.cfg
        bs = cfg.eval_batch_size or cfg.batch_size
        batches = [list(range(i, min(i + bs, len(self.dev_dataset)))) for i in range(0, len(self.dev_dataset), bs)]
        loader = DataLoader(self.dev_dataset, batch_sampler=batches, collate_fn=self.collate_fn,
                            num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        self.model.eval()
        metrics: dict = {}
        with torch.no_grad():
            if self.evaluate is not None:
                metrics = self.evaluate(self.model, loader)
                if not isinstance(metrics, dict):
                    raise TrainError(f"evaluate must return a dict of floats, got {type(metrics).__name__}")
                try:
                    # an undefined metric (None: e.g. CCC of a constant gold) is NaN: logged, never selected
                    metrics = {str(k): float("nan") if v is None else float(v) for k, v in metrics.items()}
                except (TypeError, ValueError) as e:
                    raise TrainError(f"evaluate must return a dict of floats: {e}") from e
            if cfg.select_metric == "loss" and "loss" not in metrics:
                total, n = 0.0, 0
                for b, batch in zip(batches, loader):
                    out = self.compute_loss(self.model, to_device(batch, self.device))
                    total += float((out[0] if isinstance(out, tuple) else out).float()) * len(b)
                    n += len(b)
                metrics["loss"] = total / max(n, 1)
        self.model.train()
        if cfg.select_metric not in metrics:
            raise TrainError(f"select_metric {cfg.select_metric!r} is not among the dev metrics "
                             f"{sorted(metrics)} returned by evaluate")
        return metrics

    def _select(self, dev: dict, state: dict) -> bool:
        """Record the epoch as best if its dev metric improved (strictly); no dev set: the last epoch."""
        epoch = state["epoch"]
        if self.dev_dataset is None:
            state["best"] = {"epoch": epoch, "value": None, "metrics": {}}
            return True
        value = dev[self.cfg.select_metric]
        if not math.isfinite(value):
            log.warning("epoch %d: dev %s is %s; not a candidate", epoch, self.cfg.select_metric, value)
            return False
        best = state["best"]
        better = best is None or (value < best["value"] if self.cfg.select_mode == "min" else value > best["value"])
        if better:
            state["best"] = {"epoch": epoch, "value": value, "metrics": dict(dev)}
        return better

    def _collapse_reason(self, state: dict) -> str | None:
        """Why the run learned nothing, or None.

        Over all epochs the best dev value stayed within ``chance_margin`` of
        ``chance_metric`` (or on its wrong side), or the selected epoch's dev
        outputs were constant: a model that must not be passed on silently.
        """
        best = state["best"]
        if best is None or best["value"] is None:  # no dev set: nothing to judge by
            return None
        if best["metrics"].get("constant_outputs"):
            return f"dev outputs of the selected epoch {best['epoch']} were constant"
        if self.chance_metric is None:
            return None
        c, margin, n = self.chance_metric, self.chance_margin, len(state["history"])
        epochs = f"{n} epoch{'s' if n != 1 else ''}"
        if self.cfg.select_mode == "max" and best["value"] <= c + margin:
            return f"dev {self.cfg.select_metric} never above chance {c:.3g} (+{margin:g}) in {epochs}"
        if self.cfg.select_mode == "min" and best["value"] >= c - margin:
            return f"dev {self.cfg.select_metric} never below chance {c:.3g} (-{margin:g}) in {epochs}"
        return None


def _fmt(metrics: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:.4f}" for k, v in sorted(metrics.items())) + "}"
