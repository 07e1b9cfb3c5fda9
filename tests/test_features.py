"""eGeMAPS extraction into the kaldiio store: values, odd audio, reuse, parallel parts, errors.

The store shared across sets and folds (one extraction per utterance) is tested in test_egemaps_store.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from sertk.bin import extract_egemaps as cli
from sertk.data.audio import AudioError
from sertk.data.datadir import DataDir
from sertk.data.split import split_into_parts
from sertk.features import egemaps
from sertk.features.egemaps import EgemapsError, EgemapsExtractor, extract_datadir, extract_parallel
from sertk.features.store import FeatureStoreError, feats_matrix, load_feats, merge_scps, write_ark_scp

F0_MEAN = "F0semitoneFrom27.5Hz_sma3nz_amean"
LOUDNESS = "loudness_sma3_amean"


def voice(f0: float, sr: int, seconds: float = 1.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A harmonic 'voice' with vibrato plus a little noise."""
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 15) if f0 * k < sr / 2 - 200)
    x = x + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (amp * x / np.abs(x).max()).astype(np.float32)


def write_datadir(d, entries: dict[str, str], segments: dict[str, tuple[str, float, float]] | None = None):
    """entries: id -> wav path (utterance ids, or recording ids when segments are given)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "wav.scp").write_text("".join(f"{k} {entries[k]}\n" for k in sorted(entries)))
    utts = sorted(segments) if segments else sorted(entries)
    (d / "utt2spk").write_text("".join(f"{u} {u.split('_')[0]}\n" for u in utts))
    if segments:
        (d / "segments").write_text("".join(f"{u} {r} {s} {e}\n" for u, (r, s, e) in sorted(segments.items())))
    return d


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Mono 16 kHz files, the same voice as stereo 44.1 kHz, an 8 kHz file, and a long recording."""
    root = tmp_path_factory.mktemp("audio")
    paths = {}
    for i, f0 in enumerate([120, 160, 200, 240]):
        paths[f"a_{i}"] = root / f"a_{i}.wav"
        sf.write(paths[f"a_{i}"], voice(f0, 16000, amp=0.1 + 0.1 * i, seed=i), 16000)
    stereo = voice(180, 44100, seed=7)
    sf.write(root / "b_stereo.wav", np.stack([stereo, stereo], 1), 44100)
    sf.write(root / "b_mono16k.wav", voice(180, 16000, seed=7), 16000)
    sf.write(root / "c_8k.wav", voice(150, 8000, seed=8), 8000)
    long = np.concatenate([voice(130, 16000, 1.0, seed=9), voice(260, 16000, 1.0, seed=10)])
    sf.write(root / "rec.wav", long, 16000)
    sf.write(root / "d_first.wav", long[:16000], 16000)
    return root


@pytest.fixture
def datadir(tmp_path, audio):
    entries = {f"a_{i}": str(audio / f"a_{i}.wav") for i in range(4)}
    entries["b_stereo"] = str(audio / "b_stereo.wav")
    entries["b_mono16k"] = str(audio / "b_mono16k.wav")
    entries["c_8k"] = str(audio / "c_8k.wav")
    return write_datadir(tmp_path / "data", entries)


def column(names, name):
    return names.index(name)


def test_extracts_88_finite_functionals_from_mixed_audio(tmp_path, datadir):
    scp = extract_datadir(datadir, tmp_path / "feats")
    feats = load_feats(scp)
    names = (tmp_path / "feats" / "feature_names.txt").read_text().split()
    assert names == egemaps.feature_names() and len(names) == 88
    assert sorted(feats) == sorted(l.split()[0] for l in (datadir / "utt2spk").read_text().splitlines())
    for utt, v in feats.items():
        assert v.shape == (88,) and np.all(np.isfinite(v)), utt
    f0 = column(names, F0_MEAN)
    # F0 in semitones above 27.5 Hz follows the generated pitch (120..240 Hz rises by 12 semitones).
    st = [feats[f"a_{i}"][f0] for i in range(4)]
    assert np.all(np.diff(st) > 1.0)
    assert abs((st[3] - st[0]) - 12.0) < 1.0
    # Stereo 44.1 kHz is mixed down and resampled: same voice as the 16 kHz mono copy.
    assert abs(feats["b_stereo"][f0] - feats["b_mono16k"][f0]) < 0.3
    assert abs(feats["b_stereo"][column(names, LOUDNESS)] / feats["b_mono16k"][column(names, LOUDNESS)] - 1) < 0.1
    # The 8 kHz file is read at its own rate and resampled: its 150 Hz pitch is recovered.
    assert abs(feats["c_8k"][f0] - 12 * np.log2(150 / 27.5)) < 1.0


