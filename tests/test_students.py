"""MobileNet students: padding never reaches an utterance's output; the no-lengths ONNX export still matches."""
import numpy as np
import pytest
import torch

from sertk.export.onnx_export import export_onnx, parity
from sertk.models.mobilenet_student import MobileNetStudent, downsampled_frames

SMALL = ["mobilenetv3_small", "mobilenetv4_conv_small"]


@pytest.mark.parametrize("arch", SMALL)
def test_padded_batch_gives_each_utterance_its_output_alone(arch):
    """Training sees padded batches, deployment one whole utterance: both must give the same A/V/D."""
    torch.manual_seed(0)
    m = MobileNetStudent(arch).eval()
    lengths = torch.tensor([16000, 9000, 4321, 12345])
    wav = torch.randn(len(lengths), 16000) * 0.1
    with torch.no_grad():
        batched = m(wav, lengths)
        alone = torch.cat([m(wav[i:i + 1, :n]) for i, n in enumerate(lengths.tolist())])
    scale = alone.abs().max()
    assert float((batched - alone).abs().max() / scale) < 1e-4


def test_parameters_keep_timm_names():
    """Masking swaps no weights: checkpoints keep timm's parameter names."""
    import timm

    torch.manual_seed(0)
    m = MobileNetStudent("mobilenetv3_small")
    plain = timm.create_model("mobilenetv3_small_100", pretrained=False, in_chans=1, num_classes=3)
    assert {f"net.{k}" for k in plain.state_dict()} == {k for k in m.state_dict() if k.startswith("net.")}


def test_downsampled_frames_follow_the_stride_2_stages():
    frames = torch.tensor([100, 37, 1])
    assert downsampled_frames(frames, 100, 25).tolist() == [25, 10, 1]
    assert downsampled_frames(frames, 101, 13).tolist() == [13, 5, 1]
    with pytest.raises(ValueError, match="stride-2"):
        downsampled_frames(frames, 100, 30)


@pytest.mark.parametrize("arch", SMALL)
def test_onnx_export_without_lengths_matches_torch(arch, tmp_path):
    torch.manual_seed(0)
    m = MobileNetStudent(arch).eval()
    fp32 = export_onnx(m, tmp_path / "m.onnx", {"sample_rate": 16000})
    rng = np.random.default_rng(0)
    wavs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (4000, 23_456)]
    assert parity(m, fp32, wavs) < 1e-4
