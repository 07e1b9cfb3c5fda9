"""Students and distillation: front-end correctness, widths, padding, augmentation, label cache, learning."""
import numpy as np
import pytest
import torch

from sertk.data.audio import write_audio
from sertk.models.logmel import LogMel
from sertk.models.mobilenet_student import MobileNetStudent
from sertk.models.wav2small import Wav2Small
from sertk.train.distill import (AugmentConfig, DistillDataset, augment, distill_loss, label_with_teacher,
                                 read_table)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_widths_match_the_paper_and_released_sizes():
    assert 65_000 <= n_params(Wav2Small("paper")) <= 80_000          # paper: ~72K
    assert 10_000 <= n_params(Wav2Small("released")) <= 20_000       # released 13-channel: ~17K
    with pytest.raises(ValueError, match="channels"):
        Wav2Small("huge")


def test_fixed_stft_layer_equals_torch_stft_mel():
    fe = LogMel(standardize=False)
    wav = torch.randn(1, 4000)
    got = fe(wav)[0][0, 0]
    x = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-7)
    spec = torch.stft(x, 64, 32, window=torch.hann_window(64), center=False, return_complex=True).abs() ** 2
    ref = torch.log(fe.mel_fb @ spec[0] + 1e-6)
    assert got.shape == (26, (4000 - 64) // 32 + 1)
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)
    assert not any(p.requires_grad for p in fe.parameters())  # fixed layer: buffers only


@pytest.mark.parametrize("make", [lambda: Wav2Small(13), lambda: MobileNetStudent("mobilenetv3_small")])
def test_batched_padded_input_matches_single_utterance_and_is_gain_invariant(make):
    torch.manual_seed(0)
    m = make().eval()
    wav = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        batched = m(wav, torch.tensor([16000, 9000]))
        alone = m(wav[1:, :9000])
        louder = m(wav[1:, :9000] * 7.0)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-4, rtol=1e-4)  # masked pooling in both
    torch.testing.assert_close(alone, louder, atol=1e-4, rtol=1e-4)


def test_augmentation_is_deterministic_per_utterance_and_seed():
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    cfg = AugmentConfig(noise_p=1.0, crop_p=1.0, speed_p=1.0)
    assert augment(wav, 16000, "u1", 0, cfg) is wav
    a, b = augment(wav, 16000, "u1", 1, cfg), augment(wav, 16000, "u1", 1, cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(wav, 16000, "u1", 2, cfg))
    assert not np.array_equal(a, augment(wav, 16000, "u2", 1, cfg))
    with pytest.raises(ValueError, match="snr"):
        AugmentConfig.from_dict({"snr": [1, 2]})


def test_distill_losses():
    t = torch.randn(8, 3)
    assert distill_loss(t.clone(), t, "ccc").item() == pytest.approx(0.0, abs=1e-5)
    assert distill_loss(t + 1, t, "mse").item() == pytest.approx(1.0, abs=1e-5)
    assert distill_loss(t + 1, t, "ccc+mse").item() > distill_loss(t + 1, t, "mse").item()
    with pytest.raises(ValueError, match="ccc"):
        distill_loss(t, t, "l1")


class _Loudness(torch.nn.Module):
    """A stand-in teacher whose outputs depend on the spectrum (low vs high band energy)."""

    def forward(self, wav, lengths=None):
        spec = torch.fft.rfft(wav, dim=1).abs()
        k = spec.shape[1] // 8
        ratio = torch.log(spec[:, :k].mean(1) / spec[:, k:].mean(1))
        return torch.stack([ratio, -ratio, 2 * ratio], 1)


def _unlabelled_dir(tmp_path, n=16):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        t = np.arange(8000) / 16000
        f = 150 + 300 * i
        wav = (np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32) * 0.3
        p = tmp_path / f"u{i:02d}.wav"
        write_audio(p, wav, 16000)
        lines.append(f"u{i:02d} {p}\n")
    d = tmp_path / "unlab"
    d.mkdir()
    (d / "wav.scp").write_text("".join(lines))
    (d / "utt2spk").write_text("".join(f"u{i:02d} s{i % 2}\n" for i in range(n)))
    return d


