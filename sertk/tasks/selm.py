"""SELM task (stages 3-4): train the audio-conditioned LM, evaluate in and out of
domain, adapt few-shot, and compare with the speech-encoder baseline.

Per split, the experiment dir holds ``model.yaml`` (everything to rebuild the
model), ``best.safetensors`` (prefix mapper + LM; the frozen encoder is not
stored, ``model.yaml`` names it), ``tokenizer/`` and per test set
``eval/<set>/{results.json,predictions.txt,scores.txt}``; few-shot runs write
``fewshot/<set>/k<k>/`` and ``eval/<set>/fewshot_curve.tsv``.

The encoder is frozen, so its chosen layer is computed once per data dir and
cached under ``<dump>/encoder_feats`` (sertk.features.embedding_cache); training
epochs never run it. ``encoder.from_experiment: exp/classifier`` reuses the
trained encoder of another experiment's same split (its model.yaml +
best.safetensors), which makes a like-for-like comparison with that baseline.
"""
from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from sertk.common.fileio import write_text_atomic
from sertk.common.protocol import Split
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.eval.metrics import classification_metrics, interval
from sertk.eval.results import load_result, write_result
from sertk.features.embedding_cache import compute_features, encoder_features, frame_stats, frozen_encoder
from sertk.models.encoder import SPEC_KEYS, SpeechEncoder
from sertk.models.scoring import DEFAULT_SCORING, check_scoring
from sertk.models.selm import SELM, build_lm, encode_example
from sertk.models.text_tokenizer import HFTokenizer, SentencePieceTokenizer, TextTokenizer, load_tokenizer
from sertk.models.views import LEVELS, SENTIMENTS, VIEW_NAMES, View, make_views, map_gold, view_values
from sertk.tasks import EVAL_CI_KEYS, TaskContext, check_ci_unit, label_map_of, reject_unknown
from sertk.train.inference import amp_dtype, autocast, model_device, place, to_device
from sertk.train.trainer import Trainer, TrainConfig, chance_level, load_weights, seed_everything, verdict

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ config --


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "model", "data", "train", "eval", "fewshot", "label_map"}, where)
    m = cfg.get("model") or {}
    reject_unknown(m, {"encoder", "prefix", "lm", "prompt", "views", "avd_thresholds"}, f"{where}: model")
    enc = m.get("encoder") or {}
    reject_unknown(enc, SPEC_KEYS | {"from_experiment",
                         "layer", "normalize"}, f"{where}: model.encoder")
    if not (enc.get("from_experiment") or enc.get("name_or_path") or enc.get("type")):
        raise ValueError(f"{where}: model.encoder needs from_experiment, name_or_path or type+config")
    reject_unknown(m.get("prefix") or {}, {"length", "proj_hidden", "mapper_layers", "mapper_heads", "dropout"},
                   f"{where}: model.prefix")
    lm = m.get("lm") or {}
    reject_unknown(lm, {"name_or_path", "revision", "config", "tokenizer", "mode", "lora"}, f"{where}: model.lm")
    reject_unknown(lm.get("tokenizer") or {}, {"vocab_size", "model_type"}, f"{where}: model.lm.tokenizer")
    reject_unknown(lm.get("lora") or {}, {"r", "alpha", "dropout", "target_modules"}, f"{where}: model.lm.lora")
    if lm.get("mode", "full") not in ("frozen", "full", "lora"):
        raise ValueError(f"{where}: model.lm.mode must be frozen, full or lora")
    views = m.get("views", ["categorical"])
    if "categorical" not in views or any(v not in VIEW_NAMES for v in views):
        raise ValueError(f"{where}: model.views must include 'categorical' and only {VIEW_NAMES}")
    reject_unknown(cfg.get("data") or {}, {"max_duration", "cache", "cache_batch_size"}, f"{where}: data")
    reject_unknown(cfg.get("eval") or {}, {"batch_size", "lm_prior_weight", "label_mapping", "baseline",
                                           "drop_unmapped", "scoring"} | EVAL_CI_KEYS, f"{where}: eval")
    check_ci_unit(cfg.get("eval") or {}, where)
    check_scoring((cfg.get("eval") or {}).get("scoring", DEFAULT_SCORING), f"{where}: eval.scoring")
    fs = cfg.get("fewshot")
    if fs:
        reject_unknown(fs, {"k", "pool", "adapt", "train", "seed"}, f"{where}: fewshot")
        if fs.get("adapt", "prefix") not in ("prefix", "lora"):
            raise ValueError(f"{where}: fewshot.adapt must be prefix or lora")
        TrainConfig.from_dict(dict(fs.get("train") or {}))
    TrainConfig.from_dict(dict(cfg.get("train") or {}))
    if not lm.get("name_or_path") and not enc.get("from_experiment") and not enc.get("name_or_path"):
        tok = SentencePieceTokenizer.train(_tokenizer_corpus(cfg, ["neutral", "angry"]), 64)
        _build_model(cfg, tok, SpeechEncoder({**enc, "freeze": True}).hidden_size)


