"""Zoo speech encoders (``Wav2Vec2Model``, ``WavLMModel``, ``HubertModel``) pre-trained on the pool.

The objective has three weighted parts, each on or off in the zoo config:

* ``masked_prediction`` (HuBERT's first iteration): spans of the CNN frames are
  replaced by the model's ``masked_spec_embed`` and the last layer predicts,
  at the masked frames, k-means cluster ids of log-mel frames of the audio
  (clusters fitted on the pool's training speakers);
* ``frame_regression`` (PASE+'s workers): one layer regresses, at every frame,
  the log-mel spectrum and the prosody of the clean audio (log F0 in
  semitones, log energy), z-normalised over the pool: the cues emotion lives
  in, learnt far faster than from masked prediction alone;
* ``denoise`` (WavLM's recipe): with probability ``prob`` the input is mixed
  with another pool utterance at an SNR drawn from ``snr_db``; every target
  stays that of the primary utterance;
* ``utterance``: mean-pooled hidden states of one layer predict the pool's
  emotion (cross-entropy) and A/V/D (MSE) through linear heads, as
  emotion-aware encoders are trained (emotion2vec; the fine-tuned Dawn
  teacher). Real ``wav2vec2-base`` has no such supervision: say so where a
  result depends on it.

Only the encoder is saved (``save_pretrained`` + a ``Wav2Vec2FeatureExtractor``);
the heads exist for pre-training alone.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

from sertk.data.dataset import collate_audio
from sertk.eval.metrics import classification_metrics, regression_metrics
from sertk.models.encoder import disable_layerdrop, frame_lengths, lengths_to_mask, normalize_waveform
from sertk.tasks import reject_unknown
from sertk.train.inference import model_device, to_device
from sertk.train.trainer import Trainer, TrainConfig, bucketed_batches
from sertk.zoo.common import MemoryAudioSet, count_params
from sertk.zoo.pool import Pool

log = logging.getLogger(__name__)
TYPES = ("wav2vec2", "wavlm", "hubert")
OBJECTIVE_KEYS = {"masked_prediction": {"weight", "clusters", "mask_prob", "mask_length"},
                  "frame_regression": {"weight", "layer"},
                  "utterance": {"weight", "layer", "avd_weight", "pooling"},
                  "denoise": {"prob", "snr_db"}}
DATA_KEYS = {"sample_rate", "max_duration", "dev_speakers", "buckets", "n_mels", "normalize"}


def check(entry: dict, where: str) -> None:
    reject_unknown(entry, {"trainer", "stands_in_for", "description", "type", "config", "objective", "data",
                           "train"}, where)
    if entry.get("type") not in TYPES:
        raise ValueError(f"{where}: type must be one of {', '.join(TYPES)}, got {entry.get('type')!r}")
    obj = entry.get("objective") or {}
    reject_unknown(obj, set(OBJECTIVE_KEYS), f"{where}: objective")
    for part, keys in OBJECTIVE_KEYS.items():
        reject_unknown(obj.get(part) or {}, keys, f"{where}: objective.{part}")
    if not (obj.get("masked_prediction") or obj.get("utterance") or obj.get("frame_regression")):
        raise ValueError(f"{where}: objective needs masked_prediction, frame_regression and/or utterance")
    reject_unknown(entry.get("data") or {}, DATA_KEYS, f"{where}: data")
    TrainConfig.from_dict(dict(entry.get("train") or {}))
    config = _config(entry)
    if obj.get("masked_prediction") and not config.mask_time_prob > 0:
        raise ValueError(f"{where}: masked_prediction needs config.mask_time_prob > 0 (the model only has "
                         f"a mask embedding then)")
    for part in ("utterance", "frame_regression"):
        layer = (obj.get(part) or {}).get("layer", config.num_hidden_layers)
        if not 0 <= int(layer) <= config.num_hidden_layers:
            raise ValueError(f"{where}: objective.{part}.layer {layer} outside 0..{config.num_hidden_layers}")


def shrink(entry: dict) -> None:
    """Smoke size (sertk.zoo.common.shrink_zoo_config): narrow layers, few clusters, one dev speaker."""
    entry["config"].update(hidden_size=32, intermediate_size=64, num_attention_heads=2)
    entry["data"]["dev_speakers"] = 1
    entry["objective"]["masked_prediction"]["clusters"] = 4


def _config(entry: dict):
    return AutoConfig.for_model(entry["type"], **(entry.get("config") or {}))


def frame_geometry(config) -> tuple[int, int]:
    """(receptive field, hop) of the CNN front end in samples: where each encoder frame looks."""
    field, jump = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        field += (k - 1) * jump
        jump *= s
    return field, jump


# ---------------------------------------------------------------- targets --


def frame_targets(wav: np.ndarray, sample_rate: int, field: int, hop: int, n_mels: int) -> np.ndarray:
    """Per encoder frame (window = receptive field, step = hop): log-mel (mean-normalised per
    utterance), log energy and F0 in semitones re 100 Hz; shape [frames, n_mels + 2]."""
    import torchaudio
    if len(wav) < field:
        return np.zeros((0, n_mels + 2), np.float32)
    x = torch.from_numpy(wav)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=field, hop_length=hop, n_mels=n_mels,
                                               center=False, power=2.0)(x)
    logmel = torch.log(mel + 1e-6).T
    energy = torch.log(mel.sum(0) + 1e-6)
    f0 = torchaudio.functional.detect_pitch_frequency(x, sample_rate, frame_time=hop / sample_rate, win_length=5,
                                                      freq_low=60, freq_high=500)
    f0 = torch.nn.functional.interpolate(f0.view(1, 1, -1), size=logmel.shape[0], mode="nearest").view(-1)
    semitones = 12 * torch.log2(f0.clamp(min=30.0) / 100.0)
    return torch.cat([logmel - logmel.mean(0, keepdim=True), energy[:, None], semitones[:, None]], 1).numpy()


def cluster_targets(frames: dict[str, np.ndarray], fit_utts: list[str], k: int, seed: int
                    ) -> tuple[dict[str, np.ndarray], float]:
    """k-means cluster id of every frame's log-mel (fitted on ``fit_utts`` only) and the inertia per frame."""
    from sklearn.cluster import MiniBatchKMeans
    fit = np.concatenate([frames[u] for u in fit_utts])
    rng = np.random.default_rng(seed)
    if len(fit) > 60000:
        fit = fit[rng.choice(len(fit), 60000, replace=False)]
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096).fit(fit)
    return ({u: km.predict(f).astype(np.int64) if len(f) else np.zeros(0, np.int64) for u, f in frames.items()},
            float(km.inertia_ / len(fit)))


