"""ZS-Fuse (stage 9): zero-shot CLAP scores late-fused with specialist foundation-model probes.

Evaluation only (``sertk evaluate``; stage 9 of ser.sh). Per protocol split:

1. every ALM (``alms:``, any ``ClapModel`` by hub name or path) scores the
   dev and test sets zero-shot from the prompt set (``prompts:``, templates x
   class synonyms; sertk.models.clap_zeroshot): a single prompt, the
   embedding- and score-space ensembles, and the ensemble with prompt
   amplification ``N`` (audio and whole prompt repeated) for every ``N`` of
   ``zero_shot.amplify``;
2. every FM (``fms:``) is a frozen-encoder probe (sertk.tasks.probe, its own
   code: any encoder spec, Wav2Vec2/WavLM/HuBERT or a Whisper checkpoint with
   its ``window``) trained on the split's train set under ``<expdir>/fm/<name>``;
3. fusion (sertk.fusion.late_fusion) of the ALMs (as ``zero_shot.ensemble``
   amplified ``zero_shot.amplify_in_fusion`` times: ``dev``, each ALM's ``N``
   of ``amplify`` with the best dev UAR, or a fixed number) and FMs, in every
   combination: each ALM with each FM, all ALMs, all FMs, everything; each
   once with dev temperatures and dev-chosen weights and once label-free.
   Unless the ALMs enter at ``N = 1``, the fusions holding ALMs are also run
   with them at ``N = 1`` (rows tagged ``[ALMs x1]``), the ablation of
   amplification inside the fused system.

Per test set ``eval/<test>/results.json`` holds the headline system (the
fusion of everything, ``fusion.headline``: ``dev`` or ``label_free``) and, in
``extra.ablation``, every row with UAR/WA/macro-F1 and their bootstrap CIs;
``extra.gain`` is the best fusion's UAR minus the best single FM's (chosen by
dev UAR, and by test UAR as an oracle). The posteriors of every row are saved
in ``eval/<test>/posteriors/<row>.txt``.
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sertk.common.fileio import write_json_atomic, write_text_atomic
from sertk.common.protocol import Split
from sertk.data.labels import LabelMap
from sertk.eval.metrics import classification_metrics, interval
from sertk.eval.significance import paired_test
from sertk.fusion.late_fusion import (DOMAINS, LABEL_FREE, calibrate_temperature, dev_weights, fuse,
                                      fuse_label_free, log_softmax, uar_of)
from sertk.models.clap_zeroshot import ENSEMBLES, TEXT_MODES, PromptSet, class_logits, is_msclap
from sertk.models.msclap_loader import FRONT_END
from sertk.tasks import EVAL_CI_KEYS, TaskContext, check_ci_unit, reject_unknown

log = logging.getLogger(__name__)
ALM_KEYS = {"name_or_path", "revision", "padding", "tokenizer", "msclap"}
MSCLAP_KEYS = {"spec_size", "patch_stride", "text_heads", "features"}
ZS_KEYS = {"ensemble", "scale", "temperature", "normalize", "amplify", "amplify_audio", "amplify_text",
           "amplify_text_mode", "amplify_in_fusion", "batch_size"}
NORMALIZE = ("softmax", "center")
FUSION_KEYS = {"domain", "weight_step", "label_free", "headline", "pairs", "dev_fallback"}


def check_config(cfg: dict, where: str) -> None:
    from sertk.tasks import probe
    reject_unknown(cfg, {"task", "alms", "prompts", "zero_shot", "fms", "fm_data", "fusion", "eval", "label_map"},
                   where)
    alms = cfg.get("alms") or {}
    if not isinstance(alms, dict) or not alms:
        raise ValueError(f"{where}: 'alms' must map names to CLAP checkpoints ({{name_or_path: ...}})")
    for name, a in alms.items():
        reject_unknown(a or {}, ALM_KEYS, f"{where}: alms.{name}")
        if not (a or {}).get("name_or_path"):
            raise ValueError(f"{where}: alms.{name} needs name_or_path (a hub name or a zoo/ path)")
        if (a.get("tokenizer") or a.get("msclap")) and not is_msclap(str(a["name_or_path"])):
            raise ValueError(f"{where}: alms.{name}: tokenizer and msclap apply to an MS-CLAP .pth checkpoint only")
        reject_unknown(a.get("msclap") or {}, MSCLAP_KEYS, f"{where}: alms.{name}.msclap")
        reject_unknown((a.get("msclap") or {}).get("features") or {}, set(FRONT_END),
                       f"{where}: alms.{name}.msclap.features")
    prompts = cfg.get("prompts")
    if isinstance(prompts, dict):
        PromptSet.build(prompts.get("templates"), prompts.get("classes"), list((prompts.get("classes") or {})),
                        f"{where}: prompts")
    elif not isinstance(prompts, str):
        raise ValueError(f"{where}: 'prompts' must be a prompt-set YAML path or {{templates, classes}}")
    zs = cfg.get("zero_shot") or {}
    reject_unknown(zs, ZS_KEYS, f"{where}: zero_shot")
    if zs.get("ensemble", "embedding") not in ENSEMBLES:
        raise ValueError(f"{where}: zero_shot.ensemble must be one of {ENSEMBLES}")
    if zs.get("normalize", "softmax") not in NORMALIZE:
        raise ValueError(f"{where}: zero_shot.normalize must be one of {NORMALIZE}")
    if zs.get("amplify_text_mode", TEXT_MODES[0]) not in TEXT_MODES:
        raise ValueError(f"{where}: zero_shot.amplify_text_mode must be one of {TEXT_MODES}")
    ns = _amplify_list(zs)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in ns):
        raise ValueError(f"{where}: zero_shot.amplify takes integers >= 1")
    n_fuse = zs.get("amplify_in_fusion", "dev")
    if n_fuse != "dev" and not (isinstance(n_fuse, int) and not isinstance(n_fuse, bool) and n_fuse >= 1):
        raise ValueError(f"{where}: zero_shot.amplify_in_fusion is 'dev' (each ALM's N of amplify with the best dev "
                         f"UAR) or an integer >= 1, got {n_fuse!r}")
    scale = zs.get("scale", "model")
    if scale != "model" and not isinstance(scale, (int, float)):
        raise ValueError(f"{where}: zero_shot.scale is 'model' (the checkpoint's logit scale) or a number")
    fms = cfg.get("fms") or {}
    if not isinstance(fms, dict) or not fms:
        raise ValueError(f"{where}: 'fms' must map names to probe models ({{encoder: ..., pooling: ...}})")
    for name, m in fms.items():
        probe.check_config(_probe_cfg(cfg, name, m), f"{where}: fms.{name}")
    f = cfg.get("fusion") or {}
    reject_unknown(f, FUSION_KEYS, f"{where}: fusion")
    if f.get("domain", "log") not in DOMAINS:
        raise ValueError(f"{where}: fusion.domain must be one of {DOMAINS}")
    if f.get("label_free", "entropy") not in LABEL_FREE:
        raise ValueError(f"{where}: fusion.label_free must be one of {LABEL_FREE}")
    if f.get("headline", "dev") not in ("dev", "label_free"):
        raise ValueError(f"{where}: fusion.headline must be dev or label_free")
    if f.get("dev_fallback") not in (None, "train"):
        raise ValueError(f"{where}: fusion.dev_fallback is 'train' (or unset)")
    reject_unknown(cfg.get("eval") or {}, EVAL_CI_KEYS, f"{where}: eval")
    check_ci_unit(cfg.get("eval") or {}, where)


def dev_set(cfg: dict, split: Split) -> str:
    """The set temperatures and dev weights are fitted on: the split's dev set, or with
    ``fusion.dev_fallback: train`` (folds without one, e.g. IEMOCAP LOSO) its train set."""
    if split.dev:
        return split.dev
    if (cfg.get("fusion") or {}).get("dev_fallback") == "train":
        log.warning("%s has no dev set: temperatures and dev weights are fitted on its train set %s, where the "
                    "FM probes were trained (biased toward them); the label-free rows are unaffected",
                    split.tag, split.train)
        return split.train
    raise SystemExit(f"{split.tag}: zsfuse needs a dev set (temperatures and dev weights are fitted on it); "
                     f"give the protocol one or set fusion.dev_fallback: train")


def _amplify_list(zs: dict) -> list[int]:
    ns = zs.get("amplify", [1])
    return [ns] if isinstance(ns, int) else list(ns)


def _probe_cfg(cfg: dict, name: str, model: dict) -> dict:
    """An FM as the probe task's config (its model section, the shared fm_data)."""
    out = {"task": "probe", "model": copy.deepcopy(model or {}), "data": dict(cfg.get("fm_data") or {})}
    if cfg.get("label_map"):
        out["label_map"] = cfg["label_map"]
    return out


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    """Nothing to train ahead of evaluation: the FM probes train inside stage 9 (they are cheap)."""
    log.info("%s %s: zsfuse trains its probes at evaluation (stage 9); nothing to do", ctx.name, split.tag)


