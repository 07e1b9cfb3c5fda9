"""Acoustic concept tokens in a generative ALM's prompt, aligned and perturbed (stage 10).

The audio stays the same; only the token block of the text prompt changes
(seed paper: Tsangko, Triantafyllopoulos, Schuller, "Acoustic Cue Alignment in
Audio Language Models for Speech Emotion Recognition", arXiv 2606.07309).
Conditions (all seeded; docs/concept_alm.md):

| condition | token block |
|---|---|
| ``none`` | no block |
| ``aligned`` | the utterance's own tokens (stage 2, ``dump/tokens/<protocol>[/foldK]/<set>/utt2tokens``) |
| ``shuffled`` | another utterance's tokens (a derangement over the test set) |
| ``permuted`` | the utterance's own levels moved across its six slots |
| ``conflicting`` | every slot contradicts the audio: low <-> high, mid -> low or high (seeded per slot) |
| ``corrupted`` | every level drawn at random from the scale |
| ``corrupted_nonsense`` | every level replaced by a meaningless word |

Each condition is decided two ways (``decisions``): ``scoring`` (constrained
scoring of the label answers) and ``generation`` (free answer, parsed; an
unparsable answer is an error in its own ``<unparsed>`` column and counted).
Per test set, condition and decision: ``eval/<test>/<condition>/<decision>/``
holds results.json (UAR, WA, macro-F1 with bootstrap CIs, and the condition
figures: dUAR vs aligned and vs none, neutral share and the confusion mass moved
into the neutral column, agreement with the no-token prediction, prediction
entropy), predictions.txt, answers.txt or scores.txt, and confusion.png;
``eval/<test>/<condition>/utt2tokens`` the token text each prompt carried.
Nothing is trained: ``sertk evaluate`` (stage 10) does it all. ``eval.nj`` > 1
evaluates each test set in parts, one process each, merged into the results
of one job (see "sharding" below).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from sertk.common.fileio import write_text_atomic
from sertk.common.protocol import Split
from sertk.data.audio import read_utterance
from sertk.data.datadir import DataDir
from sertk.eval.metrics import classification_metrics, interval
from sertk.eval.significance import holm, paired_test
from sertk.eval.results import write_result
from sertk.features import concept_tokens as ct
from sertk.tasks import EVAL_CI_KEYS, TaskContext, check_ci_unit, label_map_of, reject_unknown

log = logging.getLogger(__name__)

CONDITIONS = ("none", "aligned", "shuffled", "permuted", "conflicting", "corrupted", "corrupted_nonsense")
DECISIONS = ("scoring", "generation")
UNPARSED = "<unparsed>"
PROMPT_KEYS = {"instruction", "token_block", "separator", "answers", "synonyms", "candidate_suffix"}


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "model", "prompt", "conditions", "decisions", "perturb", "neutral", "data",
                         "generation", "eval", "label_map", "tokens"}, where)
    reject_unknown(cfg.get("model") or {}, {"name_or_path", "revision", "dtype", "device", "system"}, f"{where}: model")
    if not (cfg.get("model") or {}).get("name_or_path"):
        raise ValueError(f"{where}: model.name_or_path is required (a hub id or zoo/<name>)")
    p = cfg.get("prompt") or {}
    reject_unknown(p, PROMPT_KEYS, f"{where}: prompt")
    if "{labels}" not in p.get("instruction", "{labels}"):
        raise ValueError(f"{where}: prompt.instruction must hold {{labels}} (the answer list)")
    if "{tokens}" not in p.get("token_block", "{tokens}"):
        raise ValueError(f"{where}: prompt.token_block must hold {{tokens}}")
    bad = [c for c in cfg.get("conditions", CONDITIONS) if c not in CONDITIONS]
    if bad:
        raise ValueError(f"{where}: conditions {bad} unknown; choose from {list(CONDITIONS)}")
    bad = [d for d in cfg.get("decisions", DECISIONS) if d not in DECISIONS]
    if bad or not cfg.get("decisions", DECISIONS):
        raise ValueError(f"{where}: decisions must be a non-empty subset of {list(DECISIONS)}")
    pert = cfg.get("perturb") or {}
    if "conflict_mid" in pert:
        raise ValueError(f"{where}: perturb.conflict_mid is gone: conflicting tokens now contradict the audio in "
                         f"every slot (mid -> low or high, seeded); remove the key")
    reject_unknown(pert, {"seed"}, f"{where}: perturb")
    reject_unknown(cfg.get("data") or {}, {"batch_size", "max_duration"}, f"{where}: data")
    reject_unknown(cfg.get("generation") or {}, {"max_new_tokens"}, f"{where}: generation")
    check_sharding(cfg.get("eval") or {}, where)
    from sertk.models.scoring import check_scoring  # torch: imported only when a config is checked or run

    check_scoring((cfg.get("eval") or {}).get("scoring", "sum"), f"{where}: eval.scoring")
    reject_unknown(cfg.get("tokens") or {}, {"dir"}, f"{where}: tokens")


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    """Nothing to train: the ALM is used as it is (zero-shot, as in the paper)."""
    log.info("%s %s: concept_alm trains nothing; run sertk evaluate (stage 10)", ctx.name, split.tag)


# ------------------------------------------------------------------ conditions
def condition_tokens(condition: str, tokens: list[dict[str, str]], levels: list[str], seed: int
                     ) -> list[dict[str, str]] | None:
    """The token dicts a condition puts in the prompts (None: no block), from stage 2's perturbations."""
    if condition == "none":
        return None
    if condition == "aligned":
        return [dict(t) for t in tokens]
    if condition == "shuffled":
        return ct.shuffle_tokens(tokens, seed)
    if condition == "permuted":
        return ct.permute_slots(tokens, seed)
    if condition == "conflicting":
        return ct.conflict_tokens(tokens, levels, seed)
    if condition == "corrupted":
        return ct.corrupt_tokens(tokens, seed, levels)
    if condition == "corrupted_nonsense":
        return ct.nonsense_tokens(tokens, seed)
    raise ValueError(f"unknown condition {condition!r}")