# ------------------------------------------------------------------ model --


class PretrainModel(nn.Module):
    """The encoder plus the pre-training heads; forward gives what the losses need."""

    def __init__(self, encoder: nn.Module, n_clusters: int, n_emotions: int, layer: int, n_frame_targets: int,
                 frame_layer: int, normalize: bool = True, pooling: str = "mean"):
        super().__init__()
        self.normalize, self.with_std = normalize, pooling == "mean+std"
        h = encoder.config.hidden_size
        self.encoder, self.layer, self.frame_layer = encoder, layer, frame_layer
        self.cluster_head = nn.Linear(h, max(n_clusters, 1))
        self.frame_head = nn.Linear(h, n_frame_targets)
        pooled = 2 * h if self.with_std else h
        self.emotion_head = nn.Linear(pooled, n_emotions)
        self.avd_head = nn.Linear(pooled, 3)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, mask_time_indices: torch.Tensor | None = None):
        if self.normalize:
            wav = normalize_waveform(wav, lengths)
        att = lengths_to_mask(lengths, wav.shape[1]).long()
        out = self.encoder(wav, attention_mask=att, mask_time_indices=mask_time_indices, output_hidden_states=True)
        hs = out.hidden_states
        flen = frame_lengths(self.encoder, lengths).clamp(max=hs[-1].shape[1])
        valid = lengths_to_mask(flen, hs[-1].shape[1]).unsqueeze(-1).to(hs[-1].dtype)
        n = valid.sum(1).clamp(min=1)
        pooled = (hs[self.layer] * valid).sum(1) / n
        if self.with_std:  # the statistics a mean+std probe reads
            var = (((hs[self.layer] - pooled.unsqueeze(1)) * valid) ** 2).sum(1) / n
            pooled = torch.cat([pooled, torch.sqrt(var + 1e-6)], -1)
        return {"clusters": self.cluster_head(hs[-1]), "frames": self.frame_head(hs[self.frame_layer]),
                "emotion": self.emotion_head(pooled),
                "avd": self.avd_head(pooled), "frame_lengths": flen}


