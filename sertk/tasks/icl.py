"""ICL personalisation task (stages 5-6): meta-train the speech-LM on episodes, evaluate k-shot curves.

Stage 5 (``train``) meta-trains :class:`~sertk.models.icl.ICLSpeechLM` on
episodes of the *training* speakers (sertk.data.episodes), selects the epoch
on fixed episodes of the dev speakers, and fits the conventional baselines
(sertk.models.personal_baselines) on the same cached encoder features, tuning
their settings on dev-speaker draws. Stage 6 (``evaluate``) runs, per test set,
every test speaker x k x seeded draw x enrolment condition (``arbitrary``
labels, or sets that ``cover`` every class) and scores ICL and every baseline
on the same queries.

Per split the experiment dir holds ``model.yaml``, ``best.safetensors``
(projector + LM), ``tokenizer/``, ``baselines.npz`` and per test set
``eval/<set>/``: ``results.json`` (ICL at the largest k, arbitrary
enrolment, predictions pooled over draws; ``extra.kcurve`` holds every
(condition, k, method) row, which the stage-11 report renders as the k-curve
table; ``extra.paired`` the paired test of that headline against ICL at
k = 0 and each personal baseline, :func:`paired_vs_references`),
``kcurve.tsv``, ``kcurve.png``, ``draws.tsv`` (every enrolment set) and
``predictions.tsv`` (every method's decision for every query of every draw).

The frozen encoder's layer is cached once per utterance under
``<dump>/encoder_feats`` (shared with SELM and the probes).
"""
from __future__ import annotations

import logging
from collections import ChainMap
from pathlib import Path

import numpy as np
import torch
import yaml

from sertk.common.fileio import write_text_atomic
from sertk.common.protocol import Split
from sertk.data.dataset import AudioDataset
from sertk.data.episodes import (CONDITIONS, Episode, EpisodeSampler, diverse_possible, enrolment_draws,
                                  group_by_speaker)
from sertk.eval.kcurve import markdown_table, plot_kcurve, summarise, write_tsv
from sertk.eval.metrics import bootstrap_ci, classification_metrics, scores_from_confusion
from sertk.eval.results import write_result
from sertk.eval.significance import holm, paired_test
from sertk.features.embedding_cache import encoder_features, frame_stats, frozen_encoder
from sertk.models.encoder import SPEC_KEYS
from sertk.models.heads import build_pooling
from sertk.models.causal_lm import build_causal_lm
from sertk.models.icl import EpisodeTemplate, ICLSpeechLM
from sertk.models.scoring import DEFAULT_SCORING, check_scoring
from sertk.models.personal_baselines import METHODS as BASELINE_METHODS, PersonalBaselines
from sertk.models.text_tokenizer import HFTokenizer, SentencePieceTokenizer, TextTokenizer, load_tokenizer
from sertk.tasks import TaskContext, label_map_of, reject_unknown
from sertk.train.inference import model_device, place, to_device
from sertk.train.trainer import Trainer, TrainConfig, chance_level, load_weights, verdict

log = logging.getLogger(__name__)

DEFAULT_K = [0, 1, 2, 4, 8, 16]
ICL, ICL_K0 = "icl", "icl_k0"
CI_UNITS = ("speaker", "query")  # what the headline interval resamples: whole speakers, or queries with all draws