# ------------------------------------------------------------------ systems --


@dataclass
class System:
    """One ablation row: its kind, dev and test logits (or fused log-scores)."""

    name: str
    kind: str           # alm | fm | fusion
    dev: np.ndarray
    test: dict[str, np.ndarray]
    info: dict


def _alm_systems(cfg: dict, split: Split, ctx: TaskContext, labels: list[str], dev: str, y_dev: np.ndarray
                 ) -> tuple[list[System], dict, dict]:
    """Every ALM's zero-shot rows; returns (rows, ALM name -> the row that enters fusion, the same at N = 1).

    The row entering fusion is the ``zero_shot.ensemble`` row amplified
    ``amplify_in_fusion`` times; with ``dev``, at the ``N`` of ``{1} + amplify``
    with the best UAR on ``y_dev`` (ties: the smaller ``N``), chosen as the
    fusion weights are.
    """
    from sertk.data.dataset import AudioDataset
    from sertk.features.embedding_cache import cache_key, cached_features
    from sertk.models.clap_zeroshot import ClapZeroShot

    zs = cfg.get("zero_shot") or {}
    prompts = _prompts(cfg, labels)
    sets = [dev, *split.tests]
    ns = _amplify_list(zs)
    n_fuse = zs.get("amplify_in_fusion", "dev")
    fuse_ns = sorted({1, *ns}) if n_fuse == "dev" else [int(n_fuse)]
    ens = zs.get("ensemble", "embedding")
    text_mode = zs.get("amplify_text_mode", TEXT_MODES[0])
    rows, for_fusion, at_one = [], {}, {}
    for name, a in cfg["alms"].items():
        clap = ClapZeroShot(a["name_or_path"], a.get("revision"), a.get("padding"), ctx.dump / "clap_embeds",
                            tokenizer=a.get("tokenizer"), msclap=a.get("msclap"))
        scale = clap.logit_scale if zs.get("scale", "model") == "model" else float(zs["scale"])
        audio = {}
        for n_audio in sorted({1, *fuse_ns, *ns} if zs.get("amplify_audio", True) else {1}):
            emb = clap.embedder(n_audio)
            key = cache_key(clap.spec(n_audio), clap.digest, clap.sample_rate, None)
            for s in sets:
                ds = AudioDataset(ctx.datadir(s), sample_rate=clap.sample_rate, label_map=None, targets=())
                feats = cached_features(ctx.dump / "clap_embeds", key, s, emb, ds,
                                        {"clap": clap.spec(n_audio), "weights_sha256": clap.digest},
                                        batch_size=int(zs.get("batch_size", 1)))
                audio[n_audio, s] = np.stack([feats[u][0].numpy() for u in ds.utts])

        def row(ensemble: str, n: int) -> System:
            n_a = n if zs.get("amplify_audio", True) else 1
            n_t = n if zs.get("amplify_text", True) else 1
            out = {s: _normalize(class_logits(audio[n_a, s], clap.text_embeddings, prompts, labels, ensemble, n_t,
                                              text_mode, scale, float(zs.get("temperature", 1.0))),
                                 zs.get("normalize", "softmax"))
                   for s in sets}
            label = {"single": "single prompt", "embedding": "ensemble (embedding)",
                     "score": "ensemble (score)"}[ensemble] + (f" + amplify x{n}" if n > 1 else "")
            return System(f"{name}: {label}", "alm", out[dev], {t: out[t] for t in split.tests},
                          {"model": name, "checkpoint": clap.name, "ensemble": ensemble, "amplify_audio": n_a,
                           "amplify_text": n_t, "amplify_text_mode": text_mode, "scale": round(scale, 4),
                           "temperature": zs.get("temperature", 1.0)})

        variants = [("single", 1), ("embedding", 1), ("score", 1)] + [(ens, n) for n in ns if n > 1]
        built = {v: row(*v) for v in dict.fromkeys(variants + [(ens, n) for n in fuse_ns])}
        rows += [built[v] for v in variants]
        n_best = max(fuse_ns, key=lambda n: (round(float(uar_of(built[ens, n].dev, y_dev, len(labels))), 10), -n))
        chosen = built[ens, n_best]
        for_fusion[name] = System(chosen.name, "alm", chosen.dev, chosen.test,
                                  {**chosen.info, "amplify_in_fusion": n_best,
                                   "amplify_chosen_on": "dev" if n_fuse == "dev" else "config"})
        at_one[name] = built[ens, 1]  # every ensemble's N = 1 row is a variant
    return rows, for_fusion, at_one


