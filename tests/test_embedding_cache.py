"""Frozen-encoder feature cache: equals the encoder on each utterance alone (whatever filled the store),
streams to shards, reuses, survives interruption, reads lazily."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from sertk.data.audio import utterance_sources
from sertk.data.datadir import DataDir
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.features import embedding_cache as ec
from fixtures_corpora import noise_dataset
from zoo_fixtures import TINY_WAV2VEC2

SPEC = {**TINY_WAV2VEC2, "layer": 1}
SECONDS = [0.9, 0.4, 1.3, 0.6, 0.6, 1.1, 0.3, 0.8, 1.0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return noise_dataset(tmp_path_factory.mktemp("cache_corpus"), SECONDS, 3)


@pytest.fixture(scope="module")
def encoder():
    enc, digest = ec.frozen_encoder(SPEC, seed=0)
    return enc, digest


def _entry(tmp_path, encoder, dataset, **kw):
    enc, digest = encoder
    return ec.encoder_features(tmp_path / "feats", enc, SPEC, digest, dataset, "set", batch_size=2,
                               device="cpu", **kw)


def _entry_dir(tmp_path, name="set"):
    (d,) = (tmp_path / "feats").glob(f"*/{name}")
    return d


def _store_dir(tmp_path):
    (d,) = (tmp_path / "feats").glob(f"*/{ec.SHARDS}")
    return d


def _batched_reference(enc, dataset, batch_size=2):
    """The cache's former computation: length-sorted batches, valid frames per utterance."""
    order = sorted(range(len(dataset)), key=lambda i: dataset.durations()[i])
    out = {}
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            b = collate_audio([dataset[i] for i in order[s:s + batch_size]])
            feats, flen = enc(b["wav"], b["lengths"])
            out.update({u: f[:int(n)] for u, f, n in zip(b["utts"], feats, flen)})
    return out


def _alone_reference(enc, dataset):
    """The encoder on each utterance alone: what the cache must hold, bit for bit."""
    out = {}
    with torch.no_grad():
        for i, u in enumerate(dataset.utts):
            feats, n = enc(dataset[i]["wav"][None], torch.tensor([len(dataset[i]["wav"])]))
            out[u] = feats[0, :int(n[0])]
    return out


def test_cache_equals_encoder_outputs(tmp_path, encoder, dataset):
    feats = _entry(tmp_path, encoder, dataset, shard_bytes=1)  # one shard per batch
    enc, _ = encoder
    assert list(feats) == dataset.utts and len(feats) == len(SECONDS)
    alone, batched = _alone_reference(enc, dataset), _batched_reference(enc, dataset)
    for u in dataset.utts:
        assert feats[u].dtype == torch.float32 and feats[u].shape[1] == enc.hidden_size
        assert torch.equal(feats[u], alone[u]), u  # bit-identical to the encoder on the utterance alone
        torch.testing.assert_close(feats[u], batched[u], atol=1e-5, rtol=1e-4)  # batches: padding's rounding
    d, store = _entry_dir(tmp_path), _store_dir(tmp_path)
    assert d.parent == store.parent  # one store per encoder setting, each set an index into it
    index = json.loads((d / ec.INDEX).read_text())
    assert index["format"] == ec.FORMAT and index["utterances"] == len(SECONDS)
    assert index["device"] == "cpu" and index["encoder_batch"] == 1  # cache_batch_size 2: a GPU setting
    assert list(index["utts"]) == dataset.utts and all((store / s).is_file() for s, _ in index["utts"].values())
    assert len(index["shards"]) == 9 == len(list(store.glob(ec.SHARD_GLOB)))  # 9 utterances, one at a time
    assert not list(d.glob(ec.SHARD_GLOB))


def _subset(dataset, root, name, idx):
    """A data dir over some of ``dataset``'s audio files (the same content keys), in id order."""
    dataset.datadir.subset([dataset.utts[i] for i in idx]).write(root / name)
    return AudioDataset(root / name, label_map=None, targets=())


def test_a_stored_tensor_does_not_depend_on_what_filled_the_store(tmp_path, encoder, dataset):
    """Issue 20: two sets sharing utterances, filled in either order, by jobs with other cache_batch_size
    settings (SELM's and a probe's), give every utterance the tensors of a store filled with it alone."""
    enc, digest = encoder
    first, second = _subset(dataset, tmp_path, "first", range(0, 6)), _subset(dataset, tmp_path, "second", range(3, 9))

    def fill(root, *sets):
        out = {}
        for (ds, batch) in sets:
            view = ec.encoder_features(tmp_path / root, enc, SPEC, digest, ds, ds.datadir.path.name,
                                       batch_size=batch, device="cpu")
            out.update({u: view[u] for u in view})
        return out

    one = fill("one", (first, 8), (second, 3))
    other = fill("other", (second, 16), (first, 2))
    alone = {u: fill(f"alone_{u}", (_subset(dataset, tmp_path / "single", u, [i]), 8))[u]
             for i, u in enumerate(dataset.utts)}
    for u in dataset.utts:
        assert torch.equal(one[u], alone[u]) and torch.equal(other[u], alone[u]), u