# --------------------------------------------------------------------- figures
def entropy_bits(pred: list[str], labels: list[str]) -> float:
    """Entropy of the predicted-label distribution (bits): log2(C) when every class is predicted
    equally often, 0 when one class takes every prediction (collapse)."""
    p = np.array([pred.count(lab) for lab in labels], dtype=np.float64) / max(len(pred), 1)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def neutral_figures(confusion, labels: list[str], neutral: str | None) -> dict:
    """Share of predictions that are neutral, and the share of utterances of other classes predicted
    neutral (off-diagonal mass of the neutral column)."""
    if not neutral or neutral not in labels:
        return {}
    cm = np.asarray(confusion, dtype=np.float64)
    j = labels.index(neutral)
    n = cm.sum()
    return {"neutral_share": float(cm[:, j].sum() / n),
            "neutral_error_mass": float((cm[:, j].sum() - cm[j, j]) / n)}


def condition_figures(pred: dict[str, list[str]], gold: list[str], labels: list[str], neutral: str | None,
                      n_boot: int, speakers: list[str] | None = None, ci_unit: str = "speaker") -> dict[str, dict]:
    """condition -> metrics of one decision: the standard ones with CIs, the condition figures, and each
    condition's paired test against aligned and against no tokens (Holm-corrected over this decision's
    tests: the comparisons the concept-token paper makes)."""
    out = {}
    for cond, p in pred.items():
        cols = labels + ([UNPARSED] if UNPARSED in p else [])
        m = classification_metrics(gold, p, cols)
        if n_boot:
            for k in ("uar", "wa", "macro_f1"):
                m[f"{k}_ci"], m["ci_method"] = interval(gold, p, k, speakers,
                                                        ci_unit if speakers is not None else "utterance", n_boot)
        m.update(neutral_figures(m["confusion"], cols, neutral))
        m["prediction_entropy_bits"] = entropy_bits(p, labels)
        m["prediction_entropy_norm"] = m["prediction_entropy_bits"] / np.log2(len(labels))
        m["unparsed"] = int(p.count(UNPARSED))
        m["unparsed_rate"] = m["unparsed"] / len(p)
        out[cond] = m
    for cond, m in out.items():
        for ref in ("aligned", "none"):
            if ref in out and cond != ref:
                r = out[ref]
                m[f"duar_vs_{ref}"] = m["uar"] - r["uar"]
                if "neutral_share" in m:
                    m[f"neutral_share_change_vs_{ref}"] = m["neutral_share"] - r["neutral_share"]
                    m[f"neutral_mass_moved_vs_{ref}"] = m["neutral_error_mass"] - r["neutral_error_mass"]
        if "none" in pred and cond != "none":
            m["agreement_with_none"] = float(np.mean([a == b for a, b in zip(pred[cond], pred["none"])]))
    if n_boot:
        tests = [(cond, ref, paired_test(gold, pred[cond], pred[ref], "uar",
                                         speakers if ci_unit == "speaker" else None, n=max(n_boot, 2000)))
                 for cond in out for ref in ("aligned", "none") if ref in out and cond != ref]
        for (cond, ref, res), adj in zip(tests, holm([t[2]["p"] for t in tests])):
            out[cond][f"paired_vs_{ref}"] = {**res, "p_holm": adj}
            out[cond][f"p_vs_{ref}_holm"] = adj
    return out


