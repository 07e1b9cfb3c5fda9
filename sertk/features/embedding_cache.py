"""Frozen-encoder layer features, computed once per data dir and reused.

A frozen encoder gives the same features every epoch, so SELM training reads
them from disk instead of running the encoder. A cache entry is keyed by the
encoder spec, the digest of its weights, the layer, the audio crop and the
data dir's content digest, so any change recomputes it and an unchanged one
is reused::

    dump/encoder_feats/<key>/<set>/feats.safetensors   # one [T, D] tensor per utterance
    dump/encoder_feats/<key>/<set>/meta.json           # what the key stands for

``frozen_encoder`` builds the encoder and the weights digest the key needs and
``encoder_features`` reads (or fills) the entry: SELM and the linear probe
share them, so the same encoder layer over the same data is computed once.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sertk.common.fileio import atomic_path, hash_obj, hash_paths, sha256_file, write_json_atomic
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.models.encoder import SpeechEncoder

log = logging.getLogger(__name__)
DATA_FILES = ("wav.scp", "segments", "utt2spk")


def cache_key(encoder_spec: dict, weights_digest: str | None, datadir: str | Path, sample_rate: int,
              max_duration: float | None) -> str:
    """Digest naming one cache entry (encoder + weights + layer + crop + data)."""
    d = Path(datadir)
    data_digest = hash_paths([d / f for f in DATA_FILES if (d / f).exists()], content=True)
    return hash_obj({"encoder": encoder_spec, "weights": weights_digest, "data": data_digest,
                     "sample_rate": sample_rate, "max_duration": max_duration})[:16]


def compute_features(encoder: torch.nn.Module, dataset: AudioDataset, batch_size: int = 8,
                     device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Run a (frozen) SpeechEncoder over a dataset: utt -> [frames, dim] float32.

    Utterances are batched in length order (little padding); the encoder masks
    padding, so each utterance's features do not depend on its batch.
    """
    encoder = encoder.to(device).eval()
    order = sorted(range(len(dataset)), key=lambda i: dataset.durations()[i])
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = collate_audio([dataset[i] for i in order[s:s + batch_size]])
            feats, flen = encoder(batch["wav"].to(device), batch["lengths"].to(device))
            for u, f, n in zip(batch["utts"], feats, flen):
                out[u] = f[:int(n)].float().cpu().contiguous()
    return out


def cached_features(root: str | Path, key: str, set_name: str, encoder: torch.nn.Module, dataset: AudioDataset,
                    meta: dict | None = None, batch_size: int = 8, device: str | torch.device = "cpu"
                    ) -> dict[str, torch.Tensor]:
    """Features of ``dataset`` from ``root/key/set_name``, computed and stored on first use."""
    d = Path(root) / key / set_name
    path = d / "feats.safetensors"
    if path.is_file():
        feats = load_file(str(path))
        missing = [u for u in dataset.utts if u not in feats]
        if not missing:
            log.info("encoder features of %s: reusing %s", set_name, path)
            return {u: feats[u] for u in dataset.utts}
        log.warning("%s lacks %d utterance(s) (e.g. %s): recomputing", path, len(missing), missing[0])
    log.info("encoder features of %s: computing %d utterances -> %s", set_name, len(dataset), path)
    feats = compute_features(encoder, dataset, batch_size, device)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(feats, str(tmp))
    write_json_atomic(d / "meta.json", {"set": set_name, "key": key, "utterances": len(feats), **(meta or {})})
    return feats


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
                     dataset: AudioDataset, set_name: str, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``cached_features`` of a frozen encoder over a data dir's dataset, keyed on all that shapes them."""
    datadir = dataset.datadir.path
    key = cache_key(spec, weights_digest, datadir, dataset.sample_rate, dataset.max_duration)
    meta = {"encoder": spec, "weights_sha256": weights_digest, "data": str(datadir)}
    return cached_features(root, key, set_name, encoder, dataset, meta, batch_size=batch_size)