def mix_interference(wav: torch.Tensor, lengths: torch.Tensor, prob: float, snr_db: tuple[float, float]
                     ) -> torch.Tensor:
    """WavLM-style denoising input: add the batch's next utterance to some utterances at a drawn SNR."""
    b = wav.shape[0]
    if b < 2 or prob <= 0:
        return wav
    other = torch.roll(wav, 1, 0)
    mask = lengths_to_mask(lengths, wav.shape[1]).to(wav.dtype)
    other = other * mask
    p_sig = (wav ** 2).sum(1) / lengths.clamp(min=1)
    p_oth = (other ** 2).sum(1) / mask.sum(1).clamp(min=1)
    snr = torch.empty(b).uniform_(*snr_db).to(wav.device)  # drawn on the CPU: the same draws on any device
    gain = torch.sqrt(p_sig / (p_oth.clamp(min=1e-10) * 10 ** (snr / 10)))
    chosen = (torch.rand(b) < prob).to(wav.device, wav.dtype)
    return wav + (chosen * gain).unsqueeze(1) * other


def mask_spans(frame_lengths: torch.Tensor, width: int, prob: float, span: int) -> torch.Tensor:
    """HuBERT/wav2vec 2.0 span masks over each utterance's real frames (numpy RNG, seeded per epoch)."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices
    att = lengths_to_mask(frame_lengths.cpu(), width).long()
    m = _compute_mask_indices((len(frame_lengths), width), mask_prob=prob, mask_length=span, attention_mask=att,
                              min_masks=1)
    return torch.from_numpy(m).to(torch.bool) & att.bool()


# ------------------------------------------------------------------ train --


def _collate(items: list[dict]) -> dict:
    """collate_audio's padded audio plus the frame targets, padded with -100 (ignored) and zeros."""
    audio = collate_audio([{"utt": it["utt"], "wav": it["wav"]} for it in items])
    width = max(1, max(len(it["targets"]) for it in items))
    targets = torch.full((len(items), width), -100, dtype=torch.long)
    regress = torch.zeros(len(items), width, items[0]["regress"].shape[1])
    n_frames = torch.tensor([len(it["regress"]) for it in items])
    for b, it in enumerate(items):
        targets[b, :len(it["targets"])] = torch.from_numpy(it["targets"])
        regress[b, :len(it["regress"])] = torch.from_numpy(it["regress"])
    return {"utts": audio["utts"], "wav": audio["wav"], "lengths": audio["lengths"], "targets": targets,
            "regress": regress, "regress_frames": n_frames,
            "labels": torch.tensor([it["label"] for it in items]), "avd": torch.stack([it["avd"] for it in items])}