# ------------------------------------------------------------------ evaluation
def _answers(cfg: dict, labels: list[str]) -> dict[str, str]:
    answers = (cfg.get("prompt") or {}).get("answers") or {}
    unknown = set(answers) - set(labels)
    if unknown:
        raise ValueError(f"prompt.answers names {sorted(unknown)}, not labels of this protocol ({labels})")
    unknown = set((cfg.get("prompt") or {}).get("synonyms") or {}) - set(labels)
    if unknown:
        raise ValueError(f"prompt.synonyms names {sorted(unknown)}, not labels of this protocol ({labels})")
    return {lab: answers.get(lab, lab) for lab in labels}


def _tokens_dir(cfg: dict, ctx: TaskContext, split: Split) -> Path:
    root = (cfg.get("tokens") or {}).get("dir")
    return (Path(root) if root else ctx.dump / "tokens") / split.tag  # stage 2: <protocol>[/foldK]


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    from sertk.eval.plots import plot_confusion
    from sertk.models.generative_alm import GenerativeALM, emotion_prompt, parse_answer

    labels_map = label_map_of(cfg, split, "concept_alm")
    labels = list(labels_map.labels)
    answers = _answers(cfg, labels)
    prompt = cfg.get("prompt") or {}
    instruction = prompt.get("instruction", "What emotion does the speaker express? Answer with one word: {labels}.")
    block, sep = prompt.get("token_block", "Acoustic cues: {tokens}."), prompt.get("separator", " ")
    conditions = list(cfg.get("conditions", CONDITIONS))
    decisions = list(cfg.get("decisions", DECISIONS))
    pert = cfg.get("perturb") or {}
    seed = int(pert.get("seed", 0))
    neutral = cfg.get("neutral")
    data = cfg.get("data") or {}
    bs, max_dur = int(data.get("batch_size", 8)), data.get("max_duration")
    n_boot = int((cfg.get("eval") or {}).get("bootstrap", 1000))
    scoring = (cfg.get("eval") or {}).get("scoring", "sum")  # sertk.models.scoring.DEFAULT_SCORING
    max_new = int((cfg.get("generation") or {}).get("max_new_tokens", 16))
    nj, job = shards_of(cfg)
    if nj > 1 and job is None:  # the parts run in their own processes; this one merges them
        run_parts(cfg, split, ctx, nj)
        alm = None
    else:
        alm = GenerativeALM.load(cfg["model"])
        cands = alm.candidate_ids(list(answers.values()), prompt.get("candidate_suffix", ""))
    tok_root = _tokens_dir(cfg, ctx, split)
    levels = _levels(tok_root)
    written = []
    for test in split.tests:
        start = time.time()
        d = DataDir.read(ctx.datadir(test))
        utts = d.utts
        gold = [labels_map.canonical(d.utt2emo[u]) for u in utts]
        table = ct.read_utt2tokens(tok_root / test / "utt2tokens")
        missing = [u for u in utts if u not in table]
        if missing:
            raise ValueError(f"{tok_root / test}/utt2tokens lacks {len(missing)} utterance(s) of {test}, e.g. "
                             f"{missing[:3]}; run stage 2")
        aligned = [table[u] for u in utts]
        lo, hi = part_rows(len(utts), bs, nj, job)  # this process's utterances: all, or part ``job``
        if alm is not None:
            audio = [None] * lo + [_audio(d, u, alm.sampling_rate, max_dur) for u in utts[lo:hi]]
            # the audio encoder once per clip, for every condition and decision
            embeds = [None] * lo + alm.audio_embeds(audio[lo:hi])
        outdir = ctx.expdir / "eval" / test
        preds: dict[str, dict[str, list[str]]] = {dec: {} for dec in decisions}
        extras: dict[str, dict[str, list]] = {dec: {} for dec in decisions}
        changed = {}
        for cond in conditions:
            toks = condition_tokens(cond, aligned, levels, seed)
            texts = [emotion_prompt(instruction, list(answers.values()), None if toks is None else toks[i], block, sep)
                     for i in range(len(utts))]
            if toks is not None and job is None:
                write_text_atomic(outdir / cond / "utt2tokens", "".join(f"{u} {ct.render(t)}\n" for u, t in zip(utts, toks)))
                changed[cond] = ct.changed_figures(toks, aligned)
            for dec in decisions:
                if alm is None:
                    continue
                p, x = [], []
                for i in range(lo, hi, bs):
                    tb, ab, eb = texts[i:i + bs], audio[i:i + bs], embeds[i:i + bs]
                    if dec == "scoring":
                        s = alm.score(tb, ab, cands, audio_embeds=eb, scoring=scoring)
                        x += s.tolist()
                        p += [labels[j] for j in s.argmax(1).tolist()]
                    else:
                        out = alm.generate(tb, ab, max_new, audio_embeds=eb)
                        x += out
                        p += [parse_answer(a, answers, prompt.get("synonyms")) or UNPARSED for a in out]
                preds[dec][cond], extras[dec][cond] = p, x
        key = part_key(cfg, test, utts, aligned, levels)
        if job is not None:  # a part job: its raw outputs only; the merging process computes the figures
            write_part(ctx, test, job, key, utts[lo:hi], preds, extras)
            continue
        if alm is None:  # in the order a single job computes them (the part files hold sorted keys)
            merged = merge_parts(ctx, test, nj, key, utts)
            preds, extras = ({dec: {c: m[dec][c] for c in conditions} for dec in decisions} for m in merged)
        for dec in decisions:
            figs = condition_figures(preds[dec], gold, labels, neutral, n_boot, [d.utt2spk[u] for u in utts],
                                     (cfg.get("eval") or {}).get("ci_unit", "speaker"))
            for cond, m in figs.items():
                # utterances whose prompt carries any token other than aligned; slots: (utterance, concept) pairs
                m["tokens_changed"] = changed[cond]["utterances_changed"] if cond in changed else None
                m["token_slots_changed"] = changed[cond]["slots_changed"] if cond in changed else None
                cols = labels + ([UNPARSED] if m["unparsed"] else [])
                where = outdir / cond / dec
                _write_files(where, utts, preds[dec][cond], extras[dec][cond], dec, labels)
                extra = {"fold": split.fold, "condition": cond, "decision": dec,
                         **({"scoring": scoring} if dec == "scoring" else {}),
                         "model": cfg["model"]["name_or_path"], "tokens": str(tok_root / test),
                         "prompt_example": texts_example(instruction, answers, block, sep, cond, aligned, levels,
                                                         seed)}
                path = where / "results.json"
                write_result(path, stage=ctx.stage, name=f"{ctx.name}_{dec}_{cond}", task="classification",
                             protocol=split.record(test, ctx.data), metrics=m, labels=cols,
                             confusion=m["confusion"], extra=extra)
                plot_confusion(m["confusion"], cols, where / "confusion.png",
                               f"{ctx.name}: {cond}, {dec} ({test})")
                written.append(path)
            log.info("%s %s -> %s [%s]: %s", ctx.name, split.tag, test, dec, ", ".join(
                f"{c} {figs[c]['uar']:.3f}" for c in conditions))
        log.info("%s %s -> %s: %d conditions x %d decisions in %.1f s", ctx.name, split.tag, test,
                 len(conditions), len(decisions), time.time() - start)
    return written