def test_second_call_reuses_without_the_encoder(tmp_path, encoder, dataset, monkeypatch):
    first = _entry(tmp_path, encoder, dataset)
    want = {u: first[u] for u in first}

    def boom(*a, **k):
        raise AssertionError("the encoder ran although its features are cached")

    monkeypatch.setattr(ec, "compute_features", boom)
    again = _entry(tmp_path, encoder, dataset)
    assert list(again) == list(want) and all(torch.equal(again[u], want[u]) for u in want)


def test_interrupted_run_is_never_complete_and_the_next_keeps_its_shards(tmp_path, encoder, dataset, monkeypatch):
    real = ec.compute_features

    def dies_after_two_batches(*a, **k):
        for n, batch in enumerate(real(*a, **k)):
            if n == 2:
                raise KeyboardInterrupt("killed mid-set")
            yield batch

    monkeypatch.setattr(ec, "compute_features", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        _entry(tmp_path, encoder, dataset, shard_bytes=1)
    store = _store_dir(tmp_path)
    d = store.parent / "set"
    assert not (d / ec.INDEX).exists()  # nothing reads this set as complete
    kept = ec._stored_shards(store)
    assert len(kept) == 2 and not list(store.glob(".*"))  # whole shards, no temp file
    assert ec._read_index(d, store) is None
    key2utt = {s.key: s.utt for s in utterance_sources(dataset.datadir)}

    skipped = []

    def spy(*a, **k):
        skipped.append(set(k["skip"]))
        yield from real(*a, **k)

    monkeypatch.setattr(ec, "compute_features", spy)
    feats = _entry(tmp_path, encoder, dataset, shard_bytes=1)
    assert skipped[0] == {key2utt[k] for keys in kept.values() for k in keys}  # kept shards are not computed again
    ref = _alone_reference(encoder[0], dataset)
    assert list(feats) == dataset.utts and all(torch.equal(feats[u], ref[u]) for u in dataset.utts)
    assert json.loads((d / ec.INDEX).read_text())["utterances"] == len(SECONDS)


class _CountingOpen:
    """safe_open that counts opened shards and tensors read."""

    def __init__(self, monkeypatch):
        self.opened, self.reads = [], 0
        real = ec.safe_open
        outer = self

        class Handle:
            def __init__(self, path, framework):
                outer.opened.append(path)
                self.h = real(path, framework=framework)

            def get_tensor(self, name):
                outer.reads += 1
                return self.h.get_tensor(name)

        monkeypatch.setattr(ec, "safe_open", Handle)


def test_mapping_is_lazy(tmp_path, encoder, dataset, monkeypatch):
    _entry(tmp_path, encoder, dataset, shard_bytes=1)
    counter = _CountingOpen(monkeypatch)
    feats = _entry(tmp_path, encoder, dataset)  # reused: the index only
    assert len(feats) == len(SECONDS) and list(feats.keys()) == dataset.utts and dataset.utts[0] in feats
    assert "nope" not in feats and counter.opened == [] and counter.reads == 0
    one = feats[dataset.utts[3]]
    assert counter.reads == 1 and len(counter.opened) == 1 and one.ndim == 2
    for u in feats:
        feats[u]
    assert counter.reads == 1 + len(SECONDS) and len(feats._handles) <= ec.OPEN_SHARDS
    with pytest.raises(KeyError):
        feats["nope"]
    clone = pickle.loads(pickle.dumps(feats))  # DataLoader workers: handles are not pickled
    assert torch.equal(clone[dataset.utts[3]], one)


def test_missing_shard_is_named_then_recomputed(tmp_path, encoder, dataset):
    feats = _entry(tmp_path, encoder, dataset, shard_bytes=1)
    d, store = _entry_dir(tmp_path), _store_dir(tmp_path)
    locs = json.loads((d / ec.INDEX).read_text())["utts"]
    utt, (name, _) = next(iter(locs.items()))
    (store / name).unlink()
    utts = [u for u, (s, _) in locs.items() if s == name]
    with pytest.raises(ec.FeatureCacheError, match=name):
        feats[utt]
    again = _entry(tmp_path, encoder, dataset, shard_bytes=1)  # the index no longer reads as complete
    assert all(u in again for u in dataset.utts) and again[utts[0]].shape[1] == encoder[0].hidden_size


def test_format_is_in_the_key_and_old_entries_are_not_read(tmp_path, encoder, dataset):
    enc, digest = encoder
    key = ec.cache_key(SPEC, digest, 16000, None)
    assert key != ec.cache_key(SPEC, digest, 8000, None) != ec.cache_key(SPEC, digest, 16000, 4.0)
    assert key != ec.cache_key({**SPEC, "layer": 0}, digest, 16000, None) != ec.cache_key(SPEC, "w", 16000, None)
    d = tmp_path / "feats" / key / "set"
    d.mkdir(parents=True)
    (d / "feats.safetensors").write_bytes(b"format 1")  # an old single-file entry, here unreadable
    (d / ec.INDEX).write_text(json.dumps({"format": 1, "shards": {}}))
    feats = _entry(tmp_path, encoder, dataset)
    assert len(feats) == len(SECONDS) and json.loads((d / ec.INDEX).read_text())["format"] == ec.FORMAT


class _Counting(torch.nn.Module):
    """The encoder, counting the utterances it runs on (batches of one: one row per utterance)."""

    def __init__(self, enc):
        super().__init__()
        self.enc, self.hidden_size, self.rows = enc, enc.hidden_size, 0

    def forward(self, wav, lengths):
        self.rows += wav.shape[0]
        return self.enc(wav, lengths)


def test_sets_share_the_store_and_a_changed_file_is_computed_again(tmp_path, encoder):
    """Two folds over the same audio: each utterance is computed once, whatever its id; a rewritten file again."""
    rng = np.random.default_rng(1)
    wavs = []
    for i in range(5):
        p = tmp_path / "wav" / f"u{i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(int((0.4 + 0.2 * i) * 16000))).astype(np.float32), 16000)
        wavs.append(p)

    def fold(name, idx, prefix="u"):
        t = {"wav.scp": {f"{prefix}{i}": str(wavs[i]) for i in idx}, "utt2spk": {f"{prefix}{i}": "s" for i in idx}}
        DataDir(tables=t).write(tmp_path / name)
        return AudioDataset(tmp_path / name, label_map=None, targets=())

    enc, digest = encoder
    counting = _Counting(enc)

    def feats(ds, name):
        return ec.encoder_features(tmp_path / "feats", counting, SPEC, digest, ds, name, batch_size=1, device="cpu")

    a = feats(fold("fold1_train", [0, 1, 2, 3]), "fold1_train")
    assert counting.rows == 4
    b = feats(fold("fold2_train", [2, 3, 4], prefix="x"), "fold2_train")  # other ids, same audio for 2 and 3
    assert counting.rows == 5  # only utterance 4 was new
    assert torch.equal(b["x2"], a["u2"]) and torch.equal(b["x3"], a["u3"]) and list(b) == ["x2", "x3", "x4"]
    assert len(list(_store_dir(tmp_path).glob(ec.SHARD_GLOB))) == 2 and len(list((tmp_path / "feats").glob("*/*"))) == 3
    feats(fold("fold1_train", [0, 1, 2, 3]), "fold1_train")
    assert counting.rows == 5  # reused through its index

    st = wavs[2].stat()
    sf.write(wavs[2], (0.1 * rng.standard_normal(int(0.7 * 16000))).astype(np.float32), 16000)
    os.utime(wavs[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime even on a coarse clock
    again = feats(fold("fold2_train", [2, 3, 4], prefix="x"), "fold2_train")
    assert counting.rows == 6  # only the rewritten file
    ds = AudioDataset(tmp_path / "fold2_train", label_map=None, targets=())
    with torch.no_grad():
        ref, n = enc(ds[0]["wav"][None], torch.tensor([len(ds[0]["wav"])]))
    assert torch.equal(again["x2"], ref[0, :int(n[0])]) and again["x2"].shape != a["u2"].shape  # 0.7 s, was 0.8 s
    assert torch.equal(again["x3"], a["u3"])
    stale = feats(fold("fold1_train", [0, 1, 2, 3]), "fold1_train")  # fold 1's index is stale for u2: updated
    assert counting.rows == 6 and torch.equal(stale["u2"], again["x2"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_cache_matches_cpu_and_leaves_the_encoder_where_it_was(tmp_path, encoder, dataset):
    enc, digest = encoder
    on_gpu = ec.encoder_features(tmp_path / "gpu", enc, SPEC, digest, dataset, "set", batch_size=2)  # device auto
    assert next(enc.parameters()).device.type == "cpu"
    on_cpu = _entry(tmp_path, encoder, dataset)
    for u in dataset.utts:
        assert on_gpu[u].device.type == "cpu"
        torch.testing.assert_close(on_gpu[u], on_cpu[u], atol=1e-3, rtol=1e-3)
