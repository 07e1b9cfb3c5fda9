"""Frozen-encoder layer features, computed once per data dir and reused.

A frozen encoder gives the same features every epoch, so SELM training and the
linear probe read them from disk instead of running the encoder. A cache entry
is keyed by the encoder spec, the digest of its weights, the layer, the audio
crop, the data dir's content digest and the on-disk format, so any change
recomputes it and an unchanged one is reused::

    dump/encoder_feats/<key>/<set>/shard-00000.safetensors  # utt -> [T, D] float32, ~SHARD_BYTES per file
    dump/encoder_feats/<key>/<set>/shard-00001.safetensors
    dump/encoder_feats/<key>/<set>/index.json               # written last: format, shard -> utts, what the key is

The cache scales with the set, not with RAM: features stream to disk a shard
at a time while the encoder runs (at most one shard is buffered), and the
result is a lazy :class:`ShardedFeatures` mapping that reads one utterance's
tensor per access. Each shard is renamed into place whole and ``index.json``,
the commit marker, is written atomically after the last one, so an
interrupted run never leaves an entry that reads as complete; the next run
keeps the shards already written and computes only the rest.

The encoder runs on the GPU when there is one (``resolve_device("auto")``)
in float32, batched by length; the features do not depend on the batch (the
encoder masks padding), so CPU results equal a direct call of the encoder.

``frozen_encoder`` builds the encoder and the weights digest the key needs and
``encoder_features`` reads (or fills) the entry: SELM and the linear probe
share them, so the same encoder layer over the same data is computed once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from sertk.common.fileio import atomic_path, hash_obj, hash_paths, sha256_file, write_json_atomic
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.models.encoder import SpeechEncoder
from sertk.train.inference import length_sorted_batches, model_device, resolve_device, to_device

log = logging.getLogger(__name__)
DATA_FILES = ("wav.scp", "segments", "utt2spk")
FORMAT = 2  # 1: one feats.safetensors + meta.json per set; 2: shards + index.json
SHARD_BYTES = 128 << 20  # RAM buffered while caching is at most about one shard (plus one batch)
OPEN_SHARDS = 4  # file handles a reader keeps
INDEX = "index.json"
SHARD_GLOB = "shard-*.safetensors"


class FeatureCacheError(RuntimeError):
    """A cache entry that cannot be read; the message names the file."""


def cache_key(encoder_spec: dict, weights_digest: str | None, datadir: str | Path, sample_rate: int,
              max_duration: float | None) -> str:
    """Digest naming one cache entry (encoder + weights + layer + crop + data + format)."""
    d = Path(datadir)
    data_digest = hash_paths([d / f for f in DATA_FILES if (d / f).exists()], content=True)
    return hash_obj({"encoder": encoder_spec, "weights": weights_digest, "data": data_digest,
                     "sample_rate": sample_rate, "max_duration": max_duration, "format": FORMAT})[:16]


# ------------------------------------------------------------------ compute --


def compute_features(encoder: torch.nn.Module, dataset: AudioDataset, batch_size: int = 8,
                     device: str | torch.device | None = None, skip: Iterable[str] = (),
                     num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Per batch, utt -> [frames, dim] float32 CPU features of a (frozen) SpeechEncoder over ``dataset``.

    Batches are cut in length order (little padding) over the whole set, so a
    restart that ``skip``s the utterances already stored runs the same batches
    as an uninterrupted run. They run longest first: in ascending order every
    batch needs more memory than any before it and the allocator's heap (so the
    process's RSS) grows with the set; descending, later batches reuse the
    space. The encoder runs on ``device`` (default: the GPU when there is one)
    and is moved back where it was when the iterator ends.
    """
    dev = resolve_device("auto") if device is None else torch.device(device)
    skip = frozenset(skip)
    batches = [b for b in reversed(length_sorted_batches(dataset.durations(), max(1, int(batch_size))))
               if any(dataset.utts[i] not in skip for i in b)]
    if not batches:
        return
    home, was_training = model_device(encoder), encoder.training
    encoder.to(dev).eval()
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_audio, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    try:
        with torch.no_grad():
            for batch in loader:
                b = to_device(batch, dev, non_blocking=True)
                feats, flen = encoder(b["wav"], b["lengths"])
                yield _split_batch(batch["utts"], feats, flen, skip)
    finally:
        encoder.to(home).train(was_training)


