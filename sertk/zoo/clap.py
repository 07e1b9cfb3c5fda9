"""Zoo CLAPs: a ``ClapModel`` + ``ClapProcessor`` trained contrastively on the pool's audio-caption pairs.

LAION-CLAP's recipe in miniature: an HTSAT (Swin) audio tower over log-mel
spectrograms and a RoBERTa text tower with a byte-level BPE tokenizer, each
projected into one space and trained with the symmetric InfoNCE loss that
``ClapModel(return_loss=True)`` computes, on (crop of a pool utterance, its
caption) pairs. The captions describe how the voice sounds (pitch, rate,
loudness, channel) and name the emotion with one of several synonyms, so
class prompts ("the speaker sounds angry") land near the audio of that
emotion without any classifier being trained: the zero-shot behaviour ZS-Fuse
(stage 9) scores. The checkpoint is selected on the pool-dev speakers' zero-
shot UAR from class prompts; no mini_emo evaluation set is read.

Log-mel crops are computed once, before training (``data.crops`` random crops
per utterance, one drawn per epoch), by the batched front end the zero-shot
scorer uses, which equals the saved ``ClapFeatureExtractor``'s features, so a
scorer that loads ``zoo/<name>`` sees the features the model was trained on.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

from sertk.eval.metrics import classification_metrics
from sertk.models.clap_zeroshot import ClapFrontEnd
from sertk.tasks import reject_unknown
from sertk.train.inference import model_device
from sertk.train.trainer import Trainer, TrainConfig
from sertk.zoo.common import count_params
from sertk.zoo.pool import Pool

log = logging.getLogger(__name__)
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4
FEATURE_KEYS = {"sample_rate", "feature_size", "hop_length", "fft_window_size", "max_length_s", "frequency_min",
                "frequency_max", "padding"}
DATA_KEYS = {"domains", "dev_speakers", "crops", "dev_prompt", "clause_prob", "key_clause"}
DEV_PROMPT = "the speaker sounds {}"


def check(entry: dict, where: str) -> None:
    reject_unknown(entry, {"trainer", "stands_in_for", "description", "config", "features", "tokenizer", "data",
                           "train"}, where)
    reject_unknown(entry.get("config") or {}, {"projection_dim", "logit_scale_init_value", "audio", "text"},
                   f"{where}: config")
    reject_unknown(entry.get("features") or {}, FEATURE_KEYS, f"{where}: features")
    reject_unknown(entry.get("tokenizer") or {}, {"vocab_size", "min_frequency"}, f"{where}: tokenizer")
    reject_unknown(entry.get("data") or {}, DATA_KEYS, f"{where}: data")
    TrainConfig.from_dict(dict(entry.get("train") or {}))
    config = clap_config(entry, vocab_size=512)
    a, f = config.audio_config, entry.get("features") or {}
    if int(f.get("feature_size", 64)) != a.num_mel_bins:
        raise ValueError(f"{where}: features.feature_size must equal config.audio.num_mel_bins ({a.num_mel_bins})")
    if a.spec_size % a.num_mel_bins:
        raise ValueError(f"{where}: config.audio.spec_size must be a multiple of num_mel_bins")
    frames = int(f.get("max_length_s", 10)) * int(f.get("sample_rate", 48000)) // int(f.get("hop_length", 480)) + 1
    if frames > a.spec_size * (a.spec_size // a.num_mel_bins):
        raise ValueError(f"{where}: a {f.get('max_length_s')} s window gives {frames} frames, more than the HTSAT "
                         f"input ({a.spec_size * (a.spec_size // a.num_mel_bins)}): shorten it or raise spec_size")


def shrink(entry: dict) -> None:
    """Smoke size (sertk.zoo.common.shrink_zoo_config): narrow towers, one crop per utterance."""
    entry["config"]["audio"].update(patch_embeds_hidden_size=16,
                                    hidden_size=16 * 2 ** (len(entry["config"]["audio"].get("depths", [1, 1])) - 1))
    entry["config"]["text"].update(hidden_size=32, intermediate_size=64)
    entry.setdefault("data", {}).update(crops=1, dev_speakers=1)


def clap_config(entry: dict, vocab_size: int) -> ClapConfig:
    c = dict(entry.get("config") or {})
    text = {"vocab_size": vocab_size, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
            **(c.pop("text", None) or {})}
    return ClapConfig(text_config=text, audio_config=dict(c.pop("audio", None) or {}), **c)


def feature_extractor(entry: dict) -> ClapFeatureExtractor:
    """LAION's unfused front end (``rand_trunc``: one crop, Slaney mel) at the entry's rate and window."""
    f = dict(entry.get("features") or {})
    return ClapFeatureExtractor(feature_size=int(f.get("feature_size", 64)),
                                sampling_rate=int(f.get("sample_rate", 48000)),
                                hop_length=int(f.get("hop_length", 480)), max_length_s=int(f.get("max_length_s", 10)),
                                fft_window_size=int(f.get("fft_window_size", 1024)),
                                frequency_min=float(f.get("frequency_min", 0)),
                                frequency_max=float(f.get("frequency_max", 14000)), truncation="rand_trunc",
                                padding=f.get("padding", "repeatpad"))


def train_tokenizer(lines: list[str], vocab_size: int, min_frequency: int = 2) -> RobertaTokenizer:
    """RoBERTa's byte-level BPE (any text encodes) trained on ``lines`` in a fixed order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sorted(set(lines)), trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return RobertaTokenizer(vocab=state["vocab"], merges=merges)