def texts_example(instruction, answers, block, sep, cond, aligned, levels, seed) -> str:
    """The first utterance's user text under a condition (recorded with the results)."""
    from sertk.models.generative_alm import emotion_prompt

    toks = condition_tokens(cond, aligned, levels, seed)
    return emotion_prompt(instruction, list(answers.values()), None if toks is None else toks[0], block, sep)


def _levels(tok_root: Path) -> list[str]:
    """The level scale stage 2 used (its thresholds.json), for the conflicting and corrupted conditions."""
    import json

    path = tok_root / "thresholds.json"
    try:
        return list(json.loads(path.read_text())["levels"])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: cannot read the concept-token levels ({e}); run stage 2") from e


def _audio(d: DataDir, utt: str, sr: int, max_dur) -> np.ndarray:
    wav, _ = read_utterance(d, utt, sr)
    wav = np.asarray(wav, dtype=np.float32)
    return wav[: int(float(max_dur) * sr)] if max_dur else wav


def _write_files(where: Path, utts, pred, extra, decision: str, labels: list[str]) -> None:
    write_text_atomic(where / "predictions.txt", "".join(f"{u} {p}\n" for u, p in zip(utts, pred)))
    if decision == "scoring":  # summed log-probability of each label's answer
        write_text_atomic(where / "scores.txt", "# utt " + " ".join(labels) + "\n" + "".join(
            f"{u} {' '.join(f'{v:.4f}' for v in row)}\n" for u, row in zip(utts, extra)))
    else:
        write_text_atomic(where / "answers.txt", "".join(f"{u} {a.replace(chr(10), ' ')}\n" for u, a in zip(utts, extra)))


