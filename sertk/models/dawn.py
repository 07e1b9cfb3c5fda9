"""The "Dawn" A/D/V teacher: a speech encoder + mean pooling + a tanh regression head.

Same module names as the released ``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``
checkpoint (``wav2vec2.*``, ``classifier.dense``, ``classifier.out_proj``), so its
weights load into :class:`DawnRegressor` through :func:`load_released_state_dict`
without running the checkpoint's remote code. The released head emits
(arousal, dominance, valence); :attr:`DawnRegressor.forward` returns that native
order and :meth:`DawnRegressor.avd` reorders to sertk's utt2avd order
(arousal, valence, dominance).

Any encoder spec gives the backbone (sertk.models.encoder.build_encoder): a
WavLM or HuBERT (``type: wavlm``), or a Whisper checkpoint's encoder
(``name_or_path: openai/whisper-small``, ``window: clip``); the backbone
attribute keeps the name ``wav2vec2`` so the key layout is one. The waveform
is normalised per utterance (the release's processor) unless the backbone has
a front end of its own (``normalizes_waveform = False``: Whisper's log-mel).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from sertk.models.encoder import build_encoder, encode, frame_lengths, lengths_to_mask, normalize_waveform

DAWN_OUTPUTS = ("arousal", "dominance", "valence")
AVD_OUTPUTS = ("arousal", "valence", "dominance")
_TO_AVD = [DAWN_OUTPUTS.index(n) for n in AVD_OUTPUTS]
RELEASED = "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"


class RegressionHead(nn.Module):
    """Dropout -> Linear(H, H) -> tanh -> Dropout -> Linear(H, 3), as in the release."""

    def __init__(self, hidden: int, num_outputs: int = 3, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(x)))
        return self.out_proj(self.dropout(x))


class DawnRegressor(nn.Module):
    """forward(wav (B, T), lengths (B,)) -> (B, 3) in (arousal, dominance, valence) order, unclipped."""

    def __init__(self, backbone: nn.Module, dropout: float | None = None):
        super().__init__()
        self.config = backbone.config
        self.wav2vec2 = backbone
        p = dropout if dropout is not None else getattr(self.config, "final_dropout", 0.1)
        self.classifier = RegressionHead(self.config.hidden_size, 3, p)

    @classmethod
    def from_spec(cls, spec: dict) -> "DawnRegressor":
        """A fresh head on any encoder spec: a local model ``{type: wav2vec2, config: {...}, dropout: 0.1}``,
        a pretrained backbone ``{name_or_path: microsoft/wavlm-large, revision: ...}`` or a Whisper one."""
        spec = dict(spec)
        dropout = spec.pop("dropout", None)
        return cls(build_encoder(spec), dropout)

    @property
    def normalizes_waveform(self) -> bool:
        """Whether forward normalises each waveform: the release's processor does (do_normalize=True);
        a backbone with its own front end (Whisper's log-mel) says it must not."""
        return getattr(self.wav2vec2, "normalizes_waveform", True)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        if self.normalizes_waveform:
            wav = normalize_waveform(wav, lengths)
        hidden = encode(self.wav2vec2, wav, lengths).last_hidden_state  # an utterance's, whatever its batch
        n = frame_lengths(self.wav2vec2, lengths).clamp(min=1, max=hidden.shape[1])
        fmask = lengths_to_mask(n, hidden.shape[1]).to(hidden.dtype)[..., None]
        pooled = (hidden * fmask).sum(1) / n[:, None].to(hidden.dtype)
        return self.classifier(pooled)

    def avd(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs in sertk's (arousal, valence, dominance) order."""
        return self(wav, lengths)[:, _TO_AVD]


def released_key_map(key: str) -> str:
    """Name of a released-checkpoint key in :class:`DawnRegressor`'s state dict.

    Old checkpoints store the weight-normed positional conv as ``weight_g``/``weight_v``;
    current torch names them ``parametrizations.weight.original0``/``original1``.
    """
    key = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", key)
    return re.sub(r"\.weight_v$", ".parametrizations.weight.original1", key)


def load_released_state_dict(model: DawnRegressor, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Load released (or sertk) weights; every model weight must be present, extras are refused."""
    own = model.state_dict()
    mapped = {released_key_map(k): v for k, v in state.items()}
    optional = {k for k in own if k.endswith("masked_spec_embed")}  # only used for SpecAugment in training
    missing = sorted(set(own) - set(mapped) - optional)
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(f"{where}: does not fit the Dawn architecture; missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{where}: shape mismatch for {bad[:5]}, e.g. {bad[0]}: "
                         f"{tuple(mapped[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}")
    model.load_state_dict(mapped, strict=False)


def load_released(path: str | Path, revision: str | None = None) -> DawnRegressor:
    """Build the teacher from a checkpoint dir (config.json + model.safetensors or pytorch_model.bin).

    A hub name is resolved through the local hub cache (``huggingface_hub``, honours
    HF_HUB_OFFLINE); remote code is never run and pickles load with weights_only.
    """
    root = Path(path)
    if not root.is_dir():
        from huggingface_hub import snapshot_download
        root = Path(snapshot_download(str(path), revision=revision,
                                      allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"]))
    cfg_file = root / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{root}: no config.json (not a Dawn checkpoint dir)")
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("architectures", None)
    cfg.pop("auto_map", None)
    model = DawnRegressor.from_spec({"type": cfg.pop("model_type", "wav2vec2"), "config": cfg})
    st = sorted(root.glob("*.safetensors"))
    if st:
        state = {}
        for f in st:
            state.update(load_file(str(f)))
        where = str(st[0])
    elif (root / "pytorch_model.bin").exists():
        state = torch.load(root / "pytorch_model.bin", map_location="cpu", weights_only=True)
        where = str(root / "pytorch_model.bin")
    else:
        raise FileNotFoundError(f"{root}: no model.safetensors or pytorch_model.bin")
    load_released_state_dict(model, state, where)
    return model.eval()


class EnsembleTeacher(nn.Module):
    """Mean of several regressors' A/V/D outputs (sertk order), e.g. Dawn + a WavLM regressor."""

    def __init__(self, members: list[DawnRegressor]):
        super().__init__()
        if not members:
            raise ValueError("EnsembleTeacher needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([m.avd(wav, lengths) for m in self.members]).mean(0)
