"""Pair systems' results on the same test utterances and test their difference (``sertk compare``, stage 11).

Results pair up by protocol id (corpus, protocol, fold, train and test sets,
label map, list digest), and the utterances of a pair must be the same. The
gold labels come from the recipe's data dirs and label maps, and must
reproduce each results.json's own figure before anything is tested: a wrong
data dir or an edited predictions.txt stops the comparison instead of
testing the wrong thing.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

from sertk.data.datadir import DataDir, DataDirError
from sertk.data.labels import LabelMap
from sertk.eval.metrics import CLASSIFICATION_BOOT_METRICS, classification_metrics
from sertk.eval.results import RESULT_FILE, fold_order, load_result, read_results
from sertk.eval.significance import MIN_SPEAKERS, approximate_randomization, holm, paired_bootstrap, paired_test

TESTS = ("bootstrap", "permutation")


class CompareError(ValueError):
    """Results that cannot be compared; the message names the files."""


def _records(path: Path) -> list[dict]:
    if path.is_file():
        return [load_result(path)]
    if (path / RESULT_FILE).is_file():
        return [load_result(path / RESULT_FILE)]
    return read_results(path)


def system_results(path: str | Path, root: str | Path = ".") -> dict[str, dict]:
    """protocol_id -> result of one system: a results.json, an eval dir, a tree of them, or a glob
    pattern of any of these (``selm/*/eval``: SELM's results without its few-shot runs); relative to ``root``."""
    path = Path(root) / path
    if any(c in str(path) for c in "*?["):
        top = Path(path.anchor) if path.is_absolute() else Path()
        hits = sorted(top.glob(str(path.relative_to(top) if path.is_absolute() else path)))
        records = [r for h in hits for r in _records(h)]
    else:
        records = _records(path) if path.exists() else []
    if not records:
        raise CompareError(f"{path}: no {RESULT_FILE} under it")
    # a system's dir may also hold its A/V/D results (eGeMAPS + ridge beside + LR): those are not paired here
    classification = [r for r in records if r.get("task") == "classification"]
    if not classification:
        raise CompareError(f"{path}: no classification result ({len(records)} of task "
                           f"{sorted({str(r.get('task')) for r in records})}); compare tests UAR, WA and macro-F1")
    out: dict[str, dict] = {}
    for r in classification:
        pid = r["protocol_id"]
        if pid in out:
            raise CompareError(f"{path}: two results of one test set ({out[pid]['path']} and {r['path']}); "
                               "point at a narrower dir (one condition of the system)")
        out[pid] = r
    return out


def _predictions(result: dict) -> dict[str, str]:
    path = Path(result["path"]).parent / "predictions.txt"
    if not path.is_file():
        raise CompareError(f"{result['path']}: no predictions.txt beside it; this result cannot be paired")
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or line.startswith("#"):
            continue
        if len(parts) < 2:  # SELM adds its other views' answers after the label
            raise CompareError(f"{path}:{lineno}: expected 'utt label', got {line!r}")
        out[parts[0]] = parts[1]
    return out


def _label_map(conf: Path, name: str) -> LabelMap:
    for suffix in (".yaml", ".yml", ".txt"):
        if (conf / f"{name}{suffix}").is_file():
            return LabelMap.load(conf / f"{name}{suffix}")
    raise CompareError(f"label map {name!r}: no {conf}/{name}.yaml (give the recipe's conf dir with --conf)")


def _gold(result: dict, utts: list[str], data: Path, conf: Path) -> tuple[list[str], list[str]]:
    """(gold label, speaker) per utterance, from the result's test set and label map."""
    proto = result["protocol"]
    try:
        dd = DataDir.read(data / proto["test"])
    except (DataDirError, OSError) as e:
        raise CompareError(f"{result['path']}: its test set {data / proto['test']}: {e} (run in the recipe dir, "
                           "or give --data)") from e
    lm = _label_map(conf, proto["label_map"])
    missing = [u for u in utts if u not in dd.utt2emo or dd.utt2emo[u] not in lm]
    if missing:
        raise CompareError(f"{result['path']}: {len(missing)} predicted utterance(s) have no label in "
                           f"{data / proto['test']}, e.g. {missing[:3]}")
    gold = [lm.canonical(dd.utt2emo[u]) for u in utts]
    return gold, [dd.utt2spk[u] for u in utts]


def _check_reproduces(result: dict, gold, pred, metric: str) -> None:
    recorded = (result.get("metrics") or {}).get(metric)
    if recorded is None:
        return
    again = classification_metrics(gold, pred, result.get("labels") or sorted(set(gold) | set(pred)))[metric]
    if abs(again - float(recorded)) > 1e-6:
        raise CompareError(f"{result['path']}: gold labels from the data dir give {metric} {again:.4f}, the result "
                           f"records {float(recorded):.4f}; wrong --data/--conf, or predictions.txt changed")


def decisions(result: dict, data: str | Path, conf: str | Path, metric: str = "uar",
              pred: dict[str, str] | None = None) -> tuple[list[str], list[str], list[str], list[str]]:
    """(utterances, gold labels, predictions, speakers) behind one classification result, checked to
    reproduce its recorded ``metric``: what resampling speakers needs (pairs here, the report's pooled
    fold intervals). ``pred``: its predictions.txt, when already read."""
    pred = _predictions(result) if pred is None else pred
    utts = sorted(pred)
    gold, spk = _gold(result, utts, Path(data), Path(conf))
    p = [pred[u] for u in utts]
    _check_reproduces(result, gold, p, metric)
    return utts, gold, p, spk


def _paired(ra: dict, rb: dict, data: Path, conf: Path, metric: str):
    pa, pb = _predictions(ra), _predictions(rb)
    if set(pa) != set(pb):
        only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
        raise CompareError(f"{ra['path']} and {rb['path']} score different utterances "
                           f"({len(only_a)} only in the first, e.g. {only_a[:2]}; {len(only_b)} only in the second, "
                           f"e.g. {only_b[:2]})")
    utts, gold, a, spk = decisions(ra, data, conf, metric, pa)
    b = [pb[u] for u in utts]
    _check_reproduces(rb, gold, b, metric)
    return utts, gold, spk, a, b


def _label(r: dict) -> str:
    p = r["protocol"]
    fold = f" fold {p['fold']}" if p.get("fold") is not None else ""
    return f"{p.get('protocol') or p['train']}{fold} -> {p['test']}"


def compare(systems: list[str], metric: str = "uar", test: str = "bootstrap", resample: str = "speaker",
            n: int = 10000, seed: int = 0, all_pairs: bool = False, data: str | Path = "data",
            conf: str | Path = "conf", min_speakers: int = MIN_SPEAKERS, common: bool = False,
            root: str | Path = ".", names: list[str] | None = None, holm_rows: bool = True) -> list[dict]:
    """One row per (pair, test set) and per pair pooled over its test sets; Holm-adjusted across all rows.

    A test set of fewer than ``min_speakers`` speakers is tested by permuting
    utterances instead (a cluster bootstrap of 2 speakers has 3 distinct
    resamples), and the row says its p holds for those utterances only; pool
    a protocol's folds (the pooled row) for a speaker-level test.
    ``common`` pairs the test sets both systems have (the report's choice: a
    model tested on more protocols than its baseline) instead of refusing.
    ``names`` label the systems in the rows; ``root`` anchors relative paths.
    """
    if metric not in CLASSIFICATION_BOOT_METRICS:
        raise CompareError(f"--metric must be one of {', '.join(CLASSIFICATION_BOOT_METRICS)}")
    if len(systems) < 2:
        raise CompareError("compare needs at least two systems")
    data, conf = Path(data), Path(conf)
    names = list(names or systems)
    results = [system_results(s, root) for s in systems]
    base = set(results[0])
    if common:
        base = set.intersection(*(set(r) for r in results))
        if not base:
            raise CompareError(f"{', '.join(systems)}: no test set in common")
    for s, res in zip(systems[1:], results[1:]):
        if not common and set(res) != base:
            lack = sorted(base - set(res))
            extra = sorted(set(res) - base)
            raise CompareError(f"{s} and {systems[0]} were not tested on the same test lists: "
                               + "; ".join(x for x in (f"{len(lack)} of {systems[0]}'s protocol ids missing, e.g. "
                                                       f"{lack[0]}" if lack else "",
                                                       f"{len(extra)} extra, e.g. {extra[0]}" if extra else "") if x))
    pairs = list(combinations(range(len(systems)), 2)) if all_pairs else [(0, j) for j in range(1, len(systems))]
    rows = []
    for i, j in pairs:
        per, by_protocol = [], {}
        for pid in sorted(base, key=lambda x: (str(results[i][x]["protocol"].get("protocol")),
                                               fold_order(results[i][x]["protocol"].get("fold")), x)):
            ra, rb = results[i][pid], results[j][pid]
            utts, gold, spk, a, b = _paired(ra, rb, data, conf, metric)
            kind = "single" if ra["protocol"].get("fold") is None else "fold"
            per.append((kind, _label(ra), utts, gold, spk, a, b))
            if ra["protocol"].get("fold") is not None:
                by_protocol.setdefault(ra["protocol"].get("protocol") or ra["protocol"]["scheme"], []).append(per[-1])
        sets = list(per)
        for proto, folds in by_protocol.items():
            # folds whose test sets partition the corpus pool into one test set (each utterance once)
            pooled = [sum((list(f[c]) for f in folds), []) for c in range(2, 7)]
            if len(folds) > 1 and len(set(pooled[0])) == len(pooled[0]):
                sets.append(("pooled", f"{proto}: {len(folds)} folds pooled", *pooled))
        for kind, label, utts, gold, spk, a, b in sets:
            labels = sorted(set(gold) | set(a) | set(b))
            if resample == "speaker":  # falls back to utterances (and says so) on too few speakers
                res = paired_test(gold, a, b, metric, spk, test, n, seed, min_speakers)
            elif test == "bootstrap":
                res = paired_bootstrap(gold, a, b, metric, groups=None, n_boot=n, seed=seed)
            else:
                res = approximate_randomization(gold, a, b, metric, groups=None, n_perm=n, seed=seed)
            rows.append({"a": names[i], "b": names[j], "test_set": label, "kind": kind, "n": len(utts),
                         "speakers": len(set(spk)), "metric": metric,
                         "value_a": classification_metrics(gold, a, labels)[metric],
                         "value_b": classification_metrics(gold, b, labels)[metric], **res})
    if holm_rows:
        for row, adj in zip(rows, holm([r["p"] for r in rows])):
            row["p_holm"] = adj
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| A | B | test set | n (spk) | A | B | A - B [95% CI] | p | p (Holm) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f" [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r.get("ci") else ""
        mark = UTTERANCE_ONLY if r.get("note") else ""
        lines.append(f"| {r['a']} | {r['b']} | {r['test_set']} | {r['n']} ({r['speakers']}) | {r['value_a']:.3f} | "
                     f"{r['value_b']:.3f} | {r['diff']:+.3f}{ci} | {r['p']:.4f}{mark} | {r['p_holm']:.4f}{mark}"
                     f"{' *' if r['p_holm'] < 0.05 else ''} |")
    first = next((r for r in rows if not r.get("note")), rows[0] if rows else {})
    lines.append(f"\n{first.get('metric', '')}; {first.get('test', '')} over {first.get('resample', '')}s "
                 f"({first.get('n_boot', first.get('n_perm', ''))} resamples, seed {first.get('seed', '')}); "
                 "* : p < 0.05 after Holm's correction across the rows." + (_UTTERANCE_NOTE if any(
                     r.get("note") for r in rows) else ""))
    return "\n".join(lines)


UTTERANCE_ONLY = " (u)"
_UTTERANCE_NOTE = (" (u): a test set of too few speakers to resample: utterances permuted instead, so that p "
                   "holds for these utterances only, not for new speakers.")


COMPARE_KEYS = {"comparisons", "metric", "test", "resample", "n", "seed", "min_speakers"}
ENTRY_KEYS = {"name", "a", "b"}


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
            raise CompareError(f"{path}: comparison {k} must be {{name, a, b}} (a and b: result dirs or patterns "
                               f"under the exp dir), got {e!r}")
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
            got = compare([e["a"], e["b"]], metric=cfg.get("metric", "uar"), test=cfg.get("test", "bootstrap"),
                          resample=cfg.get("resample", "speaker"), n=int(cfg.get("n", 10000)),
                          seed=int(cfg.get("seed", 0)), data=data, conf=conf,
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
        ci = f" [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r.get("ci") else ""
        mark = UTTERANCE_ONLY if r.get("note") else ""
        body.append(f"| {r['name']} | {r['test_set']} | {r['n']} ({r['speakers']}) | {r['value_a']:.3f} | "
                    f"{r['value_b']:.3f} | {-r['diff']:+.3f}{_flip(ci)} | {r['p']:.4f}{mark} | {r['p_holm']:.4f}{mark}"
                    + (" **significant**" if r["p_holm"] < 0.05 else "") + " |")
    test = cfg.get("test", "bootstrap")
    how = (f"paired {'bootstrap' if test == 'bootstrap' else 'approximate randomisation'} over speakers, "
           f"{cfg.get('n', 10000)} resamples, seed {cfg.get('seed', 0)}")
    lines = ["## Paired comparisons", "",
             f"B minus A in {cfg.get('metric', 'uar').upper()} on the same test utterances ({how}); a protocol's folds "
             "are pooled into one test set. p (Holm): corrected across this table's rows. (u): a test set of fewer "
             f"than {cfg.get('min_speakers', MIN_SPEAKERS)} speakers, too few to resample: utterances are permuted "
             "instead, so that p holds for these utterances only, not for new speakers (and no interval is given). "
             "docs/metrics.md explains each choice.", "",
             "| comparison | test set | n (speakers) | A | B | B - A [95% CI] | p | p (Holm) |",
             "|---|---|---|---|---|---|---|---|", *body]
    if missing:
        lines += ["", *missing]
    return "\n".join(lines) + "\n"


def _flip(ci: str) -> str:
    """An A - B interval ' [lo, hi]' as the B - A interval ' [-hi, -lo]'."""
    if not ci:
        return ""
    lo, hi = (float(x) for x in ci.strip(" []").split(","))
    return f" [{-hi:+.3f}, {-lo:+.3f}]"