def test_teacher_labels_are_cached_per_seed_and_a_student_learns_them(tmp_path):
    torch.manual_seed(0)
    d = _unlabelled_dir(tmp_path)
    aug = AugmentConfig(noise_p=0.0, speed_p=0.0)
    labels = label_with_teacher(_Loudness(), d, tmp_path / "cache", [0, 1], aug)
    cached = dict(read_table(tmp_path / "cache" / "seed1.txt").values())  # key -> (utt, A/V/D), one table per seed
    assert len(cached) == 16 and np.allclose(cached["u03"], labels[("u03", 1)], atol=1e-5)
    again = label_with_teacher(None, d, tmp_path / "cache", [0, 1], aug)  # served from the cache: no teacher
    assert np.allclose(again[("u05", 0)], labels[("u05", 0)])
    ds = DistillDataset([d], labels, [0, 1], aug)
    assert len(ds) == 32
    from sertk.data.dataset import collate_audio
    batch = collate_audio([ds[i] for i in range(len(ds))])
    model = Wav2Small(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = distill_loss(model(batch["wav"], batch["lengths"]), batch["avd"], "ccc+mse")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert distill_loss(model(batch["wav"], batch["lengths"]), batch["avd"], "ccc") < 0.3


def test_training_crops_are_random_windows_drawn_anew_each_epoch(tmp_path):
    """``crop``: short training windows (cheaper steps), the same ones on a resumed epoch, new ones the next."""
    d = _unlabelled_dir(tmp_path, n=4)
    aug = AugmentConfig(noise_p=0.0, speed_p=0.0)
    labels = label_with_teacher(_Loudness(), d, tmp_path / "cache", [0], aug)
    whole = DistillDataset([d], labels, [0], aug)
    ds = DistillDataset([d], labels, [0], aug, crop=0.25, seed=3)
    assert ds.durations() == [0.25] * 4 and whole.durations() == [0.5] * 4
    first = [ds[i]["wav"].numpy() for i in range(4)]
    assert all(w.size == 4000 for w in first) and whole[0]["wav"].numel() == 8000
    full = whole[0]["wav"].numpy()
    assert any(np.array_equal(first[0], full[o:o + 4000]) for o in range(4001))  # a window of the labelled audio
    assert np.array_equal(ds[0]["avd"], whole[0]["avd"])  # the target stays the whole waveform's label
    assert all(np.array_equal(a, ds[i]["wav"].numpy()) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert any(not np.array_equal(a, ds[i]["wav"].numpy()) for i, a in enumerate(first))


def test_front_end_stays_float32_under_bf16_autocast():
    """Mixed-precision training computes the convs in bf16, never the fixed STFT and log."""
    torch.manual_seed(0)
    m = Wav2Small(8).eval()
    wav, lengths = torch.randn(2, 8000) * 0.1, torch.tensor([8000, 6000])
    with torch.no_grad():
        ref, _ = m.frontend(wav, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, _ = m.frontend(wav, lengths)
            out = m(wav, lengths)
    assert feats.dtype == torch.float32 and torch.equal(feats, ref)
    assert torch.isfinite(out.float()).all()


def test_projecting_the_pooled_gram_equals_pooling_projected_frames():
    """The value projection is linear and the attention weights sum to 1, so it can follow the pooling."""
    torch.manual_seed(0)
    m = Wav2Small(8).eval()
    wav, lengths = torch.randn(2, 8000) * 0.1, torch.tensor([8000, 5000])
    with torch.no_grad():
        x, n = m._conv_stack(*m.frontend(wav, lengths))
        gram = m._frame_gram(x)
        score = m.attn(gram).squeeze(-1).masked_fill(torch.arange(gram.shape[1])[None] >= n[:, None], float("-inf"))
        per_frame = torch.einsum("bt,btd->bd", torch.softmax(score, 1), m.value(gram))
        torch.testing.assert_close(m(wav, lengths), m.out(per_frame), atol=1e-5, rtol=1e-5)


def test_concurrent_students_split_the_teacher_labelling(tmp_path):
    """A table another student is writing is read after it, while this one labels the free tables first."""
    import threading

    from sertk.tasks.distill import _table_lock, shared_labels

    cache, calls, seed1_done = tmp_path / "cache", [], threading.Event()
    holding = threading.Event()

    def other_student():  # writes seed 0 until this student has labelled seed 1
        with _table_lock(cache, 0, block=True):
            holding.set()
            seed1_done.wait(10)

    def label(datadir, seed):
        calls.append(seed)
        if seed == 1:
            seed1_done.set()
        return {("u", seed): seed}

    t = threading.Thread(target=other_student)
    t.start()
    holding.wait(10)
    out = shared_labels(label, cache, [("d", 0), ("d", 1), ("d", 0)])
    t.join()
    assert calls == [1, 0] and out == {("d", 0): {("u", 0): 0}, ("d", 1): {("u", 1): 1}}


def test_bf16_training_falls_back_to_float32_on_a_cpu_without_bf16(monkeypatch):
    """Emulated bf16 is slower than float32: a config asking for bf16 trains in float32 there."""
    from sertk.tasks import distill
    from sertk.train.trainer import TrainConfig

    monkeypatch.setattr(distill, "native_bf16_cpu", lambda: False)
    assert distill.native_precision(TrainConfig(amp="bf16", device="cpu")).amp is False
    monkeypatch.setattr(distill, "native_bf16_cpu", lambda: True)
    assert distill.native_precision(TrainConfig(amp="bf16", device="cpu")).amp == "bf16"
    assert distill.native_precision(TrainConfig(amp="auto", device="cpu")).amp == "auto"


def test_train_crop_is_checked_with_the_config():
    from sertk.tasks.distill import check_config

    cfg = {"task": "distill", "teacher": "exp/teacher", "student": {"type": "wav2small", "channels": 8}}
    check_config({**cfg, "data": {"train_crop": 1.0}}, "student")
    for bad in (0, -1.0, True, "1s"):
        with pytest.raises(ValueError, match="train_crop"):
            check_config({**cfg, "data": {"train_crop": bad}}, "student")
