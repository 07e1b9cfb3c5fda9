"""The one inference path (sertk.train.inference) and the teacher-output cache that stage 8 reuses."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sertk.data.audio import write_audio
from sertk.data.dataset import AudioDataset
from sertk.train.distill import AugmentConfig, cache_dir, label_with_teacher
from sertk.train.inference import DeviceError, length_sorted_batches, place, predict, resolve_device, run_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _MeanAbs(torch.nn.Module):
    """Mean |x| over each utterance's valid samples: the output must not depend on the batch."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, wav, lengths):
        mask = torch.arange(wav.shape[1], device=wav.device)[None] < lengths[:, None]
        m = (wav.abs() * mask).sum(1) / lengths
        return m[:, None] * self.scale


def _datadir(tmp_path, n=11, name="set"):
    rng = np.random.default_rng(0)
    d = tmp_path / name
    d.mkdir()
    scp, spk = [], []
    for i in range(n):
        wav = (rng.standard_normal(1600 * (1 + (i * 7) % 5)) * 0.1 * (i + 1)).astype(np.float32)
        p = tmp_path / f"{name}_u{i:02d}.wav"
        write_audio(p, wav, 16000)
        scp.append(f"u{i:02d} {p}\n")
        spk.append(f"u{i:02d} s{i % 2}\n")
    (d / "wav.scp").write_text("".join(scp))
    (d / "utt2spk").write_text("".join(spk))
    return d


def test_predict_returns_dataset_order_and_batch_independent_outputs(tmp_path):
    ds = AudioDataset(_datadir(tmp_path), 16000, targets=())
    model = _MeanAbs()
    utts, out = predict(model, ds, batch_size=4)
    assert utts == ds.utts
    alone = np.stack([model(ds[i]["wav"][None], torch.tensor([ds[i]["wav"].shape[0]]))[0].detach().numpy()
                      for i in range(len(ds))])
    np.testing.assert_allclose(out, alone, rtol=1e-5)
    assert out.dtype == np.float32 and model.training  # the caller's mode is restored


def test_length_sorted_batches_cover_every_index_once_and_cut_padding():
    lengths = [5.0, 1.0, 4.0, 1.5, 3.0, 0.5, 2.0]
    batches = length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [[lengths[i] for i in b] for b in batches] == [[0.5, 1.0, 1.5], [2.0, 3.0, 4.0], [5.0]]


def test_run_model_runs_without_gradients():
    model = _MeanAbs()
    batches = [{"utts": ["a"], "wav": torch.ones(1, 10), "lengths": torch.tensor([10])}]
    utts, out = run_model(model, batches)
    assert utts == ["a"] and out.shape == (1, 3)
    assert model.scale.grad is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_a_cuda_setting_without_a_gpu_is_a_clear_error():
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="CUDA is not available"):
        place(_MeanAbs(), "cuda")


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.calls = 0

    def forward(self, wav, lengths=None):
        self.calls += 1
        return wav.abs().mean(1, keepdim=True) * self.w


def test_teacher_outputs_are_computed_once_and_a_cached_set_never_loads_the_teacher(tmp_path):
    d = _datadir(tmp_path)
    aug = AugmentConfig()
    cache = cache_dir(tmp_path / "tl", "teacherdigest", aug, 16000, None)
    teacher = _Counting()
    first = label_with_teacher(teacher, d, cache, [0], aug)
    assert teacher.calls == 11

    def must_not_load():
        raise AssertionError("the teacher was loaded although every label is cached")
    again = label_with_teacher(must_not_load, d, cache, [0], aug)
    assert all(np.array_equal(again[k], first[k]) for k in first)


def test_teacher_label_cache_is_keyed_on_crop_rate_and_audio(tmp_path):
    aug = AugmentConfig()
    root = tmp_path / "tl"
    assert cache_dir(root, "t", aug, 16000, None) != cache_dir(root, "t", aug, 16000, 4.0)
    assert cache_dir(root, "t", aug, 16000, None) != cache_dir(root, "t", aug, 8000, None)
    d = _datadir(tmp_path)
    cache = cache_dir(root, "t", aug, 16000, None)
    before = label_with_teacher(_Counting(), d, cache, [0], aug)
    # the same file name, new audio: the old labels must not be served
    path = (d / "wav.scp").read_text().split()[1]
    write_audio(path, np.full(8000, 0.5, dtype=np.float32), 16000)
    os.utime(path, ns=(1, 1))  # even with an old mtime, the size differs
    after = label_with_teacher(_Counting(), d, cache, [0], aug)
    assert not np.allclose(after[("u00", 0)], before[("u00", 0)])
    assert np.allclose(after[("u01", 0)], before[("u01", 0)])


def test_sets_sharing_utterances_label_each_utterance_and_seed_once(tmp_path):
    """Folds over the same audio share one label table per seed: (utterance, seed) is labelled once;
    the clean copy (seed 0) is shared by content, augmented copies also by id (the id seeds them)."""
    src = _datadir(tmp_path)
    lines = dict(line.split() for line in (src / "wav.scp").read_text().splitlines())

    def fold(name, utts, rename=None):
        d = tmp_path / name
        d.mkdir()
        rename = rename or {}
        utts = sorted(utts, key=lambda u: rename.get(u, u))
        (d / "wav.scp").write_text("".join(f"{rename.get(u, u)} {lines[u]}\n" for u in utts))
        (d / "utt2spk").write_text("".join(f"{rename.get(u, u)} s0\n" for u in utts))
        return d

    aug = AugmentConfig()
    cache = cache_dir(tmp_path / "tl", "teacherdigest", aug, 16000, None)
    teacher = _Counting()
    one = label_with_teacher(teacher, fold("fold1", [f"u{i:02d}" for i in range(8)]), cache, [0, 1], aug)
    assert teacher.calls == 16 and len(one) == 16
    two_dir = fold("fold2", [f"u{i:02d}" for i in range(4, 11)], rename={"u04": "a04"})
    two = label_with_teacher(teacher, two_dir, cache, [0, 1], aug)
    assert teacher.calls == 16 + 3 * 2 + 1  # u08-u10 both seeds; a04 (u04's audio) only its augmented copy
    assert np.array_equal(two[("a04", 0)], one[("u04", 0)]) and np.array_equal(two[("u05", 1)], one[("u05", 1)])
    assert sorted(p.name for p in cache.iterdir()) == ["seed0.txt", "seed1.txt"]
    assert len((cache / "seed0.txt").read_text().splitlines()) == 11  # one line per audio
    assert len((cache / "seed1.txt").read_text().splitlines()) == 12  # ... and per id for the augmented copies

    def must_not_load():
        raise AssertionError("the teacher was loaded although every label is cached")
    assert all(np.array_equal(v, one[k]) for k, v in label_with_teacher(must_not_load, tmp_path / "fold1", cache,
                                                                         [0, 1], aug).items())
    path = lines["u06"]  # a file both folds use is replaced: relabelled once per seed, the rest reused
    write_audio(path, np.full(4000, 0.25, dtype=np.float32), 16000)
    calls = teacher.calls
    again = label_with_teacher(teacher, two_dir, cache, [0, 1], aug)
    assert teacher.calls == calls + 2 and not np.allclose(again[("u06", 0)], two[("u06", 0)])
    assert np.array_equal(again[("u07", 1)], two[("u07", 1)])
    first_again = label_with_teacher(teacher, tmp_path / "fold1", cache, [0, 1], aug)
    assert teacher.calls == calls + 2 and np.array_equal(first_again[("u06", 0)], again[("u06", 0)])
