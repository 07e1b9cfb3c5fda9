"""Audio reading, the utterance dataset, padding collate and length-bucketed batching."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sertk.data.audio import AudioError, read_audio, resample, write_audio
from sertk.data.datadir import DataDir, DataDirError
from sertk.data.dataset import (AudioDataset, collate_audio, make_bucket_batch_sampler, padding_ratio)
from sertk.data.labels import LabelMap

LM = LabelMap(["ang", "hap", "neu", "sad"], {"exc": "hap"})


def write_dir(root: Path, durations: dict[str, float], sr: int = 16000, name: str = "d",
              emo: dict[str, str] | None = None, avd: dict[str, str] | None = None) -> Path:
    """One wav per utterance (speaker = id prefix before '-')."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    t = {"wav.scp": {}, "utt2spk": {}}
    for u, d in durations.items():
        p = root / "wav" / f"{u}.wav"
        write_audio(p, 0.1 * rng.standard_normal(int(round(d * sr))).astype(np.float32), sr)
        t["wav.scp"][u] = str(p)
        t["utt2spk"][u] = u.split("-")[0]
    t["utt2emo"] = emo or {u: ["ang", "hap", "neu", "sad"][i % 4] for i, u in enumerate(durations)}
    if avd is not None:
        t["utt2avd"] = avd
    DataDir(t).write(root / name)
    return root / name


# ------------------------------------------------------------ audio input
@pytest.mark.parametrize("sr,dur", [(44100, 1.0), (22050, 0.7), (8000, 0.33), (48000, 0.5)])
def test_odd_rates_are_resampled(tmp_path, sr, dur):
    p = tmp_path / "x.wav"
    t = np.arange(int(round(dur * sr))) / sr
    write_audio(p, 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32), sr)
    wav, out_sr = read_audio(str(p), 16000)
    assert out_sr == 16000 and wav.dtype == np.float32
    assert wav.size == round(dur * 16000)
    # the tone survives resampling: its spectrum peaks at 440 Hz
    spec = np.abs(np.fft.rfft(wav))
    assert abs(np.argmax(spec) * 16000 / wav.size - 440) < 5


@pytest.mark.parametrize("orig,new", [(24414, 16000), (22050, 16000), (44100, 16000), (48000, 16000),
                                      (8000, 16000), (16000, 8000)])
def test_resampler_matches_torchaudio_on_a_tone(orig, new):
    """The soxr resampler gives what torchaudio's sinc resampler gave (to 1e-3 of a 0.7 peak), at the same length.

    24,414 Hz is the rate whose sinc kernel made eGeMAPS extraction 5x slower than openSMILE.
    """
    import torchaudio

    t = np.arange(int(orig * 1.5)) / orig
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)
    ours = resample(tone, orig, new)
    ref = torchaudio.functional.resample(torch.from_numpy(tone), orig, new).numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    inner = slice(new // 100, -new // 100)  # the filters differ only in their edge transients
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-3)
    assert np.abs(ours - ref).max() < 5e-3