def _split_batch(utts: list[str], feats: torch.Tensor, flen: torch.Tensor, skip: frozenset) -> dict[str, torch.Tensor]:
    """Each utterance's valid frames as its own compact CPU tensor (no view of the padded batch)."""
    feats, flen = feats.float().cpu(), flen.cpu()
    return {u: feats[b, :int(flen[b])].clone() for b, u in enumerate(utts) if u not in skip}


class _ShardWriter:
    """Buffers utterance features and writes them as numbered shards of about ``max_bytes``.

    A shard is cut only between batches and renamed into place whole, so any
    shard on disk holds complete batches a restart can keep.
    """

    def __init__(self, d: Path, first: int, max_bytes: int):
        self.d, self.next, self.max_bytes = d, first, int(max_bytes)
        self.buf: dict[str, torch.Tensor] = {}
        self.nbytes = 0
        self.written: dict[str, list[str]] = {}

    def add(self, feats: dict[str, torch.Tensor]) -> None:
        self.buf.update(feats)
        self.nbytes += sum(t.numel() * t.element_size() for t in feats.values())
        if self.nbytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        name = f"shard-{self.next:05d}.safetensors"
        with atomic_path(self.d / name) as tmp:
            save_file(self.buf, str(tmp))
        self.written[name] = list(self.buf)
        self.next += 1
        self.buf, self.nbytes = {}, 0


def _stored_shards(d: Path) -> dict[str, list[str]]:
    """Shard -> utterances of the shards already in ``d`` (a complete or an interrupted run's)."""
    out = {}
    for p in sorted(d.glob(SHARD_GLOB)):
        if not p.name[len("shard-"):-len(".safetensors")].isdigit():
            continue  # not a name this module writes
        try:
            with safe_open(str(p), framework="pt") as f:
                out[p.name] = list(f.keys())
        except Exception as e:  # noqa: BLE001 - any unreadable shard is recomputed, never trusted
            log.warning("%s: unreadable (%s): computing its utterances again", p, e)
            p.unlink()
    return out


def _shard_number(name: str) -> int:
    return int(name[len("shard-"):-len(".safetensors")])


def _fill(d: Path, encoder: torch.nn.Module, dataset: AudioDataset, batch_size: int,
          device, shard_bytes: int) -> dict[str, list[str]]:
    """Compute the utterances no stored shard holds, streaming them into new shards; all shards."""
    d.mkdir(parents=True, exist_ok=True)
    shards = _stored_shards(d)
    done = {u for utts in shards.values() for u in utts}
    if done:
        log.info("%s: keeping %d utterance(s) in %d shard(s) of an earlier run", d, len(done), len(shards))
    writer = _ShardWriter(d, 1 + max((_shard_number(s) for s in shards), default=-1), shard_bytes)
    with contextlib.closing(compute_features(encoder, dataset, batch_size, device, skip=done)) as batches:
        for feats in batches:
            writer.add(feats)
    writer.flush()
    return {**shards, **writer.written}


# --------------------------------------------------------------------- read --


class ShardedFeatures(Mapping):
    """utt -> [T, D] float32 tensor, read from its shard on access (nothing is loaded up front).

    Keeps at most ``OPEN_SHARDS`` shard handles; pickles without them (DataLoader workers reopen).
    """

    def __init__(self, d: str | Path, utt2shard: dict[str, str], utts: list[str] | None = None):
        self.d = Path(d)
        self._utt2shard = utt2shard
        self._utts = list(utt2shard) if utts is None else list(utts)
        self._handles: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def __getitem__(self, utt: str) -> torch.Tensor:
        if utt not in self._utt2shard:
            raise KeyError(utt)
        shard = self._utt2shard[utt]
        try:
            return self._handle(shard).get_tensor(utt)
        except Exception as e:  # noqa: BLE001 - name the file whatever safetensors raised
            raise FeatureCacheError(f"{self.d / shard}: cannot read utterance {utt!r}: {e}") from e

    def __contains__(self, utt) -> bool:
        return utt in self._utt2shard

    def __iter__(self) -> Iterator[str]:
        return iter(self._utts)

    def __len__(self) -> int:
        return len(self._utts)

    def _handle(self, shard: str):
        """An open shard (least recently used ones are closed), fresh in a forked worker."""
        if self._pid != os.getpid():
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            path = self.d / shard
            if not path.is_file():
                raise FeatureCacheError(f"{path}: shard missing (delete {self.d} to recompute)")
            self._handles[shard] = safe_open(str(path), framework="pt")
            while len(self._handles) > OPEN_SHARDS:
                self._handles.popitem(last=False)
        return self._handles[shard]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": OrderedDict()}