# ----------------------------------------------------------------- building --


def _views(cfg: dict, classes: list[str]) -> dict[str, View]:
    return make_views(list(cfg["model"].get("views", ["categorical"])), classes)


def _tokenizer_corpus(cfg: dict, classes: list[str]) -> list[str]:
    """Every piece SELM encodes: the prompt, view headers and ' value' strings."""
    texts = [cfg["model"].get("prompt") or ""]
    for view in _views(cfg, classes).values():
        for slot in view.slots:
            texts.append(slot.header)
            texts += [" " + v for v in slot.values]
    return texts


def _make_tokenizer(cfg: dict, classes: list[str]) -> TextTokenizer:
    lm = cfg["model"].get("lm") or {}
    if lm.get("name_or_path"):
        return HFTokenizer(lm["name_or_path"], lm.get("revision"))
    t = lm.get("tokenizer") or {}
    return SentencePieceTokenizer.train(_tokenizer_corpus(cfg, classes), int(t.get("vocab_size", 96)),
                                        t.get("model_type", "bpe"))


def _build_model(cfg: dict, tokenizer: TextTokenizer, feat_dim: int, encoder: SpeechEncoder | None = None) -> SELM:
    m = cfg["model"]
    return SELM(build_lm(m.get("lm") or {}, tokenizer), feat_dim, m.get("prefix"), encoder)


def _encoder_source(cfg: dict, split: Split) -> tuple[dict, Path | None]:
    """The frozen encoder's spec and, with from_experiment, the weights file it comes from."""
    enc = dict(cfg["model"]["encoder"])
    src = enc.pop("from_experiment", None)
    if not src:
        return {**enc, "freeze": True}, None
    expdir = Path(src) / split.tag
    info_path, weights = expdir / "model.yaml", expdir / "best.safetensors"
    if not info_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"model.encoder.from_experiment: {expdir} has no model.yaml/best.safetensors; "
                                f"train that config first (list it before this one in --ser-configs)")
    spec = dict(yaml.safe_load(info_path.read_text())["model"]["encoder"])
    spec.update(enc)  # e.g. a different layer
    return {**spec, "freeze": True}, weights


def build_encoder(cfg: dict, split: Split) -> tuple[SpeechEncoder, dict, str | None]:
    spec, weights = _encoder_source(cfg, split)
    encoder, digest = frozen_encoder(spec, int((cfg.get("train") or {}).get("seed", 0)), weights)
    return encoder, spec, digest


# -------------------------------------------------------------------- data --