# ------------------------------------------------------------------ config --


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "model", "data", "episodes", "train", "eval", "baselines", "label_map"}, where)
    m = cfg.get("model") or {}
    reject_unknown(m, {"encoder", "projector", "lm", "instruction", "label_prefix", "separator"}, f"{where}: model")
    enc = m.get("encoder") or {}
    reject_unknown(enc, SPEC_KEYS | {"layer", "normalize"},
                   f"{where}: model.encoder")
    if not (enc.get("name_or_path") or enc.get("type")):
        raise ValueError(f"{where}: model.encoder needs name_or_path or type+config")
    reject_unknown(m.get("projector") or {}, {"length", "proj_hidden", "mapper_layers", "mapper_heads", "dropout",
                                             "frame_pool"}, f"{where}: model.projector")
    lm = m.get("lm") or {}
    reject_unknown(lm, {"name_or_path", "revision", "config", "tokenizer", "mode", "lora"}, f"{where}: model.lm")
    reject_unknown(lm.get("tokenizer") or {}, {"vocab_size", "model_type"}, f"{where}: model.lm.tokenizer")
    reject_unknown(lm.get("lora") or {}, {"r", "alpha", "dropout", "target_modules"}, f"{where}: model.lm.lora")
    if lm.get("mode", "full") not in ("frozen", "full", "lora"):
        raise ValueError(f"{where}: model.lm.mode must be frozen, full or lora")
    reject_unknown(cfg.get("data") or {}, {"max_duration", "cache_batch_size", "preload"}, f"{where}: data")
    ep = cfg.get("episodes") or {}
    reject_unknown(ep, {"k", "per_epoch", "dev_k", "dev_queries", "dev_speakers", "speaker_augment", "diverse"},
                   f"{where}: episodes")
    if ep.get("diverse", "auto") not in (True, False, "auto"):
        raise ValueError(f"{where}: episodes.diverse must be true, false or auto, got {ep.get('diverse')!r}")
    reject_unknown(ep.get("speaker_augment") or {}, {"shift", "scale"}, f"{where}: episodes.speaker_augment")
    ev = cfg.get("eval") or {}
    reject_unknown(ev, {"k", "draws", "seed", "conditions", "batch_size", "bootstrap", "min_utterances",
                        "ci_unit", "scoring"}, f"{where}: eval")
    check_scoring(ev.get("scoring", DEFAULT_SCORING), f"{where}: eval.scoring")
    if ev.get("ci_unit", "speaker") not in CI_UNITS:
        raise ValueError(f"{where}: eval.ci_unit must be one of {list(CI_UNITS)}, got {ev.get('ci_unit')!r}")
    bad = set(ev.get("conditions", CONDITIONS)) - set(CONDITIONS)
    if bad:
        raise ValueError(f"{where}: eval.conditions: unknown {sorted(bad)}; known {list(CONDITIONS)}")
    for key, ks in (("episodes.k", ep.get("k", [0, 16])), ("eval.k", ev.get("k", DEFAULT_K))):
        if not ks or any(int(k) < 0 for k in ks):
            raise ValueError(f"{where}: {key} must be a non-empty list of k >= 0")
    if 0 not in [int(k) for k in ep.get("k", [0, 16])]:
        raise ValueError(f"{where}: episodes.k must include 0 (the paper meta-trains with k = 0 too)")
    reject_unknown(cfg.get("baselines") or {}, {"pooling", "C", "prior_weight", "finetune_grid", "ncm_grid"},
                   f"{where}: baselines")
    TrainConfig.from_dict(dict(cfg.get("train") or {}))
    if not lm.get("name_or_path") and not enc.get("name_or_path"):  # local: build it for real
        classes = ["neutral", "angry"]
        tok = _make_tokenizer(cfg, classes)
        encoder, _ = frozen_encoder({**enc, "freeze": True})
        model = _build_model(cfg, tok, classes, encoder.hidden_size)
        model.check_fits(_max_k(cfg))


def _max_k(cfg: dict) -> int:
    return max([int(k) for k in (cfg.get("episodes") or {}).get("k", [0, 16])] +
               [int(k) for k in (cfg.get("eval") or {}).get("k", DEFAULT_K)])


# ----------------------------------------------------------------- building --


def _make_tokenizer(cfg: dict, classes: list[str]) -> TextTokenizer:
    """The LM's tokenizer; a local one is trained on the template texts and ``classes`` (the label words)."""
    m = cfg["model"]
    lm = m.get("lm") or {}
    if lm.get("name_or_path"):
        return HFTokenizer(lm["name_or_path"], lm.get("revision"))
    t = lm.get("tokenizer") or {}
    texts = [m.get("instruction") or "", m.get("label_prefix") or "", m.get("separator", "\n")] + \
        [" " + c for c in classes]
    return SentencePieceTokenizer.train(texts, int(t.get("vocab_size", 64)), t.get("model_type", "bpe"))