class Objective:
    """The weighted pre-training loss, and the dev figures that go with it."""

    def __init__(self, obj: dict, emotions: list[str]):
        self.mp = obj.get("masked_prediction") or {}
        self.fr = obj.get("frame_regression") or {}
        self.utt = obj.get("utterance") or {}
        self.noise = obj.get("denoise") or {}
        self.emotions = emotions

    def losses(self, model, batch: dict, train: bool) -> dict[str, torch.Tensor]:
        wav, lengths = batch["wav"], batch["lengths"]
        if train and self.noise:
            wav = mix_interference(wav, lengths, float(self.noise.get("prob", 0.0)),
                                   tuple(self.noise.get("snr_db", [0.0, 10.0])))
        mask = None
        if self.mp:
            base = model.module if hasattr(model, "module") else model
            flen = frame_lengths(base.encoder, lengths)
            width = int(base.encoder._get_feat_extract_output_lengths(torch.tensor(wav.shape[1])))
            mask = mask_spans(flen, width, float(self.mp.get("mask_prob", 0.4)),
                              int(self.mp.get("mask_length", 4))).to(wav.device)
        out = model(wav, lengths, mask)
        parts = {}
        if self.mp:
            logits = out["clusters"]
            tgt = batch["targets"][:, :logits.shape[1]]
            if tgt.shape[1] < logits.shape[1]:
                tgt = torch.nn.functional.pad(tgt, (0, logits.shape[1] - tgt.shape[1]), value=-100)
            tgt = tgt.masked_fill(~mask, -100)
            parts["mp"] = nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100)
            hit = (logits.argmax(-1) == tgt) & (tgt >= 0)
            parts["mp_acc"] = hit.sum() / (tgt >= 0).sum().clamp(min=1)
        if self.fr:
            pred = out["frames"]
            n = torch.minimum(batch["regress_frames"].to(pred.device), out["frame_lengths"].to(pred.device))
            width = min(pred.shape[1], batch["regress"].shape[1])
            valid = lengths_to_mask(n, width).unsqueeze(-1).to(pred.dtype)
            err = (pred[:, :width] - batch["regress"][:, :width]) ** 2 * valid
            parts["frame"] = err.sum() / (valid.sum() * pred.shape[-1]).clamp(min=1)
        if self.utt:
            parts["emo"] = nn.functional.cross_entropy(out["emotion"], batch["labels"])
            parts["avd"] = nn.functional.mse_loss(out["avd"], batch["avd"])
        parts["loss"] = self.total(parts)
        parts["_out"] = out
        return parts

    def total(self, parts: dict) -> torch.Tensor:
        loss = 0.0
        if self.mp:
            loss = loss + float(self.mp.get("weight", 1.0)) * parts["mp"]
        if self.fr:
            loss = loss + float(self.fr.get("weight", 1.0)) * parts["frame"]
        if self.utt:
            loss = loss + float(self.utt.get("weight", 1.0)) * (
                parts["emo"] + float(self.utt.get("avd_weight", 1.0)) * parts["avd"])
        return loss

    def compute_loss(self, model, batch):
        p = self.losses(model, batch, train=True)
        return p["loss"], {k: float(v.detach()) for k, v in p.items() if k not in ("loss", "_out")}

    def evaluate(self, model, loader) -> dict:
        """Dev loss, masked-prediction accuracy, emotion UAR and A/V/D CCC of the heads (fixed masks)."""
        state = np.random.get_state()
        np.random.seed(0)
        tot, n, acc, fr, gold, pred, avd_g, avd_p = 0.0, 0, 0.0, 0.0, [], [], [], []
        try:
            for batch in loader:  # the trainer's dev loader gives CPU batches
                p = self.losses(model, to_device(batch, model_device(model)), train=False)
                b = len(batch["utts"])
                tot, n = tot + float(p["loss"]) * b, n + b
                acc += float(p.get("mp_acc", 0.0)) * b
                fr += float(p.get("frame", 0.0)) * b
                out = p["_out"]
                gold += [self.emotions[i] for i in batch["labels"].tolist()]
                pred += [self.emotions[i] for i in out["emotion"].argmax(1).tolist()]
                avd_g.append(batch["avd"].cpu())
                avd_p.append(out["avd"].float().cpu())
        finally:
            np.random.set_state(state)
        r = {"loss": tot / max(n, 1)}
        if self.mp:
            r["mp_acc"] = acc / max(n, 1)
        if self.fr:
            r["frame_mse"] = fr / max(n, 1)
        if self.utt:
            r["emo_uar"] = classification_metrics(gold, pred, self.emotions)["uar"]
            r["avd_ccc"] = regression_metrics(torch.cat(avd_p).numpy(), torch.cat(avd_g).numpy(),
                                              ["arousal", "valence", "dominance"])["ccc_mean"]
        return r


def describe(obj: dict) -> str:
    parts = []
    if obj.get("masked_prediction"):
        mp = obj["masked_prediction"]
        parts.append(f"HuBERT-style masked prediction of {mp.get('clusters', 48)} k-means log-mel clusters "
                     f"(mask p={mp.get('mask_prob', 0.4)}, span {mp.get('mask_length', 4)})")
    if obj.get("frame_regression"):
        parts.append(f"PASE-style regression of per-frame log-mel, log energy and F0 on layer "
                     f"{obj['frame_regression'].get('layer')}")
    if obj.get("denoise"):
        d = obj["denoise"]
        parts.append(f"WavLM-style denoising (another utterance mixed in with p={d.get('prob')}, "
                     f"SNR {d.get('snr_db')} dB)")
    if obj.get("utterance"):
        u = obj["utterance"]
        parts.append(f"utterance emotion + A/V/D heads on the {u.get('pooling', 'mean')} of layer {u.get('layer')} "
                     f"(pool labels)")
    return "; ".join(parts)