# ---------------------------------------------------------------- sharding
# ``eval.nj`` > 1 cuts every test set into that many parts, whole batches each, and evaluates each part in
# its own process (``eval.backend``: local processes, or a Slurm array with ``eval.slurm_opts``); this
# process then merges the parts' raw outputs and computes every figure on the whole set. Every batch is the
# one a single job evaluates, so the merged results are those of one job (tested).
BACKENDS = ("local", "slurm")


def check_sharding(ev: dict, where: str) -> None:
    reject_unknown(ev, {"nj", "job", "backend", "slurm_opts", "scoring"} | EVAL_CI_KEYS, f"{where}: eval")
    check_ci_unit(ev, where)
    nj = ev.get("nj", 1)
    if not isinstance(nj, int) or nj < 1:
        raise ValueError(f"{where}: eval.nj must be a positive integer, got {nj!r}")
    job = ev.get("job")
    if job is not None and not (isinstance(job, int) and 1 <= job <= nj):
        raise ValueError(f"{where}: eval.job must be an integer in 1..eval.nj ({nj}), got {job!r}")
    if ev.get("backend", "local") not in BACKENDS:
        raise ValueError(f"{where}: eval.backend must be one of {list(BACKENDS)}")


def shards_of(cfg: dict) -> tuple[int, int | None]:
    ev = cfg.get("eval") or {}
    return int(ev.get("nj", 1)), (None if ev.get("job") is None else int(ev["job"]))