def _build_model(cfg: dict, tokenizer: TextTokenizer, classes: list[str], feat_dim: int) -> ICLSpeechLM:
    """``classes`` are the label *words* (``angry``, not CREMA-D's ``ANG``): what the LM reads and answers."""
    m = cfg["model"]
    template = EpisodeTemplate.build(tokenizer, classes, m.get("instruction") or "", m.get("label_prefix") or "",
                                     m.get("separator", "\n"))
    lm = build_causal_lm(m.get("lm") or {}, tokenizer.vocab_size, tokenizer.eos_id)
    return ICLSpeechLM(lm, feat_dim, template, m.get("projector"))


class _Env:
    """What train and evaluate share for one split: labels, frozen encoder, cached features."""

    def __init__(self, cfg: dict, split: Split, ctx: TaskContext):
        self.cfg, self.split, self.ctx = cfg, split, ctx
        self.labels = label_map_of(cfg, split, "icl")
        self.words = self.labels.words  # the LM reads words, never corpus codes; a code without one raises here
        self.spec = {**cfg["model"]["encoder"], "freeze": True}  # as SELM's and the probes': one cache entry
        self.encoder, self.digest = frozen_encoder(self.spec, int((cfg.get("train") or {}).get("seed", 0)))
        self.data_cfg = cfg.get("data") or {}
        self.train_cfg = TrainConfig.from_dict(dict(cfg.get("train") or {}))
        pooling = (cfg.get("baselines") or {}).get("pooling", "meanstd")
        self.pool, _ = build_pooling(pooling, self.encoder.hidden_size)

    def features(self, set_name: str):
        """(data dir, utterances with a label of the map, utt -> frames, class index per utterance)."""
        ds = AudioDataset(self.ctx.datadir(set_name), sample_rate=self.ctx.sample_rate, label_map=None,
                          targets=(), max_duration=self.data_cfg.get("max_duration"))
        feats = encoder_features(self.ctx.dump / "encoder_feats", self.encoder, self.spec, self.digest, ds,
                                 set_name, batch_size=self.data_cfg.get("cache_batch_size", 1))
        dd = ds.datadir
        utts = [u for u in ds.utts if dd.utt2emo.get(u) in self.labels]
        if len(utts) < len(ds.utts):
            log.info("%s: %d utterance(s) without a class of the label map left out", set_name,
                     len(ds.utts) - len(utts))
        if self.data_cfg.get("preload", True):
            feats = {u: feats[u] for u in utts}
        y = {u: self.labels.index(self.labels.canonical(dd.utt2emo[u])) for u in utts}
        return dd, utts, feats, y

    def pooled(self, feats, utts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return np.stack([self.pool(feats[u][None], torch.tensor([len(feats[u])]))[0].numpy()
                             for u in utts]).astype(np.float64)


# -------------------------------------------------------------------- data --


class EpisodeData(torch.utils.data.Dataset):
    """Episodes as training/dev items; with a sampler, ``set_epoch`` draws the epoch's episodes.

    ``augment`` marks the items for speaker augmentation in :class:`EpisodeCollate` (training only).
    """

    def __init__(self, episodes: list[Episode] | None = None, sampler: EpisodeSampler | None = None,
                 per_epoch: int = 0, augment: bool = False):
        self.sampler, self.per_epoch, self.augment = sampler, per_epoch, augment
        self.episodes = episodes if episodes is not None else sampler.episodes(per_epoch, 0)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.episodes = self.sampler.episodes(self.per_epoch, epoch)

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> tuple[Episode, bool]:
        return self.episodes[i], self.augment


class EpisodeCollate:
    """Batches of episodes over ``feats`` (utt -> frames) and ``y`` (utt -> class index) of train and dev.

    Speaker augmentation (``shift``, ``scale`` > 0; training items only): every
    episode's frames get one random offset (``shift`` x the features' std per
    dimension) and one random per-dimension gain (log-normal, sd ``scale``), as
    if a new speaker with another voice had spoken them. With a few training
    speakers a model can otherwise memorise them instead of learning to read
    the enrolment; the draw uses torch's RNG, which the trainer seeds per epoch.
    """

    def __init__(self, feats, y: dict[str, int], feat_std: torch.Tensor | None = None, shift: float = 0.0,
                 scale: float = 0.0):
        self.feats, self.y, self.feat_std, self.shift, self.scale = feats, y, feat_std, shift, scale

    def __call__(self, items: list[tuple[Episode, bool]]) -> dict:
        augment = items[0][1] and (self.shift > 0 or self.scale > 0)
        episodes = [e for e, _ in items]
        rows: dict = {}  # distinct utterances once; augmented episodes each get their own rows
        keys = [[(b if augment else None, u) for u in (*e.enrol, e.query)] for b, e in enumerate(episodes)]
        for ks in keys:
            for key in ks:
                rows.setdefault(key, len(rows))
        frames = [self.feats[u] for _, u in rows]
        n = torch.tensor([f.shape[0] for f in frames])
        feats = torch.zeros(len(frames), int(n.max()), frames[0].shape[1])
        for i, f in enumerate(frames):
            feats[i, :n[i]] = f
        if augment:
            d = feats.shape[-1]
            shift = torch.randn(len(episodes), d) * self.shift * self.feat_std
            gain = torch.exp(torch.randn(len(episodes), d) * self.scale)
            owner = torch.tensor([b for b, _ in rows])
            valid = (torch.arange(feats.shape[1])[None] < n[:, None]).unsqueeze(-1)
            feats = (feats * gain[owner, None] + shift[owner, None]) * valid
        return {"feats": feats, "feat_lengths": n,
                "episodes": [[rows[key] for key in ks] for ks in keys],
                "labels": [[self.y[u] for u in (*e.enrol, e.query)] for e in episodes]}


def dev_episodes(speakers: dict[str, list[str]], y: dict[str, int], ks: list[int], queries: int,
                 seed: int) -> list[Episode]:
    """Fixed dev episodes: per dev speaker and k one arbitrary draw, at most ``queries`` queries each."""
    out = []
    for spk, utts in speakers.items():
        for k in ks:
            for enrol, qs in enrolment_draws(utts, [str(y[u]) for u in utts], k, 1, seed, "arbitrary", spk):
                out += [Episode(spk, tuple(enrol), q) for q in qs[:queries]]
    return out


# ------------------------------------------------------------------ train --


def _loss(m, batch):
    return m(**{k: batch[k] for k in ("feats", "feat_lengths", "episodes", "labels")})


@torch.no_grad()
def score_episodes(model: ICLSpeechLM, batch: dict) -> torch.Tensor:
    """[B, C] class scores of a collated batch of episodes."""
    batch = to_device(batch, model_device(model))
    audio = model.audio_embeds(batch["feats"], batch["feat_lengths"])
    return model.score(model.episode_contexts(audio, batch["episodes"], batch["labels"])).cpu()


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    env = _Env(cfg, split, ctx)
    classes, words = env.labels.labels, env.words
    ep = cfg.get("episodes") or {}
    ks = [int(k) for k in ep.get("k", [0, 16])]
    seed = env.train_cfg.seed
    tdd, tutts, tfeats, ty = env.features(split.train)
    tspk = group_by_speaker(tutts, tdd.utt2spk)
    if split.dev:
        ddd, dutts, dfeats, dy = env.features(split.dev)
        dspk = group_by_speaker(dutts, ddd.utt2spk)
    else:  # e.g. IEMOCAP's leave-one-session-out folds: hold training speakers out, seeded
        n = int(ep.get("dev_speakers", 2))
        if len(tspk) <= n:
            raise ValueError(f"protocol {split.tag} has no dev set and only {len(tspk)} training speakers: "
                             f"cannot hold out episodes.dev_speakers={n} of them")
        held = set(np.random.default_rng(seed).choice(sorted(tspk), size=n, replace=False).tolist())
        log.info("protocol %s has no dev set: dev speakers %s held out of training", split.tag, sorted(held))
        dspk = {s: us for s, us in tspk.items() if s in held}
        tspk = {s: us for s, us in tspk.items() if s not in held}
        tutts = [u for us in tspk.values() for u in us]
        dfeats, dy = tfeats, ty
    lone = [s for s, us in tspk.items() if len(us) < 2]
    if lone:  # an episode needs enrolment room beside its query
        log.info("%s: %d training speaker(s) with a single utterance give no episode", split.train, len(lone))
        tspk = {s: us for s, us in tspk.items() if len(us) >= 2}
    if set(tspk) & set(dspk):
        raise ValueError(f"{split.tag}: speakers {sorted(set(tspk) & set(dspk))[:5]} are in train and dev")
    tokenizer = _make_tokenizer(cfg, words)
    torch.manual_seed(seed)
    model = _build_model(cfg, tokenizer, words, env.encoder.hidden_size)
    model.scoring = (cfg.get("eval") or {}).get("scoring", DEFAULT_SCORING)  # dev selection decides as the test
    model.prefixer.set_feature_stats(*frame_stats(tfeats[u] for u in tutts))
    model.check_fits(_max_k(cfg))
    aug = ep.get("speaker_augment") or {}
    diverse = ep.get("diverse", "auto")
    diverse = diverse_possible(tspk, ty) if diverse == "auto" else bool(diverse)
    train_set = EpisodeData(sampler=EpisodeSampler(tspk, ks, seed, diverse, ty),
                            per_epoch=int(ep.get("per_epoch", 2000)), augment=bool(aug))
    dev_ks = [int(k) for k in ep.get("dev_k", (cfg.get("eval") or {}).get("k", DEFAULT_K))]
    dev_set = EpisodeData(episodes=dev_episodes(dspk, dy, dev_ks, int(ep.get("dev_queries", 8)), seed))
    feat_std = model.prefixer.feat_std.clone() if aug else None  # the training frames' std, as the projector's
    collate = EpisodeCollate(ChainMap(tfeats, dfeats), {**ty, **dy}, feat_std, float(aug.get("shift", 0.0)),
                             float(aug.get("scale", 0.0)))

    def evaluate(m, loader):
        gold, pred, ks_ = [], [], []
        for batch in loader:
            pred += score_episodes(m, batch).argmax(1).tolist()
            gold += [ys[-1] for ys in batch["labels"]]
            ks_ += [len(ys) - 1 for ys in batch["labels"]]
        g, p, kk = np.array(gold), np.array(pred), np.array(ks_)
        c = classification_metrics([classes[i] for i in g], [classes[i] for i in p], classes)
        out = {"uar": c["uar"], "wa": c["wa"]}
        for name, sel in (("wa_k0", kk == 0), ("wa_kpos", kk > 0)):
            if sel.any():
                out[name] = float((g[sel] == p[sel]).mean())
        return out

    tcfg = dict(cfg.get("train") or {})
    tcfg.setdefault("select_metric", "uar")
    tcfg.setdefault("select_mode", "max")
    trainer = Trainer(model, train_set, dev_set, collate, _loss, evaluate, TrainConfig.from_dict(tcfg),
                      ctx.expdir, **chance_level(tcfg["select_metric"], len(classes)))
    summary = trainer.fit(resume=True)
    tokenizer.save(ctx.expdir / "tokenizer")
    tuned = _fit_baselines(env, cfg, (tdd, tutts, tfeats, ty), (dspk, dfeats, dy), dev_ks, seed)
    info = {"task": "icl", "model": cfg["model"], "encoder": env.spec, "encoder_weights_sha256": env.digest,
            "sample_rate": ctx.sample_rate, "labels": classes, "label_words": words,
            "episodes": {"k": ks, "per_epoch": train_set.per_epoch, "diverse": diverse},
            "train_speakers": len(tspk), "dev_speakers": len(dspk), "best_epoch": summary.get("best_epoch"),
            "best_dev": summary.get("best_metrics"), "baselines": tuned, **verdict(summary)}
    write_text_atomic(ctx.expdir / "model.yaml", yaml.safe_dump(info, sort_keys=False))
    log.info("%s %s: meta-trained on %d speakers, best epoch %s, dev %s; baselines %s", ctx.name, split.tag,
             len(tspk), summary.get("best_epoch"), summary.get("best_metrics"), tuned)


def _fit_baselines(env: _Env, cfg: dict, train_data, dev_data, ks: list[int], seed: int) -> dict:
    """Fit the SI / spk-norm classifiers on the training speakers; tune fine-tuning and NCM on dev draws."""
    b = cfg.get("baselines") or {}
    tdd, tutts, tfeats, ty = train_data
    dspk, dfeats, dy = dev_data
    x = env.pooled(tfeats, tutts)
    base = PersonalBaselines.fit(x, np.array([ty[u] for u in tutts]), [tdd.utt2spk[u] for u in tutts],
                                 len(env.labels.labels), seed, C=float(b.get("C", 1.0)),
                                 prior_weight=float(b.get("prior_weight", 4.0)))
    draws = []
    for spk, utts in dspk.items():
        xs = dict(zip(utts, env.pooled(dfeats, utts)))
        for k in (k for k in ks if k > 0):
            for enrol, queries in enrolment_draws(utts, [str(dy[u]) for u in utts], k, 3, seed, "arbitrary", spk):
                draws.append((np.stack([xs[u] for u in enrol]), np.array([dy[u] for u in enrol]),
                              np.stack([xs[u] for u in queries]), np.array([dy[u] for u in queries])))
    tuned = base.tune(draws, b.get("finetune_grid"), b.get("ncm_grid"))
    base.save(env.ctx.expdir / "baselines.npz")
    return tuned


def load_trained(expdir: Path, feat_dim: int) -> tuple[ICLSpeechLM, dict]:
    """Rebuild a meta-trained model (model.yaml + tokenizer/ + best.safetensors)."""
    info = yaml.safe_load((expdir / "model.yaml").read_text())
    tokenizer = load_tokenizer(expdir / "tokenizer")
    model = _build_model({"model": info["model"]}, tokenizer, info.get("label_words", info["labels"]), feat_dim)
    load_weights(model, expdir / "best.safetensors")
    return model.eval(), info


# --------------------------------------------------------------- evaluate --


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    env = _Env(cfg, split, ctx)
    model, info = load_trained(ctx.expdir, env.encoder.hidden_size)
    model = place(model, env.train_cfg.device)
    model.scoring = (cfg.get("eval") or {}).get("scoring", DEFAULT_SCORING)
    base = PersonalBaselines.load(ctx.expdir / "baselines.npz")
    written = []
    for test in split.tests:
        written.append(_evaluate_test(env, cfg, model, base, info, test))
    return written


def _audio_embeds(model: ICLSpeechLM, feats, utts: list[str], batch_size: int) -> dict[str, torch.Tensor]:
    out = {}
    dev = model_device(model)
    with torch.no_grad():
        for i in range(0, len(utts), batch_size):
            chunk = utts[i:i + batch_size]
            n = torch.tensor([feats[u].shape[0] for u in chunk])
            x = torch.zeros(len(chunk), int(n.max()), feats[chunk[0]].shape[1])
            for j, u in enumerate(chunk):
                x[j, :n[j]] = feats[u]
            a = model.audio_embeds(x.to(dev), n.to(dev))
            out.update(zip(chunk, a))
    return out


@torch.no_grad()
def _icl_predict(model: ICLSpeechLM, audio: dict, jobs: list[tuple[list[str], list[str]]], y: dict[str, int],
                 batch_size: int) -> list[list[int]]:
    """ICL decisions for every (enrolment, queries) job; each enrolment's pieces are built once and the
    contexts of all jobs are scored ``batch_size`` at a time."""
    ctxs, sizes = [], []
    for enrol, queries in jobs:
        labels = [y[u] for u in enrol]
        pieces = model.enrolment(torch.stack([audio[u] for u in enrol]) if enrol else [], labels)
        ctxs += [model.context(None, labels, audio[q], enrolment=pieces) for q in queries]
        sizes.append(len(queries))
    flat = []
    for i in range(0, len(ctxs), batch_size):
        flat += model.score(ctxs[i:i + batch_size]).argmax(1).tolist()
    out, at = [], 0
    for n in sizes:
        out.append(flat[at:at + n])
        at += n
    return out


def _draw_metrics(gold: list[int], pred: list[int], num_classes: int) -> dict:
    """UAR/WA/macro-F1 of one draw from its confusion matrix (numpy: hundreds of draws per test set)."""
    cm = np.bincount(np.array(gold) * num_classes + np.array(pred), minlength=num_classes ** 2)
    return {"n": len(gold), **scores_from_confusion(cm.reshape(num_classes, num_classes))}


def headline_metrics(by_draw: dict, classes: list[str], utt2spk: dict[str, str], unit: str = "speaker",
                     n_boot: int = 1000) -> dict:
    """Metrics of decisions pooled over draws (``by_draw``: draw -> (gold, pred, query utts)).

    Pooled, a query counts once per draw and a speaker's decisions are
    correlated: the interval resamples whole speakers (or queries), each with
    all its draws, and ``ci_method`` records which.
    """
    g, p, q = [], [], []
    for gg, pp, qq in by_draw.values():
        g += gg
        p += pp
        q += qq
    gold, pred = [classes[i] for i in g], [classes[i] for i in p]
    metrics = classification_metrics(gold, pred, classes)
    if n_boot:
        groups = [utt2spk[u] for u in q] if unit == "speaker" else q
        metrics["uar_ci"] = list(bootstrap_ci(gold, pred, "uar", n_boot=n_boot, groups=groups))
        metrics["ci_method"] = f"{unit}_bootstrap"
    return metrics


def paired_vs_references(decisions: dict, cond: str, k: int, classes: list[str], utt2spk: dict[str, str],
                         n: int) -> dict | None:
    """ICL at ``k`` minus ICL at k = 0 and minus each personal baseline at the same ``k`` (condition ``cond``),
    in UAR on the same queries of the same enrolment draws, Holm-corrected across these rows.

    Draws are pooled as the headline is: each draw's decision on a query is one item, so a query counts once
    per draw (its correctness averaged over draws), and every method's item is the same (draw, query). The
    resampling unit carries all of a unit's draws: speakers (the headline's, sertk's default paired test), or,
    with fewer than MIN_SPEAKERS test speakers, queries permuted (each with all its draws; the row says its p
    holds for these utterances only). ``n`` resamples; 0: no test (None)."""
    if not n:
        return None
    flat = {m: [x for d in sorted(by_draw) for x in zip(*by_draw[d])]
            for (c, kk, m), by_draw in decisions.items() if c == cond and kk == k}
    icl = flat[ICL]
    gold, queries = [classes[g] for g, _, _ in icl], [q for _, _, q in icl]
    rows = {}
    for ref in [ICL_K0, *BASELINE_METHODS]:
        if [q for _, _, q in flat[ref]] != queries:
            raise RuntimeError(f"ICL paired test: {ref} at k={k} scored other queries than ICL")
        rows[ref] = paired_test(gold, [classes[p] for _, p, _ in icl], [classes[p] for _, p, _ in flat[ref]], "uar",
                                [utt2spk[q] for q in queries], n=n, units=queries)
    for ref, adj in zip(rows, holm([r["p"] for r in rows.values()])):
        rows[ref]["p_holm"] = adj
    return {"method": ICL, "k": k, "condition": cond, "metric": "uar", "vs": rows}


def _evaluate_test(env: _Env, cfg: dict, model: ICLSpeechLM, base: PersonalBaselines, info: dict,
                   test: str) -> Path:
    ev = cfg.get("eval") or {}
    ks = sorted(int(k) for k in ev.get("k", DEFAULT_K))
    draws, seed = int(ev.get("draws", 5)), int(ev.get("seed", 0))
    conditions = list(ev.get("conditions", CONDITIONS))
    bs = int(ev.get("batch_size", 32))
    classes = env.labels.labels
    dd, utts, feats, y = env.features(test)
    speakers = group_by_speaker(utts, dd.utt2spk)
    small = {s for s, us in speakers.items() if len(us) < int(ev.get("min_utterances", 2))}
    if small:
        log.info("%s: %d speaker(s) with fewer than eval.min_utterances utterances left out", test, len(small))
    speakers = {s: us for s, us in speakers.items() if s not in small}
    audio = _audio_embeds(model, feats, [u for us in speakers.values() for u in us], bs)  # projector once
    x = {}
    for us in speakers.values():
        x.update(zip(us, env.pooled(feats, us)))
    every = [u for us in speakers.values() for u in us]
    k0 = dict(zip(every, _icl_predict(model, audio, [([], every)], y, bs)[0]))  # the plain speech-LM decision
    methods = [ICL, ICL_K0] + list(BASELINE_METHODS)
    decisions: dict[tuple, dict[int, tuple]] = {}  # (cond, k, method) -> draw -> (gold, pred, query utts)
    draw_lines, pred_lines = [], []
    for cond in conditions:
        for k in ks:
            if cond == "cover" and k < len(classes):
                continue
            n_draws = 1 if k == 0 else draws  # every k = 0 "draw" is the same empty enrolment
            jobs = [(spk, d, enrol, queries) for spk, us in speakers.items()
                    for d, (enrol, queries) in enumerate(enrolment_draws(us, [str(y[u]) for u in us], k, n_draws,
                                                                         seed, cond, spk))]
            icl_preds = _icl_predict(model, audio, [(e, q) for _, _, e, q in jobs], y, bs) if k else \
                [[k0[u] for u in q] for _, _, _, q in jobs]
            for (spk, d, enrol, queries), icl_pred in zip(jobs, icl_preds):
                draw_lines.append(f"{cond}\t{k}\t{d}\t{spk}\t{' '.join(enrol)}\n")
                xe = np.stack([x[u] for u in enrol]) if enrol else np.zeros((0, len(x[queries[0]])))
                ye = np.array([y[u] for u in enrol], dtype=int)
                xq = np.stack([x[u] for u in queries])
                preds = {ICL: icl_pred, ICL_K0: [k0[q] for q in queries]}
                for meth in BASELINE_METHODS:
                    preds[meth] = base.predict(meth, xq, xe, ye).argmax(1).tolist()
                gold = [y[q] for q in queries]
                for meth in methods:
                    g, p, qs = decisions.setdefault((cond, k, meth), {}).setdefault(d, ([], [], []))
                    g += gold
                    p += preds[meth]
                    qs += queries
                pred_lines += [f"{cond}\t{k}\t{d}\t{q}\t{classes[gold[i]]}\t" +
                               "\t".join(classes[preds[mm][i]] for mm in methods) + "\n"
                               for i, q in enumerate(queries)]
    per_draw = {key: [_draw_metrics(g, p, len(classes)) for _, (g, p, _) in sorted(by_draw.items())]
                for key, by_draw in decisions.items()}
    rows = summarise(per_draw)
    outdir = env.ctx.expdir / "eval" / test
    write_tsv(rows, outdir / "kcurve.tsv")
    title = f"{env.ctx.name} {env.split.tag} -> {test}: UAR over {draws} draws (95% CI)"
    png = plot_kcurve(rows, outdir / "kcurve.png", title)
    write_text_atomic(outdir / "kcurve.md", markdown_table(rows) + "\n")
    write_text_atomic(outdir / "draws.tsv", "# condition k draw speaker enrolment\n" + "".join(draw_lines))
    write_text_atomic(outdir / "predictions.tsv", "# condition k draw utt gold " + " ".join(methods) + "\n" +
                      "".join(pred_lines))
    # headline: ICL at the largest k with arbitrary enrolment, decisions pooled over draws and speakers
    head_k = max(k for (c, k, m) in decisions if c == conditions[0] and m == ICL)
    metrics = headline_metrics(decisions[(conditions[0], head_k, ICL)], classes, dd.utt2spk,
                               ev.get("ci_unit", "speaker"), int(ev.get("bootstrap", 1000)))
    paired = paired_vs_references(decisions, conditions[0], head_k, classes, dd.utt2spk,
                                  int(ev.get("bootstrap", 1000)))
    extra = {"fold": env.split.fold, "model_dir": str(env.ctx.expdir), "headline": {
                 "method": ICL, "k": head_k, "condition": conditions[0], "pooled_over_draws": draws},
             "paired": paired,
             "speakers": len(speakers), "draws": draws, "k": ks, "conditions": conditions,
             "kcurve": rows, "kcurve_png": str(png), "baselines": info.get("baselines"),
             "best_dev": info.get("best_dev"), "collapsed": bool(info.get("collapsed")), "scoring": model.scoring}
    path = outdir / "results.json"
    write_result(path, stage=env.ctx.stage, name=env.ctx.name, task="classification",
                 protocol=env.split.record(test, env.ctx.data), metrics=metrics, labels=classes,
                 confusion=metrics["confusion"], extra=extra)
    at = {(r["condition"], r["k"], r["method"]): r["uar_mean"] for r in rows}
    log.info("%s %s -> %s: UAR by k (%s): ICL %s | SI %s | spk-norm %s | fine-tune %s | NCM %s", env.ctx.name,
             env.split.tag, test, conditions[0],
             *[" ".join(f"{at.get((conditions[0], k, m), float('nan')):.3f}" for k in ks)
               for m in (ICL, "si", "spk_norm", "finetune", "ncm")])
    return path