def test_segments_are_cut_from_the_recording(tmp_path, audio):
    seg = write_datadir(tmp_path / "seg", {"rec": str(audio / "rec.wav")},
                        {"d_first": ("rec", 0.0, 1.0), "d_second": ("rec", 1.0, 2.0)})
    whole = write_datadir(tmp_path / "whole", {"d_first": str(audio / "d_first.wav")})
    got = load_feats(extract_datadir(seg, tmp_path / "f_seg"))
    ref = load_feats(extract_datadir(whole, tmp_path / "f_whole"))
    np.testing.assert_allclose(got["d_first"], ref["d_first"], rtol=1e-5, atol=1e-5)
    f0 = column(egemaps.feature_names(), F0_MEAN)
    assert got["d_second"][f0] - got["d_first"][f0] == pytest.approx(12.0, abs=1.0)  # 260 Hz vs 130 Hz


def count_extractions(monkeypatch) -> list[str]:
    """Utterances openSMILE ran on (in this process; nj=1 runs extract in-process)."""
    calls: list[str] = []
    original = EgemapsExtractor.extract

    def counted(self, wav, sr, utt="<signal>"):
        calls.append(utt)
        return original(self, wav, sr, utt)

    monkeypatch.setattr(EgemapsExtractor, "extract", counted)
    return calls


def test_store_is_reused_and_recomputed_when_inputs_change(tmp_path, datadir, audio, monkeypatch):
    calls = count_extractions(monkeypatch)
    out = tmp_path / "feats"
    extract_datadir(datadir, out)
    assert len(calls) == 7
    first = load_feats(out)
    extract_datadir(datadir, out)
    assert len(calls) == 7, "an up-to-date store must be reused"

    # wav.scp now points a_0 at another voice: the view is rewritten and a_0 changes, but
    # a_3's audio is already in the store, so nothing is extracted again.
    wavscp = (datadir / "wav.scp").read_text().replace(str(audio / "a_0.wav"), str(audio / "a_3.wav"))
    (datadir / "wav.scp").write_text(wavscp)
    extract_datadir(datadir, out)
    assert len(calls) == 7
    second = load_feats(out)
    np.testing.assert_allclose(second["a_0"], first["a_3"], rtol=1e-6)
    assert not np.allclose(second["a_0"], first["a_0"])

    # A different sample rate is a different extractor config: a store of its own, 6 unique files.
    extract_datadir(datadir, out, sample_rate=8000)
    assert len(calls) == 13


def test_rewritten_audio_file_is_recomputed(tmp_path, monkeypatch):
    wav = tmp_path / "x_1.wav"
    sf.write(wav, voice(150, 16000), 16000)
    d = write_datadir(tmp_path / "data", {"x_1": str(wav)})
    calls = count_extractions(monkeypatch)
    extract_datadir(d, tmp_path / "f")
    sf.write(wav, voice(300, 16000, seconds=1.5), 16000)
    os.utime(wav, ns=(os.stat(wav).st_atime_ns, os.stat(wav).st_mtime_ns + 10**9))
    extract_datadir(d, tmp_path / "f")
    assert len(calls) == 2


def test_parallel_parts_equal_single_job(tmp_path, datadir):
    single = load_feats(extract_datadir(datadir, tmp_path / "one", store_root=tmp_path / "store1"))
    scp = extract_parallel(datadir, tmp_path / "two", nj=2, min_utts_per_job=1, store_root=tmp_path / "store2")
    assert len(list((tmp_path / "store2").glob("*/shard-*.scp"))) == 2  # one shard per part
    lines = scp.read_text().splitlines()
    keys = [l.split()[0] for l in lines]
    assert keys == sorted(keys, key=str.encode) and len(keys) == 7
    parallel = load_feats(scp)
    assert set(parallel) == set(single)
    for u in single:
        np.testing.assert_allclose(parallel[u], single[u], rtol=1e-6, err_msg=u)