def part_rows(n: int, batch_size: int, nj: int, job: int | None) -> tuple[int, int]:
    """The utterance rows [lo, hi) of part ``job`` (1-based) of ``nj``: contiguous whole batches, so every
    batch is the one a single job evaluates. ``job`` None: every row."""
    if job is None:
        return 0, n
    batches = -(-n // batch_size)
    first, last = (job - 1) * batches // nj, job * batches // nj
    return min(first * batch_size, n), min(last * batch_size, n)


def part_key(cfg: dict, test: str, utts: list[str], aligned: list[dict], levels: list[str]) -> str:
    """What a part's outputs depend on (the config less its ``eval`` block, the set and its tokens)."""
    from sertk.common.fileio import hash_obj

    return hash_obj({"cfg": {k: v for k, v in cfg.items() if k != "eval"}, "test": test, "utts": utts,
                     "tokens": aligned, "levels": levels})


def _parts_dir(ctx: TaskContext) -> Path:
    return ctx.expdir / "eval" / "parts"


def write_part(ctx: TaskContext, test: str, job: int, key: str, utts: list[str], preds: dict, extras: dict) -> None:
    from sertk.common.fileio import write_json_atomic

    write_json_atomic(_parts_dir(ctx) / f"{test}.{job}.json",
                      {"key": key, "utts": utts, "preds": preds, "extras": extras})


def merge_parts(ctx: TaskContext, test: str, nj: int, key: str, utts: list[str]) -> tuple[dict, dict]:
    """The parts' predictions and raw outputs joined in utterance order; a part of another run is refused."""
    import json

    preds: dict = {}
    extras: dict = {}
    got: list[str] = []
    for job in range(1, nj + 1):
        path = _parts_dir(ctx) / f"{test}.{job}.json"
        part = json.loads(path.read_text())
        if part["key"] != key:
            raise ValueError(f"{path}: computed for another config or test set; run the evaluation again")
        got += part["utts"]
        for dec, conds in part["preds"].items():
            for cond, p in conds.items():
                preds.setdefault(dec, {}).setdefault(cond, []).extend(p)
                extras.setdefault(dec, {}).setdefault(cond, []).extend(part["extras"][dec][cond])
    if got != utts:
        raise ValueError(f"{_parts_dir(ctx)}: the {nj} parts of {test} hold {len(got)} utterances, not its {len(utts)}")
    return preds, extras


def run_parts(cfg: dict, split: Split, ctx: TaskContext, nj: int) -> None:
    """Evaluate the ``nj`` parts of every test set, one process each (``python -m sertk.tasks.concept_alm
    SPEC JOB``), locally or as a Slurm array; old parts are removed first, so none is reused."""
    import dataclasses
    import shutil
    import sys

    from sertk.common.fileio import write_json_atomic
    from sertk.common.jobs import launch
    from sertk.common.threads import current_threads

    where = _parts_dir(ctx)
    shutil.rmtree(where, ignore_errors=True)
    spec = where / "spec.json"
    write_json_atomic(spec, {"cfg": cfg, "split": dataclasses.asdict(split), "threads": current_threads(),
                             "ctx": {"data": str(ctx.data), "dump": str(ctx.dump), "expdir": str(ctx.expdir),
                                     "name": ctx.name, "stage": ctx.stage, "sample_rate": ctx.sample_rate}})
    ev = cfg.get("eval") or {}
    start = time.time()
    failed = launch([sys.executable, "-m", "sertk.tasks.concept_alm", str(spec), "JOB"], nj, where / "log",
                    ctx.name, ev.get("backend", "local"), None, str(ev.get("slurm_opts", "")), redo=True)
    if failed:
        raise RuntimeError(f"{ctx.name} {split.tag}: part(s) {failed} of {nj} failed; see {where / 'log'}")
    log.info("%s %s: %d parts evaluated in %.1f s", ctx.name, split.tag, nj, time.time() - start)


def run_part(spec_path: str, job: int) -> None:
    """One part job (what :func:`run_parts` starts): the evaluation of part ``job`` of every test set."""
    import json

    from sertk.common.logging import setup_logging
    from sertk.common.threads import set_threads

    setup_logging()
    spec = json.loads(Path(spec_path).read_text())
    set_threads(int(spec["threads"]))
    cfg = dict(spec["cfg"])
    cfg["eval"] = {**(cfg.get("eval") or {}), "job": int(job)}
    c = spec["ctx"]
    ctx = TaskContext(data=Path(c["data"]), dump=Path(c["dump"]), expdir=Path(c["expdir"]), name=c["name"],
                      stage=int(c["stage"]), sample_rate=int(c["sample_rate"]))
    evaluate(cfg, Split(**spec["split"]), ctx)


if __name__ == "__main__":
    import sys

    run_part(sys.argv[1], int(sys.argv[2]))
