"""eGeMAPS once per utterance: one content-keyed store shared by every set and fold, a view per set."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from sertk.bin import extract_egemaps as cli
from sertk.data.datadir import DataDir
from sertk.features import egemaps
from sertk.features.concept_tokens import datadir_feats
from sertk.features.egemaps import EgemapsExtractor, extract_datadir, extract_many
from sertk.features.store import count_entries, feats_matrix, load_feats
from test_features import count_extractions

SPEAKERS = ("s1", "s2", "s3")


def tone(f0: float, seconds: float = 0.6, seed: int = 0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
    x = x + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def write_set(d, entries: dict[str, str]):
    """A data dir of utterance id -> wav path; the speaker is the id's prefix."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "wav.scp").write_text("".join(f"{u} {entries[u]}\n" for u in sorted(entries)))
    (d / "utt2spk").write_text("".join(f"{u} {u.split('_')[0]}\n" for u in sorted(entries)))
    return d


@pytest.fixture
def corpus(tmp_path):
    """Two utterances per speaker, 16 kHz files: utterance id -> path."""
    wavs = {}
    for i, spk in enumerate(SPEAKERS):
        for j in range(2):
            utt = f"{spk}_{j}"
            wavs[utt] = tmp_path / "wav" / f"{utt}.wav"
            wavs[utt].parent.mkdir(exist_ok=True)
            sf.write(wavs[utt], tone(110 + 40 * i + 15 * j, seed=3 * i + j), 16000)
    return wavs


def fold_sets(root, wavs) -> dict[str, object]:
    """Speaker 3-fold layout: fold k tests on speaker k, selects on the next, trains on the third."""
    sets = {}
    for k, test in enumerate(SPEAKERS):
        dev = SPEAKERS[(k + 1) % 3]
        for name, spks in (("train", set(SPEAKERS) - {test, dev}), ("dev", {dev}), ("test", {test})):
            utts = {u: str(p) for u, p in wavs.items() if u.split("_")[0] in spks}
            sets[f"fold{k + 1}_{name}"] = write_set(root / "data" / f"fold{k + 1}_{name}", utts)
    return sets


def pairs_of(tmp_path, sets):
    return [(d, tmp_path / "dump" / "egemaps" / name) for name, d in sets.items()]


def store_root(tmp_path):
    return tmp_path / "dump" / "egemaps" / "_store"


def test_three_folds_extract_each_utterance_once(tmp_path, corpus, monkeypatch):
    calls = count_extractions(monkeypatch)
    sets = fold_sets(tmp_path, corpus)
    extract_many(pairs_of(tmp_path, sets), nj=1)
    assert sorted(calls) == sorted(corpus), "9 set dirs over 6 utterances: 6 extractions"
    stores = list(store_root(tmp_path).iterdir())
    assert len(stores) == 1 and count_entries(stores[0]) == 6
    assert (stores[0] / "feature_names.txt").read_text().split() == egemaps.feature_names()
    for name in sets:
        view = tmp_path / "dump" / "egemaps" / name
        assert not (view / "feats.ark").exists(), "a view holds no vectors of its own"
        assert all(str(stores[0]) in line for line in (view / "feats.scp").read_text().splitlines())


def test_views_read_like_a_direct_per_set_extraction(tmp_path, corpus):
    sets = fold_sets(tmp_path, corpus)
    extract_many(pairs_of(tmp_path, sets), nj=1)
    for name, d in sets.items():
        view = tmp_path / "dump" / "egemaps" / name
        direct = load_feats(extract_datadir(d, tmp_path / "direct" / name, store_root=tmp_path / "direct" / name))
        got = load_feats(view)
        assert set(got) == set(direct) == set(DataDir.read(d).utts)
        for u in direct:
            np.testing.assert_array_equal(got[u], direct[u], err_msg=f"{name}/{u}")
        # every reader's path: feats_matrix on <set>/feats.scp, the concept-token loader, meta.json
        utts = DataDir.read(d).utts
        np.testing.assert_array_equal(feats_matrix(view / "feats.scp", utts), np.stack([direct[u] for u in utts]))
        _, _, x, names = datadir_feats(d, view)
        assert x.shape == (len(utts), 88) and names == egemaps.feature_names()
        assert egemaps.is_up_to_date(DataDir.read(d), view, EgemapsExtractor().config())


def test_second_run_extracts_nothing_and_a_new_set_only_its_new_utterances(tmp_path, corpus, monkeypatch):
    sets = fold_sets(tmp_path, corpus)
    extract_many(pairs_of(tmp_path, sets), nj=1)
    calls = count_extractions(monkeypatch)
    extract_many(pairs_of(tmp_path, sets), nj=1)
    assert calls == []
    # views rewritten (meta.json gone) still read the store instead of extracting
    for _, out in pairs_of(tmp_path, sets):
        (out / "meta.json").unlink()
    extract_many(pairs_of(tmp_path, sets), nj=1)
    assert calls == []
    # a later run adding a set: only its utterance the store lacks is extracted
    extra = tmp_path / "wav" / "s4_0.wav"
    sf.write(extra, tone(300, seed=40), 16000)
    allset = write_set(tmp_path / "data" / "all", {**{u: str(p) for u, p in corpus.items()}, "s4_0": str(extra)})
    extract_many([(allset, tmp_path / "dump" / "egemaps" / "all")], nj=1)
    assert calls == ["s4_0"]