def test_resampler_length_and_identity():
    x = np.random.default_rng(0).standard_normal(12345).astype(np.float32)
    assert resample(x, 16000, 16000) is x
    for orig, new in [(24414, 16000), (22050, 16000), (44100, 16000), (8000, 16000)]:
        for n in (1, 7, 12345):
            assert resample(x[:n], orig, new).size == -(-n * new // orig)


def test_stereo_is_mixed_to_channel_mean(tmp_path):
    sr = 44100
    rng = np.random.default_rng(0)
    st = (0.3 * rng.standard_normal((sr, 2))).astype(np.float32)
    st[:, 1] *= 0.2  # different channels, so mean != either channel
    p = tmp_path / "stereo.wav"
    sf.write(str(p), st, sr, subtype="FLOAT")
    native, _ = read_audio(str(p))
    np.testing.assert_allclose(native, st.mean(axis=1), atol=1e-7)
    d = DataDir({"wav.scp": {"a-1": str(p)}, "utt2spk": {"a-1": "a"}, "utt2emo": {"a-1": "neu"}})
    item = AudioDataset(d, 16000, LM)[0]
    assert item["wav"].shape == (16000,)
    ref, _ = read_audio(str(p), 16000)
    torch.testing.assert_close(item["wav"], torch.from_numpy(ref))


@pytest.mark.parametrize("suffix", ["flac", "aiff"])
def test_flac_and_aiff(tmp_path, suffix):
    sr = 22050
    x = (0.25 * np.sin(np.linspace(0, 60, sr))).astype(np.float32)
    p = tmp_path / f"x.{suffix}"
    write_audio(p, x, sr)
    wav, got_sr = read_audio(str(p))
    assert got_sr == sr
    np.testing.assert_allclose(wav, x, atol=2 / 32768)  # 16-bit quantisation only


def test_segments_cut_the_right_samples(tmp_path):
    sr = 16000
    ramp = (np.arange(2 * sr) / (2 * sr)).astype(np.float32) * 0.9
    p = tmp_path / "rec.wav"
    sf.write(str(p), ramp, sr, subtype="FLOAT")
    d = DataDir({"wav.scp": {"rec": str(p)}, "segments": {"a-1": "rec 0.5 1.25", "a-2": "rec 1.5 2.0"},
                 "utt2spk": {"a-1": "a", "a-2": "a"}, "utt2emo": {"a-1": "neu", "a-2": "sad"}})
    ds = AudioDataset(d, sr, LM)
    np.testing.assert_array_equal(ds[0]["wav"].numpy(), ramp[8000:20000])
    np.testing.assert_array_equal(ds[1]["wav"].numpy(), ramp[24000:32000])
    assert ds.durations() == [0.75, 0.5]


def test_bad_audio_is_a_clear_error_naming_the_utterance(tmp_path):
    d = write_dir(tmp_path, {"a-1": 0.5, "a-2": 0.5, "a-3": 0.05})
    (tmp_path / "wav" / "a-1.wav").write_bytes(b"garbage" * 20)
    sf.write(str(tmp_path / "wav" / "a-2.wav"), np.zeros(0, np.float32), 16000)
    ds = AudioDataset(d, 16000, LM, min_duration=0.1)
    with pytest.raises(AudioError, match=r"utterance a-1 .*cannot read audio"):
        ds[0]
    with pytest.raises(AudioError, match=r"utterance a-2 .*empty"):
        ds[1]
    with pytest.raises(AudioError, match=r"utterance a-3 .*0.050s, shorter than the minimum 0.1s"):
        ds[2]
    (tmp_path / "wav" / "a-3.wav").unlink()
    with pytest.raises(AudioError, match=r"utterance a-3 "):
        ds[2]


# ---------------------------------------------------------------- targets
def test_labels_and_avd_targets(tmp_path):
    durs = {"a-1": 0.3, "a-2": 0.4, "b-1": 0.5}
    d = write_dir(tmp_path, durs, emo={"a-1": "exc", "a-2": "sad", "b-1": "ang"},
                  avd={"a-1": "0.1 0.2 0.3", "a-2": "1 2 3", "b-1": "-1 0 1"})
    ds = AudioDataset(d, 16000, LM, targets=("emo", "avd"))
    assert [ds[i]["label"] for i in range(3)] == [1, 3, 0]
    torch.testing.assert_close(ds[1]["avd"], torch.tensor([1.0, 2.0, 3.0]))
    assert ds.label_ids == [1, 3, 0]
    assert ds.durations() == pytest.approx([0.3, 0.4, 0.5])
    only_avd = AudioDataset(d, 16000, targets="avd")
    assert "label" not in only_avd[0] and "avd" in only_avd[0]


def test_bad_targets_fail_at_construction_naming_the_utterance(tmp_path):
    d = write_dir(tmp_path, {"a-1": 0.3, "a-2": 0.3}, emo={"a-1": "neu", "a-2": "fru"},
                  avd={"a-1": "0 0 0", "a-2": "nan 0 0"})
    with pytest.raises(DataDirError, match=r"utt2emo: utterance 'a-2': label 'fru' is not one of the labels"):
        AudioDataset(d, 16000, LM)
    with pytest.raises(DataDirError, match=r"utt2avd: utterance 'a-2'"):
        AudioDataset(d, 16000, targets="avd")
    with pytest.raises(ValueError, match="no label_map"):
        AudioDataset(d, 16000)


def test_crops_centre_at_eval_and_seeded_random_at_train(tmp_path):
    sr = 16000
    ramp = np.linspace(0, 0.9, 2 * sr, dtype=np.float32)
    p = tmp_path / "r.wav"
    sf.write(str(p), ramp, sr, subtype="FLOAT")
    d = DataDir({"wav.scp": {"a-1": str(p)}, "utt2spk": {"a-1": "a"}, "utt2emo": {"a-1": "neu"}})
    ev = AudioDataset(d, sr, LM, max_duration=0.5)
    np.testing.assert_array_equal(ev[0]["wav"].numpy(), ramp[12000:20000])
    assert ev.durations() == [0.5]
    tr = AudioDataset(d, sr, LM, max_duration=0.5, random_crop=True, seed=3)
    starts = []
    for epoch in range(4):
        tr.set_epoch(epoch)
        a, b = tr[0]["wav"].numpy(), tr[0]["wav"].numpy()
        np.testing.assert_array_equal(a, b)  # same (seed, epoch, index) -> same crop
        assert a.size == 8000
        start = int(np.searchsorted(ramp, a[0]))
        np.testing.assert_array_equal(a, ramp[start:start + 8000])
        starts.append(start)
    assert len(set(starts)) > 1


@pytest.mark.parametrize("task", ["speech_classifier", "teacher"])
def test_train_crop_trains_on_random_windows_and_evaluates_whole_clips(tmp_path, task):
    """``data.train_crop``: training items are random windows of that length; dev/test (and predict) read
    the utterance up to ``max_duration``, as without it; a bad value is a clear error."""
    import importlib

    from sertk.tasks import TaskContext, check_config

    write_dir(tmp_path, {"a-1": 3.0, "a-2": 1.0}, avd={"a-1": "0.5 0.5 0.5", "a-2": "0.1 0.2 0.3"})
    mod = importlib.import_module(f"sertk.tasks.{task}")
    cfg = {"data": {"max_duration": 4.0, "train_crop": 2.0}}
    ctx = TaskContext(data=tmp_path, dump=tmp_path, expdir=tmp_path, name="x", stage=3)
    args = (cfg, ctx, "d", None) if task == "speech_classifier" else (cfg, ctx, "d")
    train, dev = mod._dataset(*args, train=True), mod._dataset(*args, train=False)
    assert [train[i]["wav"].numel() for i in range(2)] == [32000, 16000]  # a shorter clip stays whole
    assert [dev[i]["wav"].numel() for i in range(2)] == [48000, 16000]
    bad = ({"task": "regressor", "model": {"encoder": {"name_or_path": "zoo/x"}}} if task == "speech_classifier"
           else {"task": "teacher", "members": [{"name": "m", "backbone": {"name_or_path": "zoo/x"}}]})
    with pytest.raises(ValueError, match=r"x: data: train_crop must be a positive number of seconds"):
        check_config({**bad, "data": {"train_crop": -1}}, "x")


# ----------------------------------------------------------------- collate
def test_collate_pads_with_zeros_and_masks_real_samples():
    items = [{"utt": "a", "wav": torch.ones(5), "label": 2, "avd": torch.tensor([1.0, 2, 3])},
             {"utt": "b", "wav": torch.full((3,), -0.5), "label": 0, "avd": torch.tensor([0.0, 0, 1])},
             {"utt": "c", "wav": torch.full((7,), 0.25), "label": 1, "avd": torch.tensor([3.0, 2, 1])}]
    b = collate_audio(items)
    assert b["utts"] == ["a", "b", "c"]
    assert b["wav"].shape == (3, 7)
    assert b["lengths"].tolist() == [5, 3, 7]
    assert b["attention_mask"].dtype == torch.long
    assert b["attention_mask"].tolist() == [[1] * 5 + [0] * 2, [1] * 3 + [0] * 4, [1] * 7]
    assert b["wav"][0, 5:].abs().sum() == 0 and b["wav"][1, 3:].abs().sum() == 0
    torch.testing.assert_close(b["wav"][1, :3], torch.full((3,), -0.5))
    assert b["labels"].tolist() == [2, 0, 1] and b["labels"].dtype == torch.long
    torch.testing.assert_close(b["avd"][2], torch.tensor([3.0, 2, 1]))
    with pytest.raises(ValueError, match="some items have 'label'"):
        collate_audio([items[0], {"utt": "d", "wav": torch.ones(2)}])


# ---------------------------------------------------------------- batching
def _varied_dir(tmp_path, n=120, sr=8000):
    rng = np.random.default_rng(7)
    durs = {f"s{i % 6}-{i:03d}": float(rng.uniform(1.0, 4.0)) for i in range(n)}
    return write_dir(tmp_path, durs, sr=sr)


def test_bucketing_lowers_padding_and_covers_each_utterance_once(tmp_path):
    ds = AudioDataset(_varied_dir(tmp_path), 8000, LM)
    lengths = ds.durations()
    sampler = make_bucket_batch_sampler(ds, batch_size=8, num_buckets=8, seed=0)
    g = torch.Generator().manual_seed(0)
    random_batches = list(torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(ds, generator=g), batch_size=8, drop_last=False))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert Counter(i for b in batches for i in b) == Counter(range(len(ds)))  # each once
        assert all(len(b) <= 8 for b in batches)
        assert padding_ratio(batches, lengths) < 0.5 * padding_ratio(random_batches, lengths)