def _normalize(logits: np.ndarray, how: str) -> np.ndarray:
    """``center``: subtract each class's mean logit over the set (a label-free prior correction)."""
    return logits - logits.mean(0, keepdims=True) if how == "center" else logits


def _prompts(cfg: dict, labels: list[str]) -> PromptSet:
    p = cfg["prompts"]
    if isinstance(p, dict):
        return PromptSet.build(p.get("templates"), p.get("classes"), labels, "prompts")
    return PromptSet.load(p, labels)


def _fm_systems(cfg: dict, split: Split, ctx: TaskContext, labels: LabelMap, dev: str) -> list[System]:
    """Each FM: the probe task trains on the split's train set; its dev and test log-posteriors."""
    from sertk.tasks import probe
    rows = []
    for name, m in cfg["fms"].items():
        pcfg = _probe_cfg(cfg, name, m)
        pctx = TaskContext(data=ctx.data, dump=ctx.dump, expdir=ctx.expdir / "fm" / name, name=f"{ctx.name}_{name}",
                           stage=ctx.stage, sample_rate=ctx.sample_rate)
        probe.train(pcfg, split, pctx)
        feats = probe._Features(pcfg, pctx)
        z = np.load(pctx.expdir / "model.npz")
        out = {s: np.log(np.clip(feats.predict(z, s, labels)[3], 1e-12, None)) for s in [dev, *split.tests]}
        rows.append(System(f"{name}: probe", "fm", out[dev], {t: out[t] for t in split.tests},
                           {"model": name, **feats.record()}))
    return rows