def test_cli_job_and_merge_modes(tmp_path, datadir):
    out = tmp_path / "feats"
    split_into_parts(datadir, 3)
    for job in (1, 2):
        assert cli.main(["--data", str(datadir), "--out", str(out), "--nj", "3", "--job", str(job)]) == 0
    # One job is missing: the merge refuses instead of writing an incomplete index.
    assert cli.main(["--data", str(datadir), "--out", str(out), "--nj", "3", "--merge"]) == 1
    assert not (out / "feats.scp").exists()
    assert cli.main(["--data", str(datadir), "--out", str(out), "--nj", "3", "--job", "3"]) == 0
    assert cli.main(["--data", str(datadir), "--out", str(out), "--nj", "3", "--merge"]) == 0
    merged = load_feats(out)
    ref = load_feats(extract_datadir(datadir, tmp_path / "ref", store_root=tmp_path / "ref_store"))
    assert set(merged) == set(ref)
    for u in ref:
        np.testing.assert_allclose(merged[u], ref[u], rtol=1e-6)
    # The merged store is up to date for the whole data dir.
    assert egemaps.is_up_to_date(DataDir.read(datadir), out, EgemapsExtractor().config())


def test_unreadable_audio_names_the_utterance(tmp_path, datadir):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    entries = dict(l.split(maxsplit=1) for l in (datadir / "wav.scp").read_text().splitlines())
    entries["a_9"] = str(bad)
    d = write_datadir(tmp_path / "bad", entries)
    with pytest.raises(AudioError, match="a_9"):
        extract_datadir(d, tmp_path / "f")
    assert not (tmp_path / "f" / "feats.scp").exists()
    # A failing part of a parallel run is reported with its utterance too.
    with pytest.raises(AudioError, match="a_9"):
        extract_parallel(d, tmp_path / "fp", nj=2)


def test_too_short_audio_names_the_utterance(tmp_path):
    wav = tmp_path / "s.wav"
    sf.write(wav, voice(150, 16000, seconds=0.04), 16000)
    d = write_datadir(tmp_path / "data", {"tiny_1": str(wav)})
    with pytest.raises(EgemapsError, match="tiny_1"):
        extract_datadir(d, tmp_path / "f")


def test_store_helpers_name_missing_and_duplicate_utterances(tmp_path):
    write_ark_scp({"u2": np.ones(3), "u1": np.zeros(3)}, tmp_path / "p1" / "feats.ark", tmp_path / "p1" / "feats.scp")
    write_ark_scp({"u3": np.full(3, 2.0)}, tmp_path / "p2" / "feats.ark", tmp_path / "p2" / "feats.scp")
    x = feats_matrix(tmp_path / "p1", ["u2", "u1"])
    np.testing.assert_array_equal(x, [[1, 1, 1], [0, 0, 0]])
    with pytest.raises(FeatureStoreError, match="u7"):
        feats_matrix(tmp_path / "p1" / "feats.scp", ["u1", "u7"])
    n = merge_scps([tmp_path / "p1", tmp_path / "p2"], tmp_path / "all.scp", expected=["u1", "u2", "u3"])
    assert n == 3 and [l.split()[0] for l in (tmp_path / "all.scp").read_text().splitlines()] == ["u1", "u2", "u3"]
    np.testing.assert_array_equal(feats_matrix(tmp_path / "all.scp", ["u3"]), [[2, 2, 2]])
    with pytest.raises(FeatureStoreError, match="u4"):
        merge_scps([tmp_path / "p1", tmp_path / "p2"], tmp_path / "x.scp", expected=["u1", "u2", "u3", "u4"])
    with pytest.raises(FeatureStoreError, match="u1"):
        merge_scps([tmp_path / "p1", tmp_path / "p1"], tmp_path / "x.scp")
    assert not (tmp_path / "x.scp").exists()


def test_cli_slurm_backend_runs_an_array_of_jobs_and_merges(tmp_path, audio, fake_sbatch):
    """A stand-in sbatch runs the array tasks the way Slurm would (SLURM_ARRAY_TASK_ID)."""
    d = write_datadir(tmp_path / "data", {f"a_{i}": str(audio / f"a_{i}.wav") for i in range(2)})
    out = tmp_path / "feats"
    assert cli.main(["--data", str(d), "--out", str(out), "--nj", "2", "--backend", "slurm"]) == 0
    assert "#SBATCH --array=1,2" in (out / "log" / "egemaps.sbatch").read_text()
    assert (out / "log" / ".done.egemaps.2").is_file()
    got = load_feats(out)
    ref = load_feats(extract_datadir(d, tmp_path / "ref", store_root=tmp_path / "ref_store"))
    assert set(got) == {"a_0", "a_1"}
    for u in ref:
        np.testing.assert_allclose(got[u], ref[u], rtol=1e-6)
