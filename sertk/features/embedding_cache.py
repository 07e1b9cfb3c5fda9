"""Frozen-encoder layer features, computed once per utterance and shared by every set and fold.

A frozen encoder gives the same features every epoch, so SELM training and the
linear probe read them from disk instead of running the encoder. A store is
keyed by the encoder settings only (spec with the layer, the digest of its
weights, sample rate, audio crop, on-disk format); inside it each utterance's
tensor is named by its content key (``sertk.data.audio.content_key``: the
audio file's real path, segment span, size and mtime; not the utterance id),
so the train/dev/test sets of every fold share one computation of each
utterance, and a replaced or re-segmented file gets a new key and is computed
again::

    dump/encoder_feats/<store>/shards/shard-<h>.safetensors  # content key -> [T, D] float32, ~SHARD_BYTES per file
    dump/encoder_feats/<store>/<set>/index.json              # written last: utt -> [shard, content key], what the key is

The cache scales with the data, not with RAM: features stream to disk a shard
at a time while the encoder runs (at most one shard is buffered), and the
result is a lazy :class:`ShardedFeatures` mapping (utt -> tensor) that reads
one utterance's tensor per access. A shard is named by the digest of the keys
it holds and renamed into place whole, so concurrent runs never clash, and a
set's ``index.json``, its commit marker, is written atomically after the last
shard, so an interrupted run never leaves an index that reads as complete;
the next run keeps the shards already written and computes only the rest
(only utterances whose content key no shard holds are ever computed). A read
gives the shard pages it touched back to the kernel, so reading a set holds
one tensor, not the shards it reads (benchmarks/bench_real_lengths.py).

A stored tensor is a function of its utterance and the store alone, never of
the job that filled the store: on CPU the encoder runs on one utterance at a
time (``encoder_batch``), since inside a batch an utterance's values move by
~1e-6 with its padding and its companions -- which depend on which set, so
which job, filled the store first -- and that moved figures. The store is
named by the key (``cache_key``) on CPU. The encoder runs on the GPU when
there is one (``resolve_device("auto")``) in float32; there a config's
``cache_batch_size`` batches utterances by length for speed, in a store of its
own (``<key>-cuda-b<N>``: GPU values are not CPU values), whose values then
depend (~1e-6) on which utterances shared a batch; ``cache_batch_size: 1``
(the default) makes GPU figures independent of job order too. Padding itself
never reaches a stored value: a group-norm encoder (wav2vec2-base, HuBERT/WavLM
base) runs its conv front end on each utterance unpadded
(``sertk.models.encoder.unpadded_front_end``), and its key says so
(``front_end``), so a store of the padded values it held before is not reused.

``frozen_encoder`` builds the encoder and the weights digest the key needs and
``encoder_features`` reads (or fills) the store: SELM and the linear probe
share them, so the same encoder layer over the same audio is computed once.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import mmap
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from sertk.common.fileio import atomic_path, hash_obj, sha256_file, write_json_atomic
from sertk.data.audio import utterance_sources
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.models.encoder import SpeechEncoder, pads_leak
from sertk.train.inference import length_sorted_batches, model_device, resolve_device, to_device

log = logging.getLogger(__name__)
FORMAT = 4  # 1: one feats.safetensors + meta.json per set; 2: shards + index.json per set; 3: shared store;
#            4: each utterance computed alone on CPU (format-3 stores hold batched values: not reused)
SHARD_BYTES = 128 << 20  # RAM buffered while caching is at most about one shard (plus one batch)
OPEN_SHARDS = 4  # file handles a reader keeps
INDEX = "index.json"
SHARD_GLOB = "shard-*.safetensors"
SHARDS = "shards"  # the store's shard folder, beside the sets' index folders


class FeatureCacheError(RuntimeError):
    """A cache entry that cannot be read; the message names the file."""


def cache_key(encoder_spec: dict, weights_digest: str | None, sample_rate: int, max_duration: float | None,
              front_end: str | None = None) -> str:
    """Digest naming one store (encoder + weights + layer + sample rate + crop + format); no data in it.

    ``front_end`` (:func:`front_end`) names how a group-norm encoder's front end ran; None (every
    other encoder) leaves the key as it was, so their stores are reused."""
    return hash_obj({"encoder": encoder_spec, "weights": weights_digest, "sample_rate": sample_rate,
                     "max_duration": max_duration, "format": FORMAT,
                     **({"front_end": front_end} if front_end else {})})[:16]


def front_end(encoder: torch.nn.Module) -> str | None:
    """``"unpadded"`` for an encoder whose front end runs on each utterance alone (group norm), else None."""
    model = getattr(encoder, "model", encoder)
    return "unpadded" if pads_leak(getattr(model, "config", None)) else None


def encoder_batch(batch_size: int, device: torch.device) -> int:
    """Utterances per encoder call: one on CPU (values independent of what else the store was filled
    with); on a GPU ``batch_size`` (a config's ``cache_batch_size``), for speed."""
    return 1 if device.type == "cpu" else max(1, int(batch_size))


def store_name(key: str, device: torch.device, batch: int) -> str:
    """The store of ``key`` on ``device`` at ``batch`` utterances per call: the key itself on CPU
    (one at a time); elsewhere the device and the batch name it too (their values differ)."""
    return key if device.type == "cpu" else f"{key}-{device.type}-b{batch}"


# ------------------------------------------------------------------ compute --


def compute_features(encoder: torch.nn.Module, dataset: AudioDataset, batch_size: int = 1,
                     device: str | torch.device | None = None, skip: Iterable[str] = (),
                     num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Per batch, utt -> [frames, dim] float32 CPU features of a (frozen) SpeechEncoder over ``dataset``.

    A batch holds ``encoder_batch(batch_size, device)`` utterances: one on CPU,
    so an utterance's features are the encoder's on it alone. On a GPU batches
    are cut in length order (little padding) over the whole set, so a restart
    that ``skip``s the utterances already stored runs the same batches as an
    uninterrupted run. They run longest first: in ascending order every batch
    needs more memory than any before it and the allocator's heap (so the
    process's RSS) grows with the set; descending, later batches reuse the
    space. The encoder runs on ``device`` (default: the GPU when there is one)
    and is moved back where it was when the iterator ends.
    """
    dev = resolve_device("auto") if device is None else torch.device(device)
    skip = frozenset(skip)
    batches = [b for b in reversed(length_sorted_batches(dataset.durations(), encoder_batch(batch_size, dev)))
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
    """Buffers features (content key -> tensor) and writes them as shards of about ``max_bytes``.

    A shard is cut only between batches, named by the digest of its keys (two
    runs writing the same keys write the same file, so concurrent runs never
    clash) and renamed into place whole, so any shard on disk holds complete
    batches a restart can keep.
    """

    def __init__(self, d: Path, max_bytes: int):
        self.d, self.max_bytes = d, int(max_bytes)
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
        name = f"shard-{hashlib.sha256(chr(10).join(sorted(self.buf)).encode()).hexdigest()[:16]}.safetensors"
        with atomic_path(self.d / name) as tmp:
            save_file(self.buf, str(tmp))
        self.written[name] = list(self.buf)
        self.buf, self.nbytes = {}, 0


def _is_shard_name(name: str) -> bool:
    mid = name[len("shard-"):-len(".safetensors")]
    return bool(mid) and all(c in "0123456789abcdef" for c in mid)


def _stored_shards(d: Path) -> dict[str, list[str]]:
    """Shard -> content keys of the shards already in the store ``d`` (complete or interrupted runs')."""
    out = {}
    for p in sorted(d.glob(SHARD_GLOB)):
        if not _is_shard_name(p.name):
            continue  # not a name this module writes
        try:
            with safe_open(str(p), framework="pt") as f:
                out[p.name] = list(f.keys())
        except Exception as e:  # noqa: BLE001 - any unreadable shard is recomputed, never trusted
            log.warning("%s: unreadable (%s): computing its utterances again", p, e)
            p.unlink(missing_ok=True)
    return out


def _key2shard(shards: dict[str, list[str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s, keys in shards.items():  # name order: a key in two shards (concurrent runs) maps to the first
        for k in keys:
            out.setdefault(k, s)
    return out


def _fill(store: Path, encoder: torch.nn.Module, dataset: AudioDataset, utt2key: dict[str, str], batch_size: int,
          device, shard_bytes: int) -> dict[str, str]:
    """Compute the content keys no stored shard holds (one utterance each), streaming them into new
    shards; returns content key -> shard over the whole store."""
    store.mkdir(parents=True, exist_ok=True)
    key2shard = _key2shard(_stored_shards(store))
    todo: dict[str, str] = {}  # content key -> the utterance that computes it (first one wins)
    for u in dataset.utts:
        k = utt2key[u]
        if k not in key2shard and k not in todo:
            todo[k] = u
    if key2shard:
        log.info("%s: %d utterance(s) of %d already stored, computing %d", store,
                 sum(utt2key[u] in key2shard for u in dataset.utts), len(dataset.utts), len(todo))
    if not todo:
        return key2shard
    compute = set(todo.values())
    writer = _ShardWriter(store, shard_bytes)
    skip = [u for u in dataset.utts if u not in compute]
    with contextlib.closing(compute_features(encoder, dataset, batch_size, device, skip=skip)) as batches:
        for feats in batches:
            writer.add({utt2key[u]: t for u, t in feats.items()})
    writer.flush()
    for s, keys in writer.written.items():
        for k in keys:
            key2shard.setdefault(k, s)
    return key2shard


# --------------------------------------------------------------------- read --


def _madvise():
    """libc's madvise on Linux (None elsewhere: reads then keep the pages they touched, as before)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_MADVISE = _madvise()
MADV_DONTNEED = 4  # Linux: drop the pages; a private file mapping's clean pages fault back in from the file


def _private_file_mapping(addr: int, path: Path) -> tuple[int, int] | None:
    """(start, end) of the mapping holding ``addr`` when it is this process's private mapping of ``path``
    (/proc/self/maps), else None."""
    real = os.path.realpath(path)
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return (lo, hi) if len(parts) == 6 and parts[1][3:4] == "p" and parts[5] == real else None
    return None


class ShardedFeatures(Mapping):
    """utt -> [T, D] float32 tensor, read from its shard on access (nothing is loaded up front).

    ``utt2loc`` maps an utterance to (shard, tensor name: its content key) in the
    store ``d``. Keeps at most ``OPEN_SHARDS`` shard handles; pickles without
    them (DataLoader workers reopen).

    A handle maps its whole shard (safetensors' ``safe_open`` for torch: a
    private memory map of the file) and ``get_tensor`` returns a view of it, so
    every page a read touched would stay in the process's RSS while the handle is
    open: reading a set would hold up to ``OPEN_SHARDS`` whole shards (4 x
    ``SHARD_BYTES``: 512 MiB) and a probe's or SELM's peak RSS would grow with
    the store. A read therefore returns a copy and gives the pages under it back
    to the kernel (``MADV_DONTNEED``; only after /proc/self/maps shows them to be
    a private map of the shard, whose pages are clean: a later read faults the
    same bytes in again from the file). Values are the stored bytes either way.
    """

    def __init__(self, d: str | Path, utt2loc: dict[str, tuple[str, str]], utts: list[str] | None = None):
        self.d = Path(d)
        self._utt2loc = utt2loc
        self._utts = list(utt2loc) if utts is None else list(utts)
        self._handles: OrderedDict = OrderedDict()
        self._maps: dict[str, tuple[int, int] | None] = {}  # shard -> its open handle's mapping (None: not one)
        self._pid = os.getpid()

    def __getitem__(self, utt: str) -> torch.Tensor:
        if utt not in self._utt2loc:
            raise KeyError(utt)
        shard, key = self._utt2loc[utt]
        try:
            view = self._handle(shard).get_tensor(key)
        except Exception as e:  # noqa: BLE001 - name the file whatever safetensors raised
            raise FeatureCacheError(f"{self.d / shard}: cannot read utterance {utt!r} (key {key}): {e}") from e
        return self._release(shard, view)

    def _release(self, shard: str, view: torch.Tensor) -> torch.Tensor:
        """A copy of ``view``; the pages of the shard's mapping under it are handed back to the kernel."""
        out = view.clone()
        nbytes = view.numel() * view.element_size()
        if _MADVISE is None or not nbytes:
            return out
        page = mmap.PAGESIZE
        start = view.data_ptr()
        lo, hi = start - start % page, -(-(start + nbytes) // page) * page
        span = self._maps.get(shard, ())
        if span == () or (span is not None and not (span[0] <= lo and hi <= span[1])):
            span = self._maps[shard] = _private_file_mapping(start, self.d / shard)
        if span is not None and span[0] <= lo and hi <= span[1]:
            _MADVISE(lo, hi - lo, MADV_DONTNEED)
        return out

    def __contains__(self, utt) -> bool:
        return utt in self._utt2loc

    def __iter__(self) -> Iterator[str]:
        return iter(self._utts)

    def __len__(self) -> int:
        return len(self._utts)

    def _handle(self, shard: str):
        """An open shard (least recently used ones are closed), fresh in a forked worker."""
        if self._pid != os.getpid():
            self._handles, self._maps, self._pid = OrderedDict(), {}, os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            path = self.d / shard
            if not path.is_file():
                raise FeatureCacheError(f"{path}: shard missing (rerun to recompute its utterances)")
            self._handles[shard] = safe_open(str(path), framework="pt")
            self._maps.pop(shard, None)  # a new handle maps the file anew
            while len(self._handles) > OPEN_SHARDS:
                self._maps.pop(self._handles.popitem(last=False)[0], None)
        return self._handles[shard]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": OrderedDict(), "_maps": {}}


def _read_index(d: Path, store: Path) -> dict[str, tuple[str, str]] | None:
    """A set's utt -> (shard, content key) when its index is a complete one of this format, else None."""
    path = d / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        utts = {u: (str(s), str(k)) for u, (s, k) in index["utts"].items()} if index.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s): recomputing", path, e)
        return None
    if utts is None:
        log.warning("%s: format %s, expected %s: recomputing", path, index.get("format"), FORMAT)
        return None
    missing = sorted({s for s, _ in utts.values() if not (store / s).is_file()})
    if missing:
        log.warning("%s: %d shard(s) missing (e.g. %s): recomputing them", path, len(missing), missing[0])
        return None
    return utts


def _write_index(d: Path, utt2loc: dict[str, tuple[str, str]], set_name: str, key: str, meta: dict | None) -> None:
    """The commit marker: written last and atomically, it makes the set's view complete."""
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / INDEX, {**(meta or {}), "format": FORMAT, "set": set_name, "key": key, "store": SHARDS,
                                  "dtype": "float32", "utterances": len(utt2loc),
                                  "shards": sorted({s for s, _ in utt2loc.values()}),
                                  "utts": {u: list(loc) for u, loc in utt2loc.items()}})


def cached_features(root: str | Path, key: str, set_name: str, encoder: torch.nn.Module, dataset: AudioDataset,
                    meta: dict | None = None, batch_size: int = 1, device: str | torch.device | None = None,
                    shard_bytes: int = SHARD_BYTES) -> ShardedFeatures:
    """Features of ``dataset`` (lazy, dataset order) from the store ``root/<store>/shards``, viewed through
    ``root/<store>/set_name/index.json``; utterances the store lacks are computed and stored first.

    ``<store>`` is :func:`store_name` of ``key`` on the device the encoder runs on (``device``; default
    the GPU when there is one) at ``encoder_batch(batch_size)`` utterances per call.
    """
    dev = resolve_device("auto") if device is None else torch.device(device)
    batch = encoder_batch(batch_size, dev)
    name = store_name(key, dev, batch)
    store, d = Path(root) / name / SHARDS, Path(root) / name / set_name
    meta = {**(meta or {}), "device": dev.type, "encoder_batch": batch}
    utt2key = {s.utt: s.key for s in utterance_sources(dataset.datadir)}
    index = _read_index(d, store)
    if index is not None:
        stale = [u for u in dataset.utts if u not in index or index[u][1] != utt2key[u]]
        if not stale:
            log.info("encoder features of %s: reusing %s", set_name, d)
            return ShardedFeatures(store, index, dataset.utts)
        log.info("%s: %d utterance(s) new or changed (e.g. %s): updating", d / INDEX, len(stale), stale[0])
    key2shard = _fill(store, encoder, dataset, utt2key, batch, dev, shard_bytes)
    utt2loc = {u: (key2shard[utt2key[u]], utt2key[u]) for u in dataset.utts}
    _write_index(d, utt2loc, set_name, name, meta)
    return ShardedFeatures(store, utt2loc, dataset.utts)


def frame_stats(frames: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over every frame of ``frames`` ([T, D] tensors, e.g. a training set's cached
    features), accumulated in float64 in the order given: the statistics a trained projector standardises
    frozen features with."""
    n, total, squares = 0, None, None
    for f in frames:
        f = f.double()
        total = f.sum(0) if total is None else total + f.sum(0)
        squares = (f * f).sum(0) if squares is None else squares + (f * f).sum(0)
        n += f.shape[0]
    if not n:
        raise ValueError("frame_stats: no frames")
    mean = total / n
    var = (squares / n - mean * mean).clamp(min=0) * n / max(n - 1, 1)
    return mean.float(), var.sqrt().float()


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
                     dataset: AudioDataset, set_name: str, batch_size: int = 1,
                     device: str | torch.device | None = None, shard_bytes: int = SHARD_BYTES) -> ShardedFeatures:
    """``cached_features`` of a frozen encoder over a data dir's dataset, in the store of these encoder
    settings (``batch_size``: a config's ``cache_batch_size``, used on a GPU only)."""
    fe = front_end(encoder)
    key = cache_key(spec, weights_digest, dataset.sample_rate, dataset.max_duration, fe)
    meta = {"encoder": spec, "weights_sha256": weights_digest, "sample_rate": dataset.sample_rate,
            "max_duration": dataset.max_duration, "data": str(dataset.datadir.path),
            **({"front_end": fe} if fe else {})}
    return cached_features(root, key, set_name, encoder, dataset, meta, batch_size=batch_size, device=device,
                           shard_bytes=shard_bytes)