def fusion_systems(alms: dict[str, System], fms: list[System], y_dev: np.ndarray, tests: list[str], domain: str,
                   step: float, rule: str, pairs: bool = True, tag: str = "") -> list[System]:
    """Every fusion row: (each ALM + each FM,) all ALMs, all FMs, everything; dev-set and label-free.

    Only the dev rows read ``y_dev`` (temperatures, weights); the label-free
    rows are a function of the logits alone. ``tag`` (e.g. " [ALMs x1]")
    names an ablation run: its rows leave out the FMs-only group.
    """
    members = list(alms.values()) + list(fms)
    temps = {s.name: calibrate_temperature(s.dev, y_dev) for s in members}
    groups = []
    if pairs:
        groups += [(f"{a.info['model']} + {f.info['model']}", [a, f]) for a in alms.values() for f in fms]
    if len(alms) > 1:
        groups.append(("ALMs", list(alms.values())))
    if len(fms) > 1 and not tag:
        groups.append(("FMs", list(fms)))
    groups.append(("ALMs + FMs", members))
    rows = []
    for gname, group in groups:
        lp_dev = [log_softmax(s.dev, temps[s.name]) for s in group]
        w = dev_weights(lp_dev, y_dev, domain, step)
        rows.append(System(f"fusion {gname}{tag} (dev)", "fusion", fuse(lp_dev, w, domain),
                           {t: fuse([log_softmax(s.test[t], temps[s.name]) for s in group], w, domain)
                            for t in tests},
                           {"members": [s.name for s in group], "rule": "dev", "domain": domain,
                            "weights": [round(float(x), 3) for x in w],
                            "temperatures": [round(temps[s.name], 4) for s in group]}))
        rows.append(System(f"fusion {gname}{tag} (label-free)", "fusion",
                           fuse_label_free([s.dev for s in group], rule, domain),
                           {t: fuse_label_free([s.test[t] for s in group], rule, domain) for t in tests},
                           {"members": [s.name for s in group], "rule": f"label-free {rule}", "domain": domain}))
    return rows


