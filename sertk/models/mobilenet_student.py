"""MobileNet-V3/V4 students on log-mel input with an A/V/D head (timm architectures).

The image network sees the log-mel spectrogram as a one-channel image
(n_mels x frames). Built from scratch (no ImageNet weights: the hub is not
used), outputs in sertk's utt2avd order (arousal, valence, dominance).

Padding never reaches an utterance's output: with ``lengths``, every conv that
mixes time sees zeros past the utterance's end (as its own zero padding would
give when the utterance runs alone), the squeeze-excitation and the final
pooling average real frames only. Training batches therefore match
deployment, where the exported graph sees one whole utterance and no lengths.
"""
from __future__ import annotations

import torch
from torch import nn

from sertk.models.logmel import LogMel

ARCHS = {  # sertk name -> timm name
    "mobilenetv3_small": "mobilenetv3_small_100",
    "mobilenetv3_large": "mobilenetv3_large_100",
    "mobilenetv4_conv_small": "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium": "mobilenetv4_conv_medium",
}


class MobileNetStudent(nn.Module):
    """forward(wav (B, T), lengths (B,) or None) -> (B, 3) unclipped A/V/D."""

    def __init__(self, arch: str = "mobilenetv3_small", n_mels: int = 64, n_fft: int = 400, hop: int = 160,
                 sample_rate: int = 16000, num_outputs: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"MobileNetStudent: unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
        self.arch = arch
        import timm  # only the MobileNet students need it (a second of import time)

        self.frontend = LogMel(sample_rate, n_fft, hop, n_mels)
        self.net = timm.create_model(ARCHS[arch], pretrained=False, in_chans=1, num_classes=num_outputs,
                                     drop_rate=drop_rate)
        # timm draws the classifier from +-1/sqrt(outputs), made for 1000 classes: with 3 outputs the
        # first predictions are several units off the teacher's 0-1 scale, and the first epochs go to
        # undoing that. torch's fan-in init starts them near 0.
        self.net.get_classifier().reset_parameters()
        self._valid = ValidFrames()
        mask_padding(self.net, self._valid)
        self.net.to(memory_format=torch.channels_last)  # NHWC: oneDNN trains these convs ~1.3x faster on a CPU

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x, frames = self.frontend(wav, lengths)
        self._valid.set(frames, x.shape[-1])
        try:
            return self.net(x)
        finally:
            self._valid.set(None, 0)


class ValidFrames:
    """Which time columns of a feature map hold real audio, for the batch being run.

    Set by the student around one forward pass; read by the masking hooks, the
    squeeze-excitation and the pooling (a plain object, so ``deepcopy`` of the
    student copies it once and the copies' hooks share it).
    """

    def __init__(self):
        self.frames: torch.Tensor | None = None  # (B,) real log-mel frames; None: every column is real
        self.width = 0  # log-mel frames of the padded batch

    def set(self, frames: torch.Tensor | None, width: int) -> None:
        self.frames, self.width = frames, width

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, 1, W) 0/1 mask of the real columns of ``x`` (B, C, H, W), or None when all are real."""
        if self.frames is None:
            return None
        valid = downsampled_frames(self.frames, self.width, x.shape[-1])
        cols = torch.arange(x.shape[-1], device=x.device)
        return (cols[None, :] < valid[:, None]).to(x.dtype)[:, None, None, :]

    def zero_padding(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook: a conv's input is zero past each utterance's end, as when it runs alone."""
        m = self.mask(args[0])
        return None if m is None else (args[0] * m, *args[1:])


def downsampled_frames(frames: torch.Tensor, width: int, target: int) -> torch.Tensor:
    """Real columns left of ``frames`` after the stride-2 stages that take ``width`` columns to ``target``.

    Each "same"-padded stride-2 conv maps n columns to ceil(n / 2), for the
    batch and for each utterance alone, so the two are halved together.
    """
    cols, valid = width, frames
    while cols > target:
        cols, valid = -(-cols // 2), -(-valid // 2)
    if cols != target:
        raise ValueError(f"MobileNetStudent: a feature map of {target} columns is not a stride-2 reduction "
                         f"of the {width}-frame input")
    return valid


def masked_mean(x: torch.Tensor, valid: ValidFrames) -> torch.Tensor:
    """(B, C, 1, 1) mean over frequency and the real time columns (all columns without lengths)."""
    m = valid.mask(x)
    if m is None:
        return x.mean((2, 3), keepdim=True)
    count = (m.sum(3, keepdim=True) * x.shape[2]).clamp(min=1)
    return (x * m).sum((2, 3), keepdim=True) / count


class MaskedPool(nn.Module):
    """Replaces timm's global average pool (no weights) in front of its head conv and classifier."""

    def __init__(self, valid: ValidFrames):
        super().__init__()
        self._valid = valid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, self._valid)


class MaskedSqueezeExcite(nn.Module):
    """timm's squeeze-excitation, on its own layers (same names and weights), squeezing real frames only."""

    def __init__(self, se: nn.Module, valid: ValidFrames):
        super().__init__()
        self.conv_reduce, self.act1, self.conv_expand, self.gate = se.conv_reduce, se.act1, se.conv_expand, se.gate
        self._valid = valid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(masked_mean(x, self._valid))))
        return x * self.gate(s)


def mask_padding(net: nn.Module, valid: ValidFrames) -> None:
    """Make a timm MobileNet blind to padded frames, keeping its parameters and their names.

    Hooks zero the input of every conv that mixes time (pointwise convs do
    not); squeeze-excitation and the global pool become masked means.
    """
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Conv2d) and (module.kernel_size[1] > 1 or module.stride[1] > 1):
            module.register_forward_pre_hook(valid.zero_padding)
        elif type(module).__name__ == "SqueezeExcite":  # timm's; imported lazily with timm
            net.set_submodule(name, MaskedSqueezeExcite(module, valid))
    if not hasattr(net, "global_pool") or not hasattr(net, "forward_head"):
        raise TypeError(f"MobileNetStudent: {type(net).__name__} has no global_pool/forward_head to mask")
    net.global_pool = MaskedPool(valid)
