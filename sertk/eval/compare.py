"""Pair systems' results on the same test utterances and test their difference (``sertk compare``, stage 11).

Results pair up by protocol id (corpus, protocol, fold, train and test sets,
label map, list digest) and task, and the utterances of a pair must be the
same. Classification results are tested in UAR (or WA, macro-F1), A/V/D
regression results in CCC (the mean over dimensions, or ``ccc_<dim>``). The
gold labels (or A/V/D values, on the scale the system scored them:
``eval.gold_range`` of its run) come from the recipe's data dirs and label
maps, and must reproduce each results.json's own figure before anything is
tested: a wrong data dir or an edited predictions.txt stops the comparison
instead of testing the wrong thing.

Repeated training seeds: results of one protocol id with different ``seed``
fields are one system's runs; seed s of A pairs with seed s of B (a single
run pairs with every seed of the other side; disjoint seeds pair in sorted
order, and the row says so) and the test is paired across seeds too
(:mod:`sertk.eval.significance`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from sertk.data.datadir import DataDir, DataDirError
from sertk.data.labels import LabelMap
from sertk.eval.metrics import CLASSIFICATION_BOOT_METRICS, classification_metrics, regression_metrics
from sertk.eval.results import RESULT_FILE, fold_order, load_result, read_results
from sertk.eval.significance import (CCC_METRICS, MIN_SPEAKERS, approximate_randomization, holm, paired_bootstrap,
                                     paired_test)

TESTS = ("bootstrap", "permutation")
TASKS = ("classification", "regression")
DEFAULT_METRIC = {"classification": "uar", "regression": "ccc"}
AVD_COLUMNS = ("arousal", "valence", "dominance")  # utt2avd's columns, and predictions.txt's of every A/V/D model
REGRESSION_TOL = 1e-3  # predictions.txt keeps 5 decimals: the recomputed CCC moves by ~1e-5, a wrong scale by far more


class CompareError(ValueError):
    """Results that cannot be compared; the message names the files."""


def metric_task(metric: str) -> str:
    """The task a metric tests: uar/wa/macro_f1 classification; ccc, ccc_mean, ccc_<dim> regression."""
    if metric in CLASSIFICATION_BOOT_METRICS:
        return "classification"
    if metric in CCC_METRICS or metric in {f"ccc_{d}" for d in AVD_COLUMNS}:
        return "regression"
    raise CompareError(f"metric must be one of {', '.join(CLASSIFICATION_BOOT_METRICS + CCC_METRICS)} or "
                       f"ccc_<dim> ({', '.join(AVD_COLUMNS)}), got {metric!r}")


def _records(path: Path) -> list[dict]:
    if path.is_file():
        return [load_result(path)]
    if (path / RESULT_FILE).is_file():
        return [load_result(path / RESULT_FILE)]
    return read_results(path)


def _glob(path: Path) -> list[dict]:
    if any(c in str(path) for c in "*?["):
        top = Path(path.anchor) if path.is_absolute() else Path()
        hits = sorted(top.glob(str(path.relative_to(top) if path.is_absolute() else path)))
        return [r for h in hits for r in _records(h)]
    return _records(path) if path.exists() else []


def system_results(path: str | Path, root: str | Path = ".") -> dict[tuple[str, str], dict]:
    """(task, protocol_id) -> {seed: result} of one system: a results.json, an eval dir, a tree of them, or a
    glob pattern of any of these (``selm/*/eval``: SELM's results without its few-shot runs); relative to
    ``root``. A result without ``seed`` is one run (seed None); one result per protocol id, task and seed."""
    path = Path(root) / path
    records = _glob(path)
    if not records:
        raise CompareError(f"{path}: no {RESULT_FILE} under it")
    kept = [r for r in records if r.get("task") in TASKS]
    if not kept:
        raise CompareError(f"{path}: no classification or regression result ({len(records)} of task "
                           f"{sorted({str(r.get('task')) for r in records})})")
    out: dict[tuple[str, str], dict] = {}
    for r in kept:
        runs = out.setdefault((r["task"], r["protocol_id"]), {})
        seed = r.get("seed")
        if seed in runs:
            raise CompareError(f"{path}: two results of one test set and seed {seed} ({runs[seed]['path']} and "
                               f"{r['path']}); point at a narrower dir (one condition of the system)")
        if runs and (seed is None) != (next(iter(runs)) is None):
            raise CompareError(f"{path}: results of one test set with and without a seed ({r['path']} and "
                               f"{next(iter(runs.values()))['path']}); point at one run's dirs")
        runs[seed] = r
    return out


def _dims(result: dict) -> list[str]:
    dims = list((result.get("metrics") or {}).get("dims") or AVD_COLUMNS)
    if dims != list(AVD_COLUMNS):
        raise CompareError(f"{result['path']}: dimensions {dims}; compare reads A/V/D in utt2avd's order "
                           f"{list(AVD_COLUMNS)}")
    return dims


def _predictions(result: dict) -> dict:
    """utt -> label (classification) or tuple of A/V/D floats (regression), from predictions.txt beside it."""
    path = Path(result["path"]).parent / "predictions.txt"
    if not path.is_file():
        raise CompareError(f"{result['path']}: no predictions.txt beside it; this result cannot be paired")
    width = 1 if result.get("task") == "classification" else len(_dims(result))
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or line.startswith("#"):
            continue
        if len(parts) < 1 + width:  # SELM adds its other views' answers after the label
            raise CompareError(f"{path}:{lineno}: expected 'utt' and {width} value(s), got {line!r}")
        try:
            out[parts[0]] = parts[1] if width == 1 else tuple(float(x) for x in parts[1:1 + width])
        except ValueError:
            raise CompareError(f"{path}:{lineno}: non-numeric A/V/D value in {line!r}") from None
    return out


def _label_map(conf: Path, name: str) -> LabelMap:
    for suffix in (".yaml", ".yml", ".txt"):
        if (conf / f"{name}{suffix}").is_file():
            return LabelMap.load(conf / f"{name}{suffix}")
    raise CompareError(f"label map {name!r}: no {conf}/{name}.yaml (give the recipe's conf dir with --conf)")


def _test_set(result: dict, data: Path) -> DataDir:
    test = data / result["protocol"]["test"]
    try:
        return DataDir.read(test)
    except (DataDirError, OSError) as e:
        raise CompareError(f"{result['path']}: its test set {test}: {e} (run in the recipe dir, or give --data)") from e


def _gold(result: dict, utts: list[str], data: Path, conf: Path) -> tuple[list[str], list[str]]:
    """(gold label, speaker) per utterance, from the result's test set and label map."""
    proto = result["protocol"]
    dd = _test_set(result, data)
    lm = _label_map(conf, proto["label_map"])
    missing = [u for u in utts if u not in dd.utt2emo or dd.utt2emo[u] not in lm]
    if missing:
        raise CompareError(f"{result['path']}: {len(missing)} predicted utterance(s) have no label in "
                           f"{data / proto['test']}, e.g. {missing[:3]}")
    gold = [lm.canonical(dd.utt2emo[u]) for u in utts]
    return gold, [dd.utt2spk[u] for u in utts]


def gold_range(result: dict) -> tuple[float, float] | None:
    """``eval.gold_range`` of the run that wrote ``result`` (its run_digest.json, in the nearest dir above):
    the scale its A/V/D gold was mapped to before scoring (sertk.tasks.teacher.scaled_gold)."""
    for d in Path(result["path"]).parents:
        digest = d / "run_digest.json"
        if digest.is_file():
            try:
                cfg = json.loads(digest.read_text(encoding="utf-8"))["parts"]["config"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CompareError(f"{digest}: cannot read its config ({e})") from e
            r = (cfg.get("eval") or {}).get("gold_range")
            return None if r is None else (float(r[0]), float(r[1]))
    return None


def _gold_avd(result: dict, utts: list[str], data: Path) -> tuple[list[tuple], list[str]]:
    """(A/V/D on the scale the result was scored on, speaker) per utterance, from the test set's utt2avd."""
    dd = _test_set(result, data)
    avd = dd.utt2avd
    missing = [u for u in utts if u not in avd]
    if missing:
        raise CompareError(f"{result['path']}: {len(missing)} predicted utterance(s) have no utt2avd entry in "
                           f"{data / result['protocol']['test']}, e.g. {missing[:3]}")
    r = gold_range(result)
    gold = [avd[u] if r is None else tuple((v - r[0]) / (r[1] - r[0]) for v in avd[u]) for u in utts]
    return gold, [dd.utt2spk[u] for u in utts]


def score(result: dict, gold, pred, metric: str, labels=None) -> float:
    """``metric`` of one run's decisions: UAR/WA/macro-F1, or CCC (mean over dims, or one dim's)."""
    if result.get("task") == "classification":
        labels = labels or result.get("labels") or sorted(set(gold) | set(pred))
        return classification_metrics(gold, pred, labels)[metric]
    m = regression_metrics(np.asarray(pred, dtype=float), np.asarray(gold, dtype=float), _dims(result))
    value = m["ccc_mean"] if metric in CCC_METRICS else m["ccc"][metric[len("ccc_"):]]
    if value is None:
        raise CompareError(f"{result['path']}: {metric} is undefined on this test set (constant values)")
    return float(value)


def _recorded(result: dict, metric: str):
    m = result.get("metrics") or {}
    if result.get("task") == "classification":
        return m.get(metric)
    return m.get("ccc_mean") if metric in CCC_METRICS else (m.get("ccc") or {}).get(metric[len("ccc_"):])


def _check_reproduces(result: dict, gold, pred, metric: str) -> None:
    recorded = _recorded(result, metric)
    if recorded is None:
        return
    again = score(result, gold, pred, metric)
    tol = 1e-6 if result.get("task") == "classification" else REGRESSION_TOL
    if abs(again - float(recorded)) > tol:
        raise CompareError(f"{result['path']}: gold from the data dir gives {metric} {again:.4f}, the result "
                           f"records {float(recorded):.4f}; wrong --data/--conf (or eval.gold_range), or "
                           "predictions.txt changed")


def decisions(result: dict, data: str | Path, conf: str | Path, metric: str | None = None,
              pred: dict | None = None) -> tuple[list[str], list, list, list[str]]:
    """(utterances, gold, predictions, speakers) behind one result (labels, or A/V/D tuples for regression),
    checked to reproduce its recorded ``metric`` (default: UAR, or CCC): what resampling speakers needs
    (pairs here, the report's pooled fold intervals). ``pred``: its predictions.txt, when already read."""
    metric = metric or DEFAULT_METRIC.get(result.get("task"), "uar")
    pred = _predictions(result) if pred is None else pred
    utts = sorted(pred)
    if result.get("task") == "classification":
        gold, spk = _gold(result, utts, Path(data), Path(conf))
    else:
        gold, spk = _gold_avd(result, utts, Path(data))
    p = [pred[u] for u in utts]
    _check_reproduces(result, gold, p, metric)
    return utts, gold, p, spk


def _seed_key(seed) -> tuple:
    return (seed is None, seed if seed is not None else 0)


def seed_pairs(runs_a: dict, runs_b: dict) -> tuple[list[tuple[dict, dict]], str]:
    """Pairs of runs (seed -> result on each side) and how they were paired, '' when plainly.

    The same seeds pair up; a single run pairs with every seed of the other side; two sets of seeds
    with none in common pair in sorted order (the note says so)."""
    sa, sb = sorted(runs_a, key=_seed_key), sorted(runs_b, key=_seed_key)
    if len(sa) == 1 or len(sb) == 1:
        pairs = [(runs_a[x], runs_b[y]) for x in sa for y in sb]
        return pairs, "" if len(pairs) == 1 else f"one run of {'A' if len(sa) == 1 else 'B'} paired with each of " \
                                                 f"{len(pairs)} seeds of the other"
    common = [s for s in sa if s in runs_b]
    if common:
        left = [f"{side}'s seed(s) {', '.join(map(str, x))}" for side, x in
                (("A", [s for s in sa if s not in runs_b]), ("B", [s for s in sb if s not in runs_a])) if x]
        return [(runs_a[s], runs_b[s]) for s in common], \
            ("unpaired and left out: " + "; ".join(left)) if left else ""
    pairs = list(zip(sa, sb))
    return [(runs_a[x], runs_b[y]) for x, y in pairs], \
        "no seed in common: paired in sorted order " + ", ".join(f"{x}-{y}" for x, y in pairs)


@dataclass
class _Set:
    """One test set of a pair: gold and speakers, and A's and B's decisions per pair of runs."""
    kind: str
    label: str
    task: str
    utts: list
    gold: list
    spk: list
    a: list = field(default_factory=list)  # one decision list per pair of runs
    b: list = field(default_factory=list)
    pairing: str = ""


def _same_utterances(ra: dict, utts: list[str], rb: dict, pb: dict) -> None:
    if set(utts) != set(pb):
        only_a, only_b = sorted(set(utts) - set(pb)), sorted(set(pb) - set(utts))
        raise CompareError(f"{ra['path']} and {rb['path']} score different utterances "
                           f"({len(only_a)} only in the first, e.g. {only_a[:2]}; {len(only_b)} only in the second, "
                           f"e.g. {only_b[:2]})")


def _paired(runs_a: dict, runs_b: dict, data: Path, conf: Path, metric: str) -> tuple:
    """(utts, gold, speakers, A's runs, B's runs, pairing note): every pair of runs on the same utterances.
    The gold is read once (from the first run's test set); each run's predictions are read and checked once,
    however many pairs it is in."""
    pairs, how = seed_pairs(runs_a, runs_b)
    first = pairs[0][0]
    utts, gold, _, spk = decisions(first, data, conf, metric)
    runs: dict[str, list] = {}

    def decided(r: dict) -> list:
        if r["path"] not in runs:
            p = _predictions(r)
            _same_utterances(first, utts, r, p)
            runs[r["path"]] = [p[u] for u in utts]
            _check_reproduces(r, gold, runs[r["path"]], metric)
        return runs[r["path"]]
    return utts, gold, spk, [decided(ra) for ra, _ in pairs], [decided(rb) for _, rb in pairs], how


def _label(r: dict) -> str:
    p = r["protocol"]
    fold = f" fold {p['fold']}" if p.get("fold") is not None else ""
    return f"{p.get('protocol') or p['train']}{fold} -> {p['test']}"


def _common_keys(systems: list[str], results: list[dict], common: bool) -> set:
    """The (task, protocol id) keys every system is tested on; unequal test lists refused unless ``common``."""
    tasks = set.intersection(*({k[0] for k in r} for r in results))
    keys = [{k for k in r if k[0] in tasks} for r in results]
    base = set.intersection(*keys) if common else keys[0]
    if not base:
        raise CompareError(f"{', '.join(systems)}: no test set (of one task) in common")
    for s, ks in zip(systems[1:], keys[1:]):
        if not common and ks != base:
            lack, extra = sorted(base - ks), sorted(ks - base)
            why = [f"{len(lack)} of {systems[0]}'s protocol ids missing, e.g. {lack[0][1]}" if lack else "",
                   f"{len(extra)} extra, e.g. {extra[0][1]}" if extra else ""]
            raise CompareError(f"{s} and {systems[0]} were not tested on the same test lists: "
                               + "; ".join(x for x in why if x))
    return base


def _pooled(folds: list[_Set], proto: str) -> _Set | None:
    """A protocol's folds as one test set, when their test sets partition the utterances and runs pair alike."""
    utts = [u for f in folds for u in f.utts]
    if len(folds) < 2 or len(set(utts)) != len(utts) or len({len(f.a) for f in folds}) != 1:
        return None
    return _Set("pooled", f"{proto}: {len(folds)} folds pooled", folds[0].task, utts,
                [g for f in folds for g in f.gold], [s for f in folds for s in f.spk],
                [[x for f in folds for x in f.a[i]] for i in range(len(folds[0].a))],
                [[x for f in folds for x in f.b[i]] for i in range(len(folds[0].b))], folds[0].pairing)


def _column(metric: str, runs: list) -> list:
    """A/V/D runs reduced to one dimension's column for ``ccc_<dim>``; everything else as it is."""
    if metric in CCC_METRICS or metric_task(metric) == "classification":
        return runs
    j = AVD_COLUMNS.index(metric[len("ccc_"):])
    return [[row[j] for row in run] for run in runs]


def _test_set_row(s: _Set, metric: str, test: str, resample: str, n: int, seed: int, min_speakers: int) -> dict:
    """The paired test of one test set (every pair of runs at once) and its row's figures."""
    sig = metric if s.task == "classification" else "ccc"
    gold, a, b = _column(metric, [s.gold])[0], _column(metric, s.a), _column(metric, s.b)
    if resample == "speaker":  # falls back to utterances (and says so) on too few speakers
        res = paired_test(gold, a, b, sig, s.spk, test, n, seed, min_speakers)
    elif test == "bootstrap":
        res = paired_bootstrap(gold, a, b, sig, groups=None, n_boot=n, seed=seed)
    else:
        res = approximate_randomization(gold, a, b, sig, groups=None, n_perm=n, seed=seed)
    ref = {"task": s.task, "path": s.label, "metrics": {"dims": list(AVD_COLUMNS)}}
    labels = sorted({*s.gold, *(x for r in s.a + s.b for x in r)}) if s.task == "classification" else None
    values = [[score(ref, s.gold, r, metric, labels) for r in runs] for runs in (s.a, s.b)]
    return {"test_set": s.label, "kind": s.kind, "task": s.task, "n": len(s.utts), "speakers": len(set(s.spk)),
            "metric": metric, "value_a": float(np.mean(values[0])), "value_b": float(np.mean(values[1])),
            "pairs": len(s.a), **({"seed_pairing": s.pairing} if s.pairing else {}), **res}


def _order(key: tuple, result: dict) -> tuple:
    p = result["protocol"]
    return key[0], str(p.get("protocol")), fold_order(p.get("fold")), key[1]


def _test_sets(ra: dict, rb: dict, keys: list, data: Path, conf: Path, metrics: dict) -> list[_Set]:
    """One pair of systems' test sets (one per protocol id and task), then each protocol's folds pooled."""
    per, by_protocol = [], {}
    for key in keys:
        runs_a, runs_b = ra[key], rb[key]
        first = next(iter(runs_a.values()))
        utts, gold, spk, a, b, how = _paired(runs_a, runs_b, data, conf, metrics[key[0]])
        fold = first["protocol"].get("fold")
        per.append(_Set("single" if fold is None else "fold", _label(first), key[0], utts, gold, spk, a, b, how))
        if fold is not None:
            proto = first["protocol"].get("protocol") or first["protocol"]["scheme"]
            by_protocol.setdefault((key[0], proto), []).append(per[-1])
    pooled = [_pooled(folds, proto) for (_, proto), folds in by_protocol.items()]
    return per + [p for p in pooled if p is not None]


def compare(systems: list[str], metric: str | None = None, test: str = "bootstrap", resample: str = "speaker",
            n: int = 10000, seed: int = 0, all_pairs: bool = False, data: str | Path = "data",
            conf: str | Path = "conf", min_speakers: int = MIN_SPEAKERS, common: bool = False,
            root: str | Path = ".", names: list[str] | None = None, holm_rows: bool = True) -> list[dict]:
    """One row per (pair, test set) and per pair pooled over its test sets; Holm-adjusted across all rows.

    ``metric`` None tests classification results in UAR and A/V/D results in CCC (mean over dims);
    a metric tests only results of its task. A test set of fewer than ``min_speakers`` speakers is
    tested by permuting utterances instead (a cluster bootstrap of 2 speakers has 3 distinct
    resamples), and the row says its p holds for those utterances only; pool a protocol's folds (the
    pooled row) for a speaker-level test. ``common`` pairs the test sets all systems have (the
    report's choice: a model tested on more protocols than its baseline) instead of refusing.
    ``names`` label the systems in the rows; ``root`` anchors relative paths.
    """
    tasks = (metric_task(metric),) if metric else TASKS
    metrics = {t: metric or DEFAULT_METRIC[t] for t in tasks}
    if len(systems) < 2:
        raise CompareError("compare needs at least two systems")
    data, conf = Path(data), Path(conf)
    names = list(names or systems)
    results = []
    for s in systems:
        res = {k: v for k, v in system_results(s, root).items() if k[0] in tasks}
        if not res:
            raise CompareError(f"{Path(root) / s}: no {' or '.join(tasks)} result; compare tests "
                               + ", ".join(metrics.values()))
        results.append(res)
    base = _common_keys(systems, results, common)
    pairs = list(combinations(range(len(systems)), 2)) if all_pairs else [(0, j) for j in range(1, len(systems))]
    rows = []
    for i, j in pairs:
        keys = sorted(base, key=lambda k: _order(k, next(iter(results[i][k].values()))))
        for s in _test_sets(results[i], results[j], keys, data, conf, metrics):
            rows.append({"a": names[i], "b": names[j],
                         **_test_set_row(s, metrics[s.task], test, resample, n, seed, min_speakers)})
    if holm_rows:
        for row, adj in zip(rows, holm([r["p"] for r in rows])):
            row["p_holm"] = adj
    return rows


def diff_text(res: dict, sign: int = 1) -> str:
    """A paired test's difference with its interval, '+0.034 [-0.003, +0.070]' (``sign`` -1: the other way round,
    B - A for compare's A - B), and ' (u)' marks for a p that holds for these utterances only."""
    lo_hi = [sign * x for x in res["ci"]] if res.get("ci") else None
    ci = f" [{min(lo_hi):+.3f}, {max(lo_hi):+.3f}]" if lo_hi else ""
    return f"{sign * res['diff']:+.3f}{ci}"


def utterance_mark(res: dict) -> str:
    """' (u)' after the p of a test that permuted utterances (too few speakers): it holds for those only."""
    return UTTERANCE_ONLY if res.get("note") else ""


def _pairs_cell(r: dict) -> str:
    """' (3 seed pairs, sd 0.012)' after a difference averaged over several pairs of runs."""
    if r.get("pairs", 1) < 2:
        return ""
    sd = f", sd {r['diff_sd']:.3f}" if isinstance(r.get("diff_sd"), float) else ""
    return f" ({r['pairs']} seed pairs{sd})"


def format_rows(rows: list[dict]) -> str:
    lines = ["| A | B | test set | n (spk) | metric | A | B | A - B [95% CI] | p | p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = utterance_mark(r)
        lines.append(f"| {r['a']} | {r['b']} | {r['test_set']} | {r['n']} ({r['speakers']}) | {r['metric']} | "
                     f"{r['value_a']:.3f} | {r['value_b']:.3f} | {diff_text(r)}{_pairs_cell(r)} | "
                     f"{r['p']:.4f}{mark} | {r['p_holm']:.4f}{mark}{' *' if r['p_holm'] < 0.05 else ''} |")
    first = next((r for r in rows if not r.get("note")), rows[0] if rows else {})
    pairing = sorted({f"{r['a']} vs {r['b']}, {r['test_set']}: {r['seed_pairing']}" for r in rows
                      if r.get("seed_pairing")})
    lines.append(f"\n{first.get('test', '')} over {first.get('resample', '')}s "
                 f"({first.get('n_boot', first.get('n_perm', ''))} resamples, seed {first.get('seed', '')}); "
                 "* : p < 0.05 after Holm's correction across the rows. With several seeds the difference is the "
                 "mean over seed pairs, resampled jointly." + (_UTTERANCE_NOTE if any(r.get("note") for r in rows)
                                                              else "")
                 + "".join(f"\n- {p}" for p in pairing))
    return "\n".join(lines)


UTTERANCE_ONLY = " (u)"
_UTTERANCE_NOTE = (" (u): a test set of too few speakers to resample: utterances permuted instead, so that p "
                   "holds for these utterances only, not for new speakers.")


COMPARE_KEYS = {"comparisons", "metric", "test", "resample", "n", "seed", "min_speakers"}
ENTRY_KEYS = {"name", "a", "b", "metric"}


def load_compare_config(path: str | Path) -> dict:
    """A recipe's ``conf/compare.yaml``: the comparisons its paper would make, checked key by key."""
    import yaml

    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CompareError(f"{path}: {e}") from e
    unknown = set(cfg) - COMPARE_KEYS if isinstance(cfg, dict) else {"(not a mapping)"}
    if unknown:
        raise CompareError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(COMPARE_KEYS)}")
    entries = cfg.get("comparisons")
    if not isinstance(entries, list) or not entries:
        raise CompareError(f"{path}: 'comparisons' must be a non-empty list of {{name, a, b}}")
    for k, e in enumerate(entries, 1):
        if not isinstance(e, dict) or set(e) - ENTRY_KEYS or not {"a", "b"} <= set(e):
            raise CompareError(f"{path}: comparison {k} must be {{name, a, b}} and optionally metric (a and b: "
                               f"result dirs or patterns under the exp dir), got {e!r}")
    for m in [cfg.get("metric")] + [e.get("metric") for e in entries]:
        if m is not None:
            try:
                metric_task(m)
            except CompareError as err:
                raise CompareError(f"{path}: {err}") from None
    if cfg.get("test", "bootstrap") not in TESTS:
        raise CompareError(f"{path}: test must be one of {', '.join(TESTS)}")
    if cfg.get("resample", "speaker") not in ("speaker", "utterance"):
        raise CompareError(f"{path}: resample must be speaker or utterance")
    return cfg


def comparison_section(cfg: dict, exp_root: str | Path, data: str | Path, conf: str | Path) -> str:
    """RESULTS.md's paired comparisons: one row per comparison and test set (a protocol's folds pooled),
    Holm-corrected across the section. A comparison whose results are missing says so instead."""
    rows, missing = [], []
    for e in cfg["comparisons"]:
        name = e.get("name") or f"{e['b']} vs {e['a']}"
        try:
            got = compare([e["a"], e["b"]], metric=e.get("metric", cfg.get("metric")),
                          test=cfg.get("test", "bootstrap"), resample=cfg.get("resample", "speaker"),
                          n=int(cfg.get("n", 10000)), seed=int(cfg.get("seed", 0)), data=data, conf=conf,
                          min_speakers=int(cfg.get("min_speakers", MIN_SPEAKERS)), common=True, root=exp_root,
                          names=[e["a"], e["b"]], holm_rows=False)
        except CompareError as err:
            missing.append(f"- {name}: not compared ({err})")
            continue
        rows += [dict(r, name=name) for r in got if r["kind"] != "fold"]
    for row, adj in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adj
    if not rows and not missing:
        return ""
    body = []
    for r in rows:
        mark = utterance_mark(r)
        body.append(f"| {r['name']} | {r['test_set']} | {r['n']} ({r['speakers']}) | {r['metric']} | "
                    f"{r['value_a']:.3f} | {r['value_b']:.3f} | {diff_text(r, -1)}{_pairs_cell(r)} | "
                    f"{r['p']:.4f}{mark} | {r['p_holm']:.4f}{mark}"
                    + (" **significant**" if r["p_holm"] < 0.05 else "") + " |")
    pairing = [f"- {r['name']}, {r['test_set']}: {r['seed_pairing']}" for r in rows if r.get("seed_pairing")]
    test = cfg.get("test", "bootstrap")
    how = (f"paired {'bootstrap' if test == 'bootstrap' else 'approximate randomisation'} over speakers, "
           f"{cfg.get('n', 10000)} resamples, seed {cfg.get('seed', 0)}")
    lines = ["## Paired comparisons", "",
             "B minus A in the row's metric (uar: emotion classes; ccc: A/V/D, the mean CCC over dimensions) on the "
             f"same test utterances ({how}); a protocol's folds are pooled into one test set; with several training "
             "seeds the difference is the mean over seed pairs (their number and sd in brackets), every pair "
             "resampled with the same speakers. p (Holm): corrected across this table's rows. (u): a test set of "
             f"fewer than {cfg.get('min_speakers', MIN_SPEAKERS)} speakers, too few to resample: utterances are "
             "permuted instead, so that p holds for these utterances only, not for new speakers (and no interval is "
             "given). docs/metrics.md explains each choice.", "",
             "| comparison | test set | n (speakers) | metric | A | B | B - A [95% CI] | p | p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|", *body]
    if pairing:
        lines += ["", *pairing]
    if missing:
        lines += ["", *missing]
    return "\n".join(lines) + "\n"