# ------------------------------------------------------------------ results --


def _row_metrics(scores: np.ndarray, gold: list[str], labels: list[str], n_boot: int, speakers: list[str],
                 ci_unit: str) -> dict:
    pred = [labels[i] for i in scores.argmax(1)]
    m = classification_metrics(gold, pred, labels)
    out = {k: float(m[k]) for k in ("uar", "wa", "macro_f1")}
    if n_boot:
        for k in ("uar", "wa", "macro_f1"):
            out[f"{k}_ci"], out["ci_method"] = interval(gold, pred, k, speakers, ci_unit, n_boot)
    return out


def _paired_gain(scores_a: np.ndarray, scores_b: np.ndarray, gold: list[str], labels: list[str], n_boot: int,
                 speakers: list[str]) -> dict | None:
    """UAR(A) - UAR(B) on this test set's utterances, paired (the fusion's claim to a gain): sertk's default
    paired test (speakers resampled; too few speakers: utterances permuted, and the result says so)."""
    if not n_boot:
        return None
    pa, pb = ([labels[i] for i in s.argmax(1)] for s in (scores_a, scores_b))
    res = paired_test(gold, pa, pb, "uar", speakers, n=n_boot)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()} | \
        ({"ci": [round(x, 4) for x in res["ci"]]} if "ci" in res else {})


def _posteriors_text(utts: list[str], scores: np.ndarray, labels: list[str]) -> str:
    p = np.exp(log_softmax(scores))
    return "# utt " + " ".join(labels) + "\n" + "".join(
        f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, p))