def _read_index(d: Path) -> dict | None:
    """The entry's index when it is a complete one of this format, else None (to be (re)computed)."""
    path = d / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s): recomputing", path, e)
        return None
    if index.get("format") != FORMAT:
        log.warning("%s: format %s, expected %s: recomputing", path, index.get("format"), FORMAT)
        return None
    missing = [s for s in index["shards"] if not (d / s).is_file()]
    if missing:
        log.warning("%s: %d shard(s) missing (e.g. %s): recomputing them", path, len(missing), missing[0])
        return None
    return index


def _utt2shard(shards: dict[str, list[str]]) -> dict[str, str]:
    return {u: s for s, utts in shards.items() for u in utts}


def _write_index(d: Path, shards: dict[str, list[str]], set_name: str, key: str, meta: dict | None) -> None:
    """The commit marker: written last and atomically, it makes the entry complete."""
    write_json_atomic(d / INDEX, {**(meta or {}), "format": FORMAT, "set": set_name, "key": key,
                                  "dtype": "float32", "utterances": len(_utt2shard(shards)), "shards": shards})


def cached_features(root: str | Path, key: str, set_name: str, encoder: torch.nn.Module, dataset: AudioDataset,
                    meta: dict | None = None, batch_size: int = 8, device: str | torch.device | None = None,
                    shard_bytes: int = SHARD_BYTES) -> ShardedFeatures:
    """Features of ``dataset`` from ``root/key/set_name`` (lazy, dataset order), computed and stored on first use."""
    d = Path(root) / key / set_name
    index = _read_index(d)
    if index is not None:
        utt2shard = _utt2shard(index["shards"])
        missing = [u for u in dataset.utts if u not in utt2shard]
        if not missing:
            log.info("encoder features of %s: reusing %s", set_name, d)
            return ShardedFeatures(d, utt2shard, dataset.utts)
        log.warning("%s lacks %d utterance(s) (e.g. %s): computing them", d / INDEX, len(missing), missing[0])
    log.info("encoder features of %s: computing %d utterances -> %s", set_name, len(dataset), d)
    shards = _fill(d, encoder, dataset, batch_size, device, shard_bytes)
    _write_index(d, shards, set_name, key, meta)
    return ShardedFeatures(d, _utt2shard(shards), dataset.utts)


# ------------------------------------------------------------------ encoder --


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's named tensors: the cache key of weights that have no file."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frozen_encoder(spec: dict, seed: int = 0, weights: str | Path | None = None) -> tuple[SpeechEncoder, str]:
    """A frozen SpeechEncoder for ``spec`` and the digest of its weights, for ``cache_key``.

    Built under ``seed``, so a randomly initialised (or partly initialised) encoder
    is the same in train and evaluate. ``weights`` (a safetensors file whose
    ``encoder.*`` tensors are this encoder, e.g. another experiment's
    best.safetensors) replaces the built weights and its file digest is the key;
    otherwise the key is the digest of the state, which changes with a new init
    or a new hub revision.
    """
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        encoder = SpeechEncoder({**spec, "freeze": True})
    if weights is not None:
        state = {k[len("encoder."):]: v for k, v in load_file(str(weights)).items() if k.startswith("encoder.")}
        if not state:
            raise ValueError(f"{weights}: holds no 'encoder.*' weights")
        encoder.load_state_dict(state, strict=True)
        digest = sha256_file(weights)
    else:
        digest = state_digest(encoder)
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder, digest


def encoder_features(root: str | Path, encoder: torch.nn.Module, spec: dict, weights_digest: str | None,
                     dataset: AudioDataset, set_name: str, batch_size: int = 8,
                     device: str | torch.device | None = None, shard_bytes: int = SHARD_BYTES) -> ShardedFeatures:
    """``cached_features`` of a frozen encoder over a data dir's dataset, keyed on all that shapes them."""
    datadir = dataset.datadir.path
    key = cache_key(spec, weights_digest, datadir, dataset.sample_rate, dataset.max_duration)
    meta = {"encoder": spec, "weights_sha256": weights_digest, "data": str(datadir)}
    return cached_features(root, key, set_name, encoder, dataset, meta, batch_size=batch_size, device=device,
                           shard_bytes=shard_bytes)