def train(name: str, entry: dict, pool: Pool, workdir: Path, outdir: Path, zoo_dir: Path | None = None) -> dict:
    obj = entry.get("objective") or {}
    data = entry.get("data") or {}
    sr = int(data.get("sample_rate", 16000))
    config = _config(entry)
    encoder = AutoModel.from_config(config)
    disable_layerdrop(encoder)
    field, hop = frame_geometry(config)
    tcfg = TrainConfig.from_dict({"select_metric": "loss", "select_mode": "min", **(entry.get("train") or {})})
    audio = pool.audio(sr)
    train_utts, dev_utts = pool.split(int(data.get("dev_speakers", 4)))
    emotions = pool.emotions
    mp = obj.get("masked_prediction") or {}
    n_mels = int(data.get("n_mels", 40))
    frames = {u: frame_targets(audio[u], sr, field, hop, n_mels) for u in pool.utts}
    n_clusters = int(mp.get("clusters", 48)) if mp else 0
    if mp:
        targets, inertia = cluster_targets({u: f[:, :n_mels] for u, f in frames.items()}, train_utts, n_clusters,
                                           tcfg.seed)
        log.info("zoo/%s: %d k-means targets on %d frames (inertia/frame %.2f)", name, n_clusters,
                 sum(len(f) for f in frames.values()), inertia)
    else:
        targets = {u: np.zeros(len(f), np.int64) for u, f in frames.items()}
    fit = np.concatenate([frames[u] for u in train_utts])
    mean, std = fit.mean(0), fit.std(0) + 1e-5
    regress = {u: ((f - mean) / std).astype(np.float32) for u, f in frames.items()}
    u2e, u2a = pool.datadir.utt2emo, pool.datadir.utt2avd

    def extra(utt):
        return {"targets": targets[utt], "regress": regress[utt], "label": emotions.index(u2e[utt]),
                "avd": torch.tensor(u2a[utt], dtype=torch.float32)}

    def dataset(utts, random_crop):
        return MemoryAudioSet(utts, audio, sr, data.get("max_duration"), hop, tcfg.seed, random_crop, extra,
                              frame_fields=("targets", "regress"))

    train_set, dev_set = dataset(train_utts, True), dataset(dev_utts or train_utts, False)
    layer = int((obj.get("utterance") or {}).get("layer", config.num_hidden_layers))
    frame_layer = int((obj.get("frame_regression") or {}).get("layer", config.num_hidden_layers))
    normalize = bool(data.get("normalize", True))
    model = PretrainModel(encoder, n_clusters, len(emotions), layer, n_mels + 2, frame_layer, normalize,
                          (obj.get("utterance") or {}).get("pooling", "mean"))
    objective = Objective(obj, emotions)
    trainer = Trainer(model, train_set, dev_set, _collate, objective.compute_loss,
                      objective.evaluate, tcfg, workdir,
                      batch_sampler_fn=bucketed_batches(tcfg.batch_size, tcfg.seed, int(data.get("buckets", 5))))
    summary = trainer.fit(resume=True)
    trainer.load_best()
    encoder = model.encoder.cpu().eval()
    encoder.save_pretrained(outdir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sr, padding_value=0.0, do_normalize=normalize,
                             return_attention_mask=True).save_pretrained(outdir)
    dev = {k: round(float(v), 4) for k, v in summary["best_metrics"].items() if isinstance(v, (int, float))
           and math.isfinite(v)}
    return {"class": type(encoder).__name__, "params": count_params(encoder), "objective": describe(obj),
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size, "sample_rate": sr,
            "frame_hop": hop, "training": f"{summary['epochs_done']} epochs (best {summary['best_epoch']}), "
            f"batch {tcfg.batch_size}, {tcfg.optimizer} lr {tcfg.lr:g} {tcfg.scheduler}, crops <= "
            f"{data.get('max_duration')} s, {len(dev_utts)} pool-dev utterances held out",
            "dev": dev}