def _slug(name: str) -> str:
    """A row name as a file name: 'c1: ensemble (embedding) + amplify x2' -> 'c1_ensemble_embedding_amplify_x2'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    from sertk.data.datadir import DataDir
    from sertk.tasks import probe
    from sertk.tasks.egemaps_linear import write_classification

    labels = LabelMap.load(cfg.get("label_map") or split.label_map)
    dev = dev_set(cfg, split)
    gold = {}
    for s in [dev, *split.tests]:
        d = DataDir.read(ctx.datadir(s))
        gold[s] = (d.utts, [labels.canonical(d.utt2emo[u]) for u in d.utts], [d.utt2spk[u] for u in d.utts])
    y_dev = np.array([labels.index(g) for g in gold[dev][1]])
    alm_rows, alm_fuse, alm_one = _alm_systems(cfg, split, ctx, labels.labels, dev, y_dev)
    fm_rows = _fm_systems(cfg, split, ctx, labels, dev)
    f = cfg.get("fusion") or {}
    fargs = (y_dev, split.tests, f.get("domain", "log"), float(f.get("weight_step", 0.1)),
             f.get("label_free", "entropy"), bool(f.get("pairs", True)))
    fusion_rows = fusion_systems(alm_fuse, fm_rows, *fargs)
    if (cfg.get("zero_shot") or {}).get("amplify_in_fusion", "dev") != 1:  # amplification's share of the fusion
        fusion_rows += fusion_systems(alm_one, fm_rows, *fargs, tag=" [ALMs x1]")
    rows = alm_rows + fm_rows + fusion_rows
    n_boot = (cfg.get("eval") or {}).get("bootstrap", 1000)
    ci_unit = (cfg.get("eval") or {}).get("ci_unit", "speaker")
    headline = next(r for r in fusion_rows if r.name == "fusion ALMs + FMs ("
                    + ("label-free" if f.get("headline", "dev") == "label_free" else "dev") + ")")
    written = []
    for test in split.tests:
        utts, g, spk = gold[test]
        outdir = ctx.expdir / "eval" / test
        table = []
        for r in rows:
            dev_uar = float(uar_of(r.dev, y_dev, len(labels.labels)))
            table.append({"system": r.name, "kind": r.kind, "dev_uar": round(dev_uar, 4),
                          **_row_metrics(r.test[test], g, labels.labels, n_boot, spk, ci_unit), **r.info})
            write_text_atomic(outdir / "posteriors" / f"{_slug(r.name)}.txt",
                              _posteriors_text(utts, r.test[test], labels.labels))
        fm_tab = [t for t in table if t["kind"] == "fm"]
        fus_tab = [t for t in table if t["kind"] == "fusion"]
        best_fm_dev = max(fm_tab, key=lambda t: t["dev_uar"])
        best_fus_dev = max(fus_tab, key=lambda t: t["dev_uar"])
        gain = {"best_fm_by_dev": best_fm_dev["system"], "best_fusion_by_dev": best_fus_dev["system"],
                "uar_gain_dev_selected": round(best_fus_dev["uar"] - best_fm_dev["uar"], 4),
                "uar_gain_oracle": round(max(t["uar"] for t in fus_tab) - max(t["uar"] for t in fm_tab), 4),
                "headline_minus_best_fm_by_dev": round(
                    next(t["uar"] for t in table if t["system"] == headline.name) - best_fm_dev["uar"], 4),
                "headline_vs_best_fm_paired": _paired_gain(
                    headline.test[test], next(r for r in rows if r.name == best_fm_dev["system"]).test[test], g,
                    labels.labels, n_boot, spk)}
        pred = [labels.labels[i] for i in headline.test[test].argmax(1)]
        extra = {"fold": split.fold, "system": headline.name, "ablation": table, "gain": gain,
                 "alms": {k: v.get("name_or_path") for k, v in cfg["alms"].items()},
                 "fms": {k: probe.encoder_name(v.get("encoder") or {}) for k, v in cfg["fms"].items()},
                 "model_dir": str(ctx.expdir)}
        path, metrics = write_classification(outdir, ctx, split.record(test, ctx.data), utts, g, pred,
                                             labels.labels, extra, n_boot, np.exp(log_softmax(headline.test[test])),
                                             ci_unit, spk)
        write_json_atomic(outdir / "ablation.json", {"rows": table, "gain": gain})
        written.append(path)
        log.info("%s %s -> %s: %s UAR %.4f (best FM by dev %s %.4f; gain %+.4f)", ctx.name, split.tag, test,
                 headline.name, metrics["uar"], best_fm_dev["system"], best_fm_dev["uar"],
                 gain["headline_minus_best_fm_by_dev"])
        for t in table:
            log.info("  %-48s dev %.3f  test UAR %.3f WA %.3f F1 %.3f", t["system"], t["dev_uar"], t["uar"], t["wa"],
                     t["macro_f1"])
    return written