def test_bucketing_is_deterministic_per_seed_and_epoch(tmp_path):
    ds = AudioDataset(_varied_dir(tmp_path, n=60), 8000, LM)
    a = make_bucket_batch_sampler(ds, max_batch_seconds=12.0, num_buckets=4, seed=5)
    first = list(a)
    assert list(a) == first  # a second pass of the same epoch replays it
    assert list(make_bucket_batch_sampler(ds, max_batch_seconds=12.0, num_buckets=4, seed=5)) == first
    a.set_epoch(1)
    second = list(a)
    assert second != first
    assert list(make_bucket_batch_sampler(ds, max_batch_seconds=12.0, num_buckets=4, seed=5, epoch=1)) == second
    assert list(make_bucket_batch_sampler(ds, max_batch_seconds=12.0, num_buckets=4, seed=6)) != first
    lengths = ds.durations()
    for b in first:  # padded seconds per batch stay within the budget
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 12.0 + 1e-9


def test_trainer_bucketed_batches_shard_ranks_evenly_and_leave_no_batch_too_small(tmp_path):
    from sertk.train.trainer import bucketed_batches
    ds = AudioDataset(_varied_dir(tmp_path, n=61), 8000, LM)
    lengths = ds.durations()
    # 61 items in 5 buckets of batch 4 leave partial batches; a CCC loss needs >= 2 items per rank
    fn = bucketed_batches(4, seed=3, num_buckets=5, min_items=2)
    one = fn(ds, 0, 0, 1)
    assert Counter(i for b in one for i in b) == Counter(range(len(ds)))
    assert min(len(b) for b in one) >= 2
    assert padding_ratio(one, lengths) < 0.2
    assert fn(ds, 0, 0, 1) == one and fn(ds, 1, 0, 1) != one  # a function of (seed, epoch)
    ranks = [fn(ds, 0, r, 2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # every rank takes part in every step
    assert all(len(b) >= 2 for r in ranks for b in r)
    assert Counter(i for r in ranks for b in r for i in b) == Counter(range(len(ds)))


def test_small_batches_join_a_neighbour_in_order():
    from sertk.train.trainer import merge_small_batches
    assert merge_small_batches([[0], [1, 2, 3]], 2) == [[0, 1, 2, 3]]
    assert merge_small_batches([[0], [1, 2], [3, 4]], 2) == [[0, 1, 2], [3, 4]]
    assert merge_small_batches([[0, 1], [2], [3, 4], [5]], 2) == [[0, 1, 2], [3, 4, 5]]
    assert merge_small_batches([[0]], 2) == [[0]]


def test_dataloader_end_to_end(tmp_path):
    ds = AudioDataset(_varied_dir(tmp_path, n=24), 16000, LM)
    sampler = make_bucket_batch_sampler(ds, max_batch_seconds=10.0, num_buckets=3, shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_audio)
    seen = []
    for batch in loader:
        assert batch["wav"].shape[1] == batch["lengths"].max()
        assert torch.equal(batch["attention_mask"].sum(1), batch["lengths"])
        assert batch["wav"].shape[0] * batch["wav"].shape[1] <= 10.0 * 16000 or batch["wav"].shape[0] == 1
        seen += batch["utts"]
    assert sorted(seen) == ds.utts
    lens = [len(b) for b in sampler]
    maxes = [max(ds.durations()[i] for i in b) for b in sampler]
    assert maxes == sorted(maxes, reverse=True) and sum(lens) == len(ds)  # eval order: longest first