class ViewExamples(torch.utils.data.Dataset):
    """(utterance, view) training examples over cached features or audio.

    ``source`` is a dict utt -> features [T, D] (cached) or an AudioDataset
    (on the fly, the model runs its encoder).
    """

    def __init__(self, source, utts: list[str], examples: list[tuple[str, str, list[str]]],
                 views: dict[str, View], tokenizer: TextTokenizer, prompt_ids: list[int]):
        self.source = source
        self.index = {u: i for i, u in enumerate(source.utts)} if isinstance(source, AudioDataset) else None
        self.utts = utts
        self.examples = examples
        self.encoded = [encode_example(tokenizer, prompt_ids, views[v], vals) for _, v, vals in examples]
        self.pad_id = tokenizer.eos_id

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        utt = self.examples[i][0]
        ids, tgt = self.encoded[i]
        item = {"utt": utt, "ids": torch.tensor(ids), "tgt": torch.tensor(tgt)}
        if self.index is None:
            item["feats"] = self.source[utt]
        else:
            item["wav"] = self.source[self.index[utt]]["wav"]
        return item

    def collate(self, items: list[dict]) -> dict:
        out = {"utts": [it["utt"] for it in items]}
        if "feats" in items[0]:
            n = torch.tensor([it["feats"].shape[0] for it in items])
            feats = torch.zeros(len(items), int(n.max()), items[0]["feats"].shape[1])
            for b, it in enumerate(items):
                feats[b, :n[b]] = it["feats"]
            out.update(feats=feats, feat_lengths=n)
        else:
            a = collate_audio([{"utt": it["utt"], "wav": it["wav"]} for it in items])
            out.update(wav=a["wav"], lengths=a["lengths"])
        width = max(len(it["ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        att = torch.zeros(len(items), width, dtype=torch.long)
        tgt = torch.zeros(len(items), width, dtype=torch.bool)
        for b, it in enumerate(items):
            k = len(it["ids"])
            ids[b, :k], att[b, :k], tgt[b, :k] = it["ids"], 1, it["tgt"]
        out.update(input_ids=ids, attention_mask=att, target_mask=tgt)
        return out


def model_inputs(batch: dict) -> dict:
    keys = ("input_ids", "attention_mask", "target_mask", "feats", "feat_lengths", "wav", "lengths")
    return {k: batch[k] for k in keys if k in batch}


def _examples(datadir, utts: list[str], gold: Callable[[str | None], str | None] | None, views: dict[str, View],
              thresholds: tuple[float, float], only: tuple[str, ...] | None = None,
              strict: bool = True) -> list[tuple[str, str, list[str]]]:
    """Every (utt, view, values) the utterance's labels support; categorical needs utt2emo.

    ``gold`` maps a raw utt2emo label to the model's class (None: it has none).
    ``strict``: such a label is an error naming the file and utterance (training
    data); otherwise the utterance gives no categorical/sentiment example.
    """
    u2e = datadir.utt2emo if gold is not None else {}
    u2a = datadir.utt2avd if (datadir.path and (Path(datadir.path) / "utt2avd").exists()) else {}
    out = []
    for u in utts:
        emo = gold(u2e[u]) if u in u2e else None
        if emo is None and u in u2e and strict:
            raise ValueError(f"{datadir.path}/utt2emo: utterance {u!r} has label {u2e[u]!r}, which is neither in "
                             f"the model's label map nor in eval.label_mapping")
        for name, view in views.items():
            if only and name not in only:
                continue
            vals = view_values(view, emo, u2a.get(u), thresholds)
            if vals is not None:
                out.append((u, name, vals))
    return out


def view_counts(examples: list[tuple[str, str, list[str]]], views: dict[str, View]) -> dict[str, int]:
    """How many utterances feed each view (a view trains only where its targets exist)."""
    n = {v: set() for v in views}
    for u, v, _ in examples:
        n[v].add(u)
    return {v: len(us) for v, us in n.items()}


class _Env:
    """What train/evaluate share for one split: labels, encoder, cache, tokenizer."""

    def __init__(self, cfg: dict, split: Split, ctx: TaskContext):
        self.cfg, self.split, self.ctx = cfg, split, ctx
        self.labels = label_map_of(cfg, split, "selm")
        self.mapping = dict((cfg.get("eval") or {}).get("label_mapping") or {})
        self.encoder, self.encoder_spec, self.weights_digest = build_encoder(cfg, split)
        d = cfg.get("data") or {}
        self.max_duration = d.get("max_duration")
        self.use_cache = d.get("cache", True)
        self.thresholds = tuple(cfg["model"].get("avd_thresholds", [0.4, 0.6]))
        self.train_cfg = TrainConfig.from_dict(dict(cfg.get("train") or {}))  # device and amp of evaluation too

    def gold(self, raw: str | None) -> str | None:
        """A raw utt2emo label -> the model's class, or None when it has none.

        The label map (aliases included) names it first, then
        ``eval.label_mapping`` merges classes the model lacks (RAVDESS calm ->
        neutral); every lookup of a label goes through here.
        """
        if raw is None:
            return None
        lab = self.labels.canonical(raw) if raw in self.labels else raw
        return map_gold(lab, self.mapping, self.labels.labels)

    def audio(self, set_name: str) -> AudioDataset:
        return AudioDataset(self.ctx.datadir(set_name), sample_rate=self.ctx.sample_rate, label_map=None,
                            targets=(), max_duration=self.max_duration)

    def source(self, set_name: str):
        """Cached features (utt -> tensor), or the audio dataset when caching is off."""
        ds = self.audio(set_name)
        if not self.use_cache:
            return ds
        return encoder_features(self.ctx.dump / "encoder_feats", self.encoder, self.encoder_spec, self.weights_digest,
                                ds, set_name, batch_size=(self.cfg.get("data") or {}).get("cache_batch_size", 1))

    def data(self, set_name: str):
        """(features or audio source, data dir) of a set."""
        src = self.source(set_name)
        return src, (src.datadir if isinstance(src, AudioDataset) else self.audio(set_name).datadir)

    def dataset(self, set_name: str, tokenizer: TextTokenizer, views: dict[str, View], only=None,
                utts: list[str] | None = None, strict: bool = True) -> ViewExamples:
        src, dd = self.data(set_name)
        utts = utts if utts is not None else dd.utts
        ex = _examples(dd, utts, self.gold, views, self.thresholds, only, strict)
        return ViewExamples(src, utts, ex, views, tokenizer, prompt_ids(self.cfg, tokenizer))

    def feature_stats(self, set_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension frame statistics of a set's frozen-encoder features (the projector standardises
        with the training set's): from the cache, or one pass of the encoder when caching is off."""
        src = self.source(set_name)
        if isinstance(src, AudioDataset):
            return frame_stats(t for batch in compute_features(self.encoder, src) for t in batch.values())
        return frame_stats(src[u] for u in src)

    def model(self, tokenizer: TextTokenizer) -> SELM:
        return _build_model(self.cfg, tokenizer, self.encoder.hidden_size,
                            None if self.use_cache else self.encoder)


def prompt_ids(cfg: dict, tokenizer: TextTokenizer) -> list[int]:
    text = cfg["model"].get("prompt") or ""
    return tokenizer.encode(text) if text else []


# ---------------------------------------------------------------- predict --


def predict(model: SELM, loader, tokenizer: TextTokenizer, views: dict[str, View], prompt: list[int],
            prior_weight: float = 0.0, amp="auto") -> dict:
    """Per utterance: categorical scores [C] and the constrained decoding of every view.

    Runs where the model lies, under autocast on CUDA (``amp`` as ``train.amp``); scores come back on the CPU.
    """
    model.eval()
    out = {"utts": [], "scores": [], "views": {n: [] for n in views}}
    dev = model_device(model)
    with torch.no_grad(), autocast(dev, amp_dtype(amp, dev)):
        for batch in loader:
            inputs = to_device({k: batch[k] for k in ("feats", "feat_lengths", "wav", "lengths") if k in batch}, dev)
            prefix = model.audio_prefix(**inputs)
            ctx = [list(prompt) for _ in batch["utts"]]
            for name, view in views.items():
                chosen, scores = model.decode_view(prefix, ctx, view, tokenizer, prior_weight)
                out["views"][name].extend(chosen)
                if name == "categorical":
                    out["scores"].append(scores[0].float().cpu())
            out["utts"].extend(batch["utts"])
    out["scores"] = torch.cat(out["scores"]).numpy() if out["scores"] else np.zeros((0, 0))
    return out


def _eval_loader(ds: ViewExamples, batch_size: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate)


# ------------------------------------------------------------------ train --


def _fit(model: SELM, train_set: ViewExamples, dev_set: ViewExamples | None, env: _Env, tokenizer, tcfg: dict,
         expdir: Path) -> dict:
    cat_view = {"categorical": _views(env.cfg, env.labels.labels)["categorical"]}
    prompt = prompt_ids(env.cfg, tokenizer)

    def compute_loss(m, batch):  # m may be the DDP wrapper: call it
        return m(**model_inputs(batch))

    dd = env.audio(env.split.dev or env.split.train).datadir

    def evaluate(m, loader):
        r = predict(m, loader, tokenizer, cat_view, prompt)
        gold = [env.gold(dd.utt2emo[u]) for u in r["utts"]]
        pred = [v[0] for v in r["views"]["categorical"]]
        c = classification_metrics(gold, pred, env.labels.labels)
        return {"uar": c["uar"], "wa": c["wa"], "macro_f1": c["macro_f1"]}

    tcfg = dict(tcfg)
    if dev_set is not None:
        tcfg.setdefault("select_metric", "uar")
        tcfg.setdefault("select_mode", "max")
    cfg = TrainConfig.from_dict(tcfg)
    chance = chance_level(cfg.select_metric, len(set(dd.utt2emo.values()))) if dev_set is not None else {}
    trainer = Trainer(model, train_set, dev_set, train_set.collate, compute_loss,
                      evaluate if dev_set is not None else None, cfg, expdir, **chance)
    return trainer.fit(resume=True)


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    env = _Env(cfg, split, ctx)
    tokenizer = _make_tokenizer(cfg, env.labels.labels)
    views = _views(cfg, env.labels.labels)
    train_set = env.dataset(split.train, tokenizer, views)
    counts = view_counts(train_set.examples, views)
    log.info("%s: views: %s", split.train, ", ".join(f"{v} {n} utts" for v, n in counts.items()))
    for v, n in counts.items():
        if not n:
            log.warning("%s: no utterance has the targets of the %s view (%s): it is not trained", split.train, v,
                        "utt2avd" if v == "dimensional" else "utt2emo")
    dev_set = env.dataset(split.dev or split.train, tokenizer, views, only=("categorical",))
    if not split.dev:
        log.warning("protocol %s has no dev set: selecting the checkpoint on the training data", split.tag)
    model = env.model(tokenizer)
    model.scoring = (cfg.get("eval") or {}).get("scoring", DEFAULT_SCORING)  # dev selection decides as the test
    model.prefixer.set_feature_stats(*env.feature_stats(split.train))
    summary = _fit(model, train_set, dev_set, env, tokenizer, cfg.get("train") or {}, ctx.expdir)
    tokenizer.save(ctx.expdir / "tokenizer")
    info = {"task": "selm", "model": cfg["model"], "encoder": env.encoder_spec,
            "encoder_weights_sha256": env.weights_digest, "sample_rate": ctx.sample_rate,
            "labels": env.labels.labels, "cached_features": env.use_cache,
            "best_epoch": summary.get("best_epoch"), "best_dev": summary.get("best_metrics"), **verdict(summary)}
    write_text_atomic(ctx.expdir / "model.yaml", yaml.safe_dump(info, sort_keys=False))


def load_trained(expdir: Path, feat_dim: int, encoder: SpeechEncoder | None = None) -> tuple[SELM, TextTokenizer, dict]:
    """Rebuild a trained SELM (model.yaml + tokenizer/ + best.safetensors)."""
    info = yaml.safe_load((expdir / "model.yaml").read_text())
    tokenizer = load_tokenizer(expdir / "tokenizer")
    model = _build_model({"model": info["model"]}, tokenizer, feat_dim, encoder)
    load_weights(model, expdir / "best.safetensors")
    model.eval()
    return model, tokenizer, info


# --------------------------------------------------------------- evaluate --


def _score_test(env: _Env, model: SELM, tokenizer, test: str, outdir: Path, name: str, extra: dict,
                exclude: set[str] | None = None) -> dict:
    """Score ``test`` (less ``exclude``: few-shot examples drawn from the test set itself) and write its results."""
    cfg, ev = env.cfg, env.cfg.get("eval") or {}
    views = _views(cfg, env.labels.labels)
    src, dd = env.data(test)
    classes = env.labels.labels
    # test gold on the model's classes: label map, then eval.label_mapping (env.gold), before any lookup
    keep, gold, dropped = [], [], []
    for u in dd.utts:
        if exclude and u in exclude:
            continue
        raw = dd.utt2emo.get(u)
        if raw is None:
            raise ValueError(f"{dd.path}/utt2emo: no label for utterance {u!r}")
        g = env.gold(raw)
        if g is None:
            if not ev.get("drop_unmapped"):
                raise ValueError(f"{dd.path}/utt2emo: utterance {u!r} has class {raw!r}, unknown to the model "
                                 f"({', '.join(classes)}); add it to eval.label_mapping or set eval.drop_unmapped")
            dropped.append(u)
            continue
        keep.append(u)
        gold.append(g)
    if dropped:
        log.info("%s: %d utterance(s) whose class the model lacks left out (eval.drop_unmapped)", test, len(dropped))
    ds = ViewExamples(src, keep, [(u, "categorical", [g]) for u, g in zip(keep, gold)],
                      views, tokenizer, prompt_ids(cfg, tokenizer))
    r = predict(model, _eval_loader(ds, ev.get("batch_size", 16)), tokenizer, views, prompt_ids(cfg, tokenizer),
                float(ev.get("lm_prior_weight", 0.0)), amp=env.train_cfg.amp)
    pred = [v[0] for v in r["views"]["categorical"]]
    metrics = classification_metrics(gold, pred, classes)
    if ev.get("bootstrap", 1000):
        metrics["uar_ci"], metrics["ci_method"] = interval(gold, pred, "uar", [dd.utt2spk[u] for u in r["utts"]],
                                                           ev.get("ci_unit", "speaker"), ev.get("bootstrap", 1000))
    extra = {**extra, "dropped_unmapped": len(dropped), "scoring": model.scoring, "views": _view_scores(env, dd, r),
             **_baseline_gain(cfg, env.split, test, metrics)}
    write_text_atomic(outdir / "predictions.txt", "".join(
        f"{u} {p} {' '.join('|'.join(r['views'][n][i]) for n in views if n != 'categorical')}".rstrip() + "\n"
        for i, (u, p) in enumerate(zip(r["utts"], pred))))
    write_text_atomic(outdir / "scores.txt", "# utt log-likelihood " + " ".join(classes) + "\n" + "".join(
        f"{u} {' '.join(f'{v:.4f}' for v in row)}\n" for u, row in zip(r["utts"], r["scores"])))
    write_result(outdir / "results.json", stage=env.ctx.stage, name=name, task="classification",
                 protocol=env.split.record(test, env.ctx.data), metrics=metrics, labels=classes,
                 confusion=metrics["confusion"], extra=extra)
    return metrics


def _view_scores(env: _Env, dd, r: dict) -> dict:
    """Accuracy of each non-categorical view's slots where the test labels define them."""
    out = {}
    views = _views(env.cfg, env.labels.labels)
    u2a = dd.utt2avd if (Path(dd.path) / "utt2avd").exists() else {}
    for name, view in views.items():
        if name == "categorical":
            continue
        hits, n = np.zeros(len(view.slots)), 0
        for u, chosen in zip(r["utts"], r["views"][name]):
            gold = view_values(view, env.gold(dd.utt2emo.get(u)), u2a.get(u), env.thresholds)
            if gold is None:
                continue
            hits += np.array([a == b for a, b in zip(chosen, gold)])
            n += 1
        if n:
            names = [s.header.strip(" ,:") for s in view.slots]
            out[name] = {"n": n, **{f"{s}_acc": float(h / n) for s, h in zip(names, hits)},
                         "chance": 1.0 / len(SENTIMENTS if name == "sentiment" else LEVELS)}
    return out


def _baseline_gain(cfg: dict, split: Split, test: str, metrics: dict) -> dict:
    base = (cfg.get("eval") or {}).get("baseline")
    if not base:
        return {}
    path = Path(base) / split.tag / "eval" / test / "results.json"
    if not path.is_file():
        log.warning("baseline result %s not found: no relative gain reported", path)
        return {"baseline_result": str(path), "baseline_found": False}
    b = load_result(path)["metrics"]
    out = {"baseline_result": str(path), "baseline_uar": b["uar"], "baseline_wa": b.get("wa"),
           "baseline_macro_f1": b.get("macro_f1")}
    for k in ("uar", "wa", "macro_f1"):
        if b.get(k):
            out[f"relative_gain_{k}"] = (metrics[k] - b[k]) / b[k]
    return out


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    env = _Env(cfg, split, ctx)
    model, tokenizer, info = load_trained(ctx.expdir, env.encoder.hidden_size,
                                          None if env.use_cache else env.encoder)
    model = place(model, env.train_cfg.device)  # evaluated where it trained
    model.scoring = (cfg.get("eval") or {}).get("scoring", DEFAULT_SCORING)  # few-shot copies keep it
    written = []
    for test in split.tests:
        outdir = ctx.expdir / "eval" / test
        extra = {"fold": split.fold, "model_dir": str(ctx.expdir), "best_dev": info.get("best_dev"),
                 "collapsed": bool(info.get("collapsed")), "in_domain": test.rsplit("_", 1)[0] == split.train.rsplit("_", 1)[0],
                 "lm_prior_weight": float((cfg.get("eval") or {}).get("lm_prior_weight", 0.0))}
        metrics = _score_test(env, model, tokenizer, test, outdir, ctx.name, extra)
        gain = load_result(outdir / "results.json")["extra"]
        log.info("%s %s -> %s: uar %.4f wa %.4f macro_f1 %.4f %s", ctx.name, split.tag, test, metrics["uar"],
                 metrics["wa"], metrics["macro_f1"],
                 f"(rel. gain over baseline {gain['relative_gain_uar']:+.1%})" if "relative_gain_uar" in gain else "")
        written.append(outdir / "results.json")
        written += _fewshot(env, model, tokenizer, test, metrics)
    return written


# --------------------------------------------------------------- few-shot --


def sample_k_per_class(utts: list[str], labels: list[str], k: int, seed: int) -> list[str]:
    """k utterances per class (all a class has when fewer), seeded, in byte order."""
    rng = random.Random(seed)
    by: dict[str, list[str]] = {}
    for u, y in zip(utts, labels):
        by.setdefault(y, []).append(u)
    out = []
    for y in sorted(by):
        pool = sorted(by[y])
        out += rng.sample(pool, min(k, len(pool)))
    return sorted(out)


def _fewshot(env: _Env, base: SELM, tokenizer, test: str, k0: dict) -> list[Path]:
    """Adapt a copy of the model with k labelled target examples per class, for every k; k=0 row = unadapted."""
    fs = env.cfg.get("fewshot") or {}
    pool = (fs.get("pool") or {}).get(test)
    if not fs or not pool or pool == env.split.train:
        return []
    views = _views(env.cfg, env.labels.labels)
    dd = env.audio(pool).datadir
    mapped = {u: env.gold(dd.utt2emo.get(u)) for u in dd.utts}
    utts = [u for u in dd.utts if mapped[u] is not None]
    labels = [mapped[u] for u in utts]
    if len(utts) < len(mapped):
        log.info("few-shot pool %s: %d utterance(s) without a model class are never drawn", pool,
                 len(mapped) - len(utts))
    rows = ["k\tn_adapt\tuar\twa\tmacro_f1\n", f"0\t0\t{k0['uar']:.4f}\t{k0['wa']:.4f}\t{k0['macro_f1']:.4f}\n"]
    written = []
    for k in fs.get("k", [1, 5, 10, 20]):
        seed = int(fs.get("seed", 0))
        chosen = sample_k_per_class(utts, labels, int(k), seed)
        model = copy.deepcopy(base)
        adapt = fs.get("adapt", "prefix")
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("prefixer.") if adapt == "prefix" else "lora_" in n)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"fewshot.adapt={adapt}: the model has no such parameters (lora needs lm.mode: lora)")
        model.lm_frozen = not any(p.requires_grad for p in model.lm.parameters())
        seed_everything(seed)
        train_set = env.dataset(pool, tokenizer, views, utts=chosen, strict=False)
        expdir = env.ctx.expdir / "fewshot" / test / f"k{k}"
        tcfg = {"epochs": 10, "batch_size": 8, "lr": 1e-3, "seed": seed, **(fs.get("train") or {})}
        _fit(model, train_set, None, env, tokenizer, tcfg, expdir)
        load_weights(model, expdir / "best.safetensors")
        name = f"{env.ctx.name}_fewshot_k{k}"
        extra = {"fold": env.split.fold, "model_dir": str(expdir), "fewshot_k": int(k), "fewshot_pool": pool,
                 "fewshot_n": len(chosen), "fewshot_adapt": adapt, "in_domain": False}
        # examples drawn from the test set itself are never scored
        m = _score_test(env, model, tokenizer, test, expdir / "eval" / test, name, extra,
                        exclude=set(chosen) if pool == test else None)
        rows.append(f"{k}\t{len(chosen)}\t{m['uar']:.4f}\t{m['wa']:.4f}\t{m['macro_f1']:.4f}\n")
        written.append(expdir / "eval" / test / "results.json")
        log.info("%s few-shot k=%s (%d utts from %s) -> %s: uar %.4f", env.ctx.name, k, len(chosen), pool, test,
                 m["uar"])
    write_text_atomic(env.ctx.expdir / "eval" / test / "fewshot_curve.tsv", "".join(rows))
    return written