def test_changed_audio_is_extracted_again_once(tmp_path, corpus, monkeypatch):
    sets = fold_sets(tmp_path, corpus)
    extract_many(pairs_of(tmp_path, sets), nj=1)
    before = load_feats(tmp_path / "dump" / "egemaps" / "fold1_test")
    wav = corpus["s1_0"]
    sf.write(wav, tone(320, seconds=0.9, seed=99), 16000)  # same id, new content, size and mtime
    os.utime(wav, ns=(os.stat(wav).st_atime_ns, os.stat(wav).st_mtime_ns + 10**9))
    calls = count_extractions(monkeypatch)
    extract_many(pairs_of(tmp_path, sets), nj=1)
    assert calls == ["s1_0"], "in three sets, extracted once"
    after = load_feats(tmp_path / "dump" / "egemaps" / "fold1_test")
    assert not np.allclose(after["s1_0"], before["s1_0"])
    np.testing.assert_array_equal(after["s1_1"], before["s1_1"])
    for name in ("fold2_train", "fold3_dev"):  # the other sets holding s1_0 see the new features too
        np.testing.assert_array_equal(load_feats(tmp_path / "dump" / "egemaps" / name)["s1_0"], after["s1_0"])


def test_same_id_with_other_audio_in_two_sets_does_not_collide(tmp_path, corpus, monkeypatch):
    a = write_set(tmp_path / "data" / "a", {"x_1": str(corpus["s1_0"])})
    b = write_set(tmp_path / "data" / "b", {"x_1": str(corpus["s3_1"])})
    calls = count_extractions(monkeypatch)
    out_a, out_b = tmp_path / "dump" / "egemaps" / "a", tmp_path / "dump" / "egemaps" / "b"
    extract_many([(a, out_a), (b, out_b)], nj=1)
    assert calls == ["x_1", "x_1"]
    fa, fb = load_feats(out_a)["x_1"], load_feats(out_b)["x_1"]
    assert not np.allclose(fa, fb)
    for d, got in ((a, fa), (b, fb)):  # each equals a direct extraction of its own set
        ref = tmp_path / "ref" / d.name
        np.testing.assert_array_equal(got, load_feats(extract_datadir(d, ref, store_root=ref))["x_1"])


def test_pool_parts_and_cli_extract_each_unique_utterance_once(tmp_path, corpus):
    sets = fold_sets(tmp_path, corpus)
    pairs = pairs_of(tmp_path, sets)
    extract_many(pairs, nj=2, min_utts_per_job=1)  # two worker processes, one shard each
    (store,) = store_root(tmp_path).iterdir()
    assert len(list(store.glob("shard-*.scp"))) == 2 and count_entries(store) == 6
    args = ["--data", *[str(d) for d, _ in pairs], "--out", *[str(o) for _, o in pairs], "--nj", "2"]
    assert cli.main(args) == 0
    assert count_entries(store) == 6


def test_slurm_calls_per_set_share_the_store(tmp_path, corpus, fake_sbatch):
    """A stand-in sbatch runs the array tasks the way Slurm would; each per-set call extracts only what is new."""
    sets = fold_sets(tmp_path, corpus)
    out = tmp_path / "dump" / "egemaps"
    for name in ("fold1_train", "fold1_test"):  # speaker s3, then s1: each a 2-task array
        assert cli.main(["--data", str(sets[name]), "--out", str(out / name), "--nj", "2", "--backend", "slurm"]) == 0
    (store,) = store_root(tmp_path).iterdir()
    assert count_entries(store) == 4
    assert "#SBATCH --array=1,2" in (out / "fold1_test" / "log" / "egemaps.sbatch").read_text()
    assert not (out / "fold1_test" / "todo").exists(), "the array's work list is removed once stored"
    # fold2_train (speaker s1) is all in the store: no array is submitted
    assert cli.main(["--data", str(sets["fold2_train"]), "--out", str(out / "fold2_train"), "--nj", "2",
                     "--backend", "slurm"]) == 0
    assert count_entries(store) == 4 and not (out / "fold2_train" / "log").exists()
    ref = load_feats(extract_datadir(sets["fold2_train"], tmp_path / "ref", store_root=tmp_path / "ref"))
    got = load_feats(out / "fold2_train")
    assert set(got) == set(ref)
    for u in ref:
        np.testing.assert_array_equal(got[u], ref[u])