def class_words(pool: Pool) -> dict[str, str]:
    """The plain emotion word of each pool class (the caption generator's first synonym)."""
    from sertk.data.synth.caption import EMOTION_WORDS
    return {e: EMOTION_WORDS.get(e, (e,))[0] for e in pool.emotions}


# ------------------------------------------------------------------ data --


def crop_windows(wav: np.ndarray, window: int, crops: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``crops`` random window-long crops of one utterance (the whole utterance when it is shorter)."""
    out = []
    for _ in range(crops):
        start = int(rng.integers(0, len(wav) - window + 1)) if len(wav) > window else 0
        out.append(wav[start:start + window])
    return out


_MELS: dict = {}  # (pool, front end, crops, seed) -> utt -> [crops, frames, mels]: shared by a build's CLAPs


def log_mel_crops(pool: Pool, utts: list[str], fe: ClapFeatureExtractor, crops: int, seed: int,
                  batch: int = 128) -> dict[str, np.ndarray]:
    """utt -> [crops, frames, mels] log-mel windows, computed by the batched front end the scorer uses
    (equal to the saved extractor's features; ``sertk.models.clap_zeroshot.ClapFrontEnd``)."""
    key = (pool.digest, json.dumps(fe.to_dict(), sort_keys=True, default=str), crops, seed, tuple(utts))
    if key not in _MELS:
        front = ClapFrontEnd(fe)
        audio = pool.audio(fe.sampling_rate)
        clips = []
        for i, u in enumerate(utts):
            clips += crop_windows(audio[u], front.window, crops, np.random.default_rng([seed, 11, i]))
        feats = np.concatenate([front(clips[i:i + batch])[0][:, 0].numpy() for i in range(0, len(clips), batch)])
        _MELS.clear()  # one pool's crops at a time
        _MELS[key] = {u: feats[i * crops:(i + 1) * crops] for i, u in enumerate(utts)}
    return _MELS[key]


def caption_clauses(caption: str) -> list[str]:
    """The caption's clauses ("she sounds cheerful", "heard over a telephone line"): LAION-CLAP-style
    text augmentation that trains each described trait on its own, read from the caption text alone."""
    parts = [p.strip(" .") for p in re.split(r"[,;:]", caption)]
    return [p for p in parts if len(p.split()) >= 2] or [caption]


def key_clause(caption: str, word: str) -> str | None:
    """The caption's first clause holding ``word`` (e.g. "sounds": how the speaker sounds), if any."""
    return next((c for c in caption_clauses(caption) if word in c.split()), None)


class CaptionCrops(torch.utils.data.Dataset):
    """(log-mel crop, caption ids) pairs. Per epoch the crop changes, and the text may be one clause of
    the caption instead of all of it: the key clause with probability ``key_prob``, else any clause
    with probability ``clause_prob``."""

    def __init__(self, utts: list[str], mels: dict[str, np.ndarray], ids: dict[str, list[int]], seed: int,
                 clauses: dict[str, list[list[int]]] | None = None, clause_prob: float = 0.0,
                 keys: dict[str, list[int]] | None = None, key_prob: float = 0.0):
        self.utts, self.mels, self.ids, self.seed, self.epoch = utts, mels, ids, seed, 0
        self.clauses, self.clause_prob = clauses or {}, float(clause_prob)
        self.keys, self.key_prob = keys or {}, float(key_prob)

    def __len__(self):
        return len(self.utts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i):
        u = self.utts[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        k = int(rng.integers(len(self.mels[u])))
        ids, r = self.ids[u], rng.random()
        if r < self.key_prob and u in self.keys:
            ids = self.keys[u]
        elif r < self.key_prob + self.clause_prob and self.clauses:
            ids = self.clauses[u][int(rng.integers(len(self.clauses[u])))]
        return {"mel": torch.from_numpy(self.mels[u][k]), "ids": ids}


def _collate(pad_id: int):
    def fn(items):
        width = max(len(it["ids"]) for it in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        for b, it in enumerate(items):
            ids[b, :len(it["ids"])] = torch.tensor(it["ids"])
        return {"input_features": torch.stack([it["mel"] for it in items])[:, None], "input_ids": ids,
                "attention_mask": (ids != pad_id).long()}
    return fn


class ZeroShotDev:
    """Pool-dev figures: contrastive loss and zero-shot UAR from one class prompt per emotion."""

    def __init__(self, tokenizer, emotions: list[str], words: dict[str, str], gold: list[str], prompt: str):
        self.emotions, self.gold = emotions, gold
        self.prompts = tokenizer([prompt.format(words[e]) for e in emotions], padding=True, return_tensors="pt")

    def __call__(self, model, loader) -> dict:
        dev = model_device(model)
        was = model.training
        model.eval()
        tot, n, audio = 0.0, 0, []
        try:
            with torch.no_grad():
                for batch in loader:
                    batch = {k: v.to(dev) for k, v in batch.items()}
                    out = model(**batch, return_loss=True)
                    tot, n = tot + float(out.loss) * len(out.audio_embeds), n + len(out.audio_embeds)
                    audio.append(out.audio_embeds)
                text = model.get_text_features(**{k: v.to(dev) for k, v in self.prompts.items()}).pooler_output
        finally:
            model.train(was)
        pred = (torch.cat(audio) @ text.T).argmax(1).tolist()
        uar = classification_metrics(self.gold, [self.emotions[i] for i in pred], self.emotions)["uar"]
        return {"loss": tot / max(n, 1), "zs_uar": float(uar)}


def train(name: str, entry: dict, pool: Pool, workdir: Path, outdir: Path, zoo_dir: Path | None = None) -> dict:
    data = entry.get("data") or {}
    fe = feature_extractor(entry)
    tcfg = TrainConfig.from_dict({"select_metric": "zs_uar", "select_mode": "max", **(entry.get("train") or {})})
    domains = data.get("domains")
    train_utts, dev_utts = pool.split(int(data.get("dev_speakers", 4)))
    if domains:  # a CLAP trained on one recording domain only (as LAION's general vs speech mixes differ)
        dom = pool.field("utt2domain")
        train_utts = [u for u in train_utts if dom[u] in domains]
    captions = pool.field("utt2caption")
    words = class_words(pool)
    prompt = data.get("dev_prompt", DEV_PROMPT)
    t = entry.get("tokenizer") or {}
    tokenizer = train_tokenizer([captions[u] for u in train_utts] + [prompt.format(w) for w in words.values()],
                                int(t.get("vocab_size", 512)), int(t.get("min_frequency", 2)))
    config = clap_config(entry, len(tokenizer))
    model = ClapModel(config)
    limit = config.text_config.max_position_embeddings - 2  # RoBERTa positions start after the pad id
    ids = {u: tokenizer(captions[u], truncation=True, max_length=limit)["input_ids"] for u in train_utts + dev_utts}
    clause_prob = float(data.get("clause_prob", 0.0))
    clauses = {u: [tokenizer(c, truncation=True, max_length=limit)["input_ids"] for c in caption_clauses(captions[u])]
               for u in train_utts} if clause_prob else {}
    kc = data.get("key_clause") or {}
    keys = {u: tokenizer(c, truncation=True, max_length=limit)["input_ids"] for u in train_utts
            if (c := key_clause(captions[u], str(kc.get("word", "sounds")))) is not None} if kc else {}
    crops = int(data.get("crops", 2))
    mels = dict(log_mel_crops(pool, pool.utts, fe, crops, tcfg.seed))  # every CLAP of a build reads the same
    mels.update({u: mels[u][:1] for u in dev_utts})  # one fixed crop per dev utterance
    dev_eval = ZeroShotDev(tokenizer, pool.emotions, words, [pool.datadir.utt2emo[u] for u in dev_utts], prompt)

    def compute_loss(m, batch):
        return m(**batch, return_loss=True).loss

    trainer = Trainer(model, CaptionCrops(train_utts, mels, ids, tcfg.seed, clauses, clause_prob, keys,
                                          float(kc.get("prob", 0.0))),
                      CaptionCrops(dev_utts, mels, ids, 0),
                      _collate(tokenizer.pad_token_id), compute_loss, dev_eval, tcfg, workdir)
    summary = trainer.fit(resume=True)
    trainer.load_best()
    model = model.cpu().eval()
    model.save_pretrained(outdir)
    ClapProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(outdir)
    a = config.audio_config
    dev = {k: round(float(v), 4) for k, v in summary["best_metrics"].items() if isinstance(v, (int, float))
           and math.isfinite(v)}
    return {"class": type(model).__name__, "params": count_params(model),
            "audio_params": count_params(model.audio_model) + count_params(model.audio_projection),
            "text_params": count_params(model.text_model) + count_params(model.text_projection),
            "objective": "symmetric InfoNCE (ClapModel return_loss) on (log-mel crop, caption) pairs",
            "audio_tower": f"HTSAT depths {list(a.depths)}, width {a.patch_embeds_hidden_size}-{a.hidden_size}, "
            f"{a.num_mel_bins} mels, {fe.max_length_s} s window at {fe.sampling_rate} Hz",
            "text_tower": f"RoBERTa {config.text_config.num_hidden_layers} x {config.text_config.hidden_size}, "
            f"byte-level BPE {len(tokenizer)} tokens",
            "training_data": f"{len(train_utts)} pool utterances ({', '.join(domains) if domains else 'all domains'}),"
            f" {int(data.get('crops', 2))} crops each",
            "training": f"{summary['epochs_done']} epochs (best {summary['best_epoch']}), batch {tcfg.batch_size}, "
            f"{tcfg.optimizer} lr {tcfg.lr:g} {tcfg.scheduler}, selected on pool-dev zero-shot UAR "
            f"({len(dev_utts)} utterances, prompt '{prompt}')", "dev": dev}
