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
