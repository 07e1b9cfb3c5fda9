"""Stage 11: turn every results.json of a run into RESULTS.md and confusion plots.

One section per recipe stage that produced results (stage numbers are the
contract of DESIGN.md), one table per task kind inside it. Every row names its
protocol; fold results are aggregated to mean ± std; every classification
row carries its majority-class and chance figures, so no number is read
without the floor it has to beat. A model whose training did not learn
(``extra.collapsed``, from its model.yaml) is marked in its row's name.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import sertk
from sertk.common.fileio import hash_obj, is_moved_aside, write_text_atomic
from sertk.common.stand_ins import card_names
from sertk.eval.metrics import aggregate_folds, bootstrap_ci, scores_from_confusion
from sertk.eval.results import ResultsError, fold_order, read_results, slug
from sertk.export.table import has_students, students_table

# (title, stages): section order of RESULTS.md; stage numbers follow DESIGN.md.
STAGE_GROUPS = [
    ("Stage 1: data", (1,)),
    ("Stage 2: features", (2,)),
    ("Stages 3-4: SELM and SER models", (3, 4)),
    ("Stages 5-6: ICL personalisation", (5, 6)),
    ("Stages 7-8: Wav2Small distillation", (7, 8)),
    ("Stage 9: ZS-Fuse", (9,)),
    ("Stage 10: acoustic concept tokens", (10,)),
]
BASELINES = "Baselines"
COLLAPSED = " (did not learn)"
COLLAPSED_NOTE = (f"*{COLLAPSED.strip()}*: in training, the model's dev selection metric never rose above chance "
                  "(or its dev outputs were constant), so its figures are no evidence of learning; "
                  "`collapse_reason` in its model.yaml / teacher.yaml says why. A fold row is marked when any "
                  "fold's model is.")


@dataclass
class Row:
    """One table row: a single result, or the aggregate of a protocol's folds."""

    stage: int
    name: str
    task: str
    protocol: dict
    protocol_id: str
    metrics: dict
    labels: list[str] | None
    confusion: list | None
    paths: list[str]
    folds: list[int] = field(default_factory=list)   # empty for a single result
    fold_ids: list[str] = field(default_factory=list)  # protocol ids of the folds
    std: dict = field(default_factory=dict)           # fold std, same layout as metrics
    section: str = ""                                 # RESULTS.md section (see group_title)
    plot: Path | None = None
    collapsed: bool = False                           # the model (of any fold) did not learn
    undefined: dict = field(default_factory=dict)     # CCC dim -> folds where it is undefined ([] for a single result)
    extra: dict = field(default_factory=dict)         # results.json extra of a single result (e.g. an ICL k-curve)
    pooled: dict = field(default_factory=dict)        # folds: metric -> (value, lo, hi) over all folds' utterances
    seeds: list[int] = field(default_factory=list)    # repeated seeds: metrics are their mean, std their sd
    seed_rows: list = field(default_factory=list)     # the row of each seed, in seed order

    @property
    def label(self) -> str:
        """The row's name as the tables show it: marked when the model did not learn."""
        return self.name + (COLLAPSED if self.collapsed else "")

    @property
    def short_protocol(self) -> str:
        p = self.protocol
        head = p.get("protocol") or p.get("scheme")
        if self.folds:
            return f"{head}: {len(self.folds)} folds ({p['scheme']}) #{protocol_hash_of(self.protocol_id)}"
        return f"{head}: {p['train']} → {p['test']} #{protocol_hash_of(self.protocol_id)}"


def protocol_hash_of(pid: str) -> str:
    return pid.rsplit("#", 1)[-1]


def group_title(record: dict) -> str:
    if (record.get("extra") or {}).get("baseline"):
        return BASELINES
    for title, stages in STAGE_GROUPS:
        if record["stage"] in stages:
            return title
    return f"Stage {record['stage']}"


def _section_order(title: str) -> tuple:
    titles = [t for t, _ in STAGE_GROUPS]
    if title in titles:
        return (0, titles.index(title), title)
    if title == BASELINES:
        return (1, 0, title)
    return (2, int(re.sub(r"\D", "", title) or 0), title)


def _confusion_of(record: dict):
    c = record.get("confusion")
    return c if c is not None else record["metrics"].get("confusion")


def _collapsed(record: dict) -> bool:
    return bool((record.get("extra") or {}).get("collapsed"))


def _undefined_ccc(metrics: dict) -> list[str]:
    """Dimensions whose CCC a result records as null (undefined: see sertk.eval.metrics.ccc)."""
    c = metrics.get("ccc")
    return [d for d, v in c.items() if v is None] if isinstance(c, dict) else []


def _single_row(r: dict) -> Row:
    return Row(stage=r["stage"], name=r["name"], task=r["task"], protocol=r["protocol"],
               protocol_id=r["protocol_id"], metrics=r["metrics"], labels=r.get("labels"),
               confusion=_confusion_of(r), paths=[r["path"]], collapsed=_collapsed(r),
               undefined={d: [] for d in _undefined_ccc(r["metrics"])}, extra=r.get("extra") or {})


def _fold_key(r: dict) -> tuple:
    p = r["protocol"]
    return (r["stage"], r["name"], r["task"], p["corpus"], p.get("protocol") or "", p["scheme"],
            str(p["label_map"]), tuple(r.get("labels") or ()), bool((r.get("extra") or {}).get("baseline")),
            r.get("seed"))


def _fold_groups(records: list[dict]) -> list[list[dict]]:
    """Results of the same model and protocol, one per fold.

    A protocol whose folds each have several test sets is split by test name
    with the fold number blanked (``fold3_test`` -> ``fold*_test``).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(_fold_key(r), []).append(r)
    out = []
    for members in groups.values():
        folds = [r["extra"]["fold"] for r in members]
        if len(set(folds)) == len(folds):
            out.append(members)
            continue
        sub: dict[str, list[dict]] = {}
        for r in members:
            test = re.sub(r"(?i)fold[_-]?\d+", "fold*", str(r["protocol"]["test"]))
            sub.setdefault(test, []).append(r)
        for rs in sub.values():
            seen: dict = {}
            for r in rs:
                f = r["extra"]["fold"]
                if f in seen:
                    raise ResultsError(f"two results for fold {f} of {r['name']} ({r['protocol_id']}): "
                                       f"{seen[f]} and {r['path']}")
                seen[f] = r["path"]
            out.append(rs)
    return out


def _fold_row(members: list[dict], data=None, conf=None) -> Row:
    members = sorted(members, key=lambda r: (fold_order(r["extra"]["fold"]), r["path"]))
    first = members[0]
    metrics = []
    for r in members:
        m = dict(r["metrics"])
        c = _confusion_of(r)
        if c is not None:
            m["confusion"] = c
        else:
            m.pop("confusion", None)
        metrics.append(m)
    try:
        agg = aggregate_folds(metrics)
    except ValueError as e:
        raise ResultsError(f"{e} (files: {', '.join(r['path'] for r in members)})") from None
    p = first["protocol"]
    folds = [r["extra"]["fold"] for r in members]
    protocol = {k: v for k, v in p.items() if k not in ("train", "test", "dev", "fold", "hash")}
    protocol.update(train="per fold", test="per fold")
    parts = [f"corpus={p['corpus']}"] + ([f"protocol={p['protocol']}"] if p.get("protocol") else [])
    parts += [f"scheme={p['scheme']}", f"labels={p['label_map']}", f"folds={','.join(str(f) for f in folds)}"]
    pid = ";".join(parts) + "#" + hash_obj([r["protocol_id"] for r in members])[:8]
    mean = dict(agg["mean"])
    if "n" in agg:
        mean["n"] = agg["n"]
    if isinstance(first["metrics"].get("dims"), list):
        mean["dims"] = first["metrics"]["dims"]
    undefined: dict[str, list] = {}
    for r in members:
        for d in _undefined_ccc(r["metrics"]):
            undefined.setdefault(d, []).append(r["extra"]["fold"])
    return Row(stage=first["stage"], name=first["name"], task=first["task"], protocol=protocol,
               protocol_id=pid, metrics=mean, labels=first.get("labels"), confusion=agg.get("confusion"),
               paths=[r["path"] for r in members], folds=folds, std=agg["std"],
               fold_ids=[r["protocol_id"] for r in members], collapsed=any(_collapsed(r) for r in members),
               undefined=undefined, pooled=pooled_intervals(agg.get("confusion"), members=members, data=data,
                                                             conf=conf),
               extra=_fold_kcurve(members))


def _fold_kcurve(members: list[dict]) -> dict:
    """An ICL protocol's k-curve over its folds (mean ± sd of each fold's curve), when every fold has one."""
    from sertk.eval.kcurve import fold_mean

    curves = [(r.get("extra") or {}).get("kcurve") for r in members]
    if not curves or not all(curves):
        return {}
    return {"kcurve": fold_mean(curves), "draws": (members[0].get("extra") or {}).get("draws"),
            "speakers": sum(int((r.get("extra") or {}).get("speakers") or 0) for r in members)}


POOLED = ("uar", "wa", "macro_f1")
UTTERANCE_MARK = "†"  # a pooled interval that resampled decisions, not speakers


def pooled_intervals(confusion, n_boot: int = 1000, members: list[dict] | None = None,
                     data: str | Path | None = None, conf: str | Path | None = None) -> dict:
    """UAR, WA and macro-F1 of all folds' test utterances scored as one set, each with a 95% bootstrap
    interval, and ``ci_method``: speakers resampled when every fold's decisions and speakers can be
    read back (predictions.txt, the data dirs and label maps under ``data``/``conf``, reproducing each
    fold's figure), else the decisions of the summed confusion resampled (utterances)."""
    if confusion is None:
        return {}
    by_speaker = _speaker_decisions(members, data, conf) if members and data is not None else None
    if by_speaker is not None:
        gold, pred, spk = by_speaker
        value = scores_from_confusion(np.asarray(confusion, dtype=np.int64))
        out = {k: (float(value[k]), *bootstrap_ci(gold, pred, k, n_boot=n_boot, groups=spk)) for k in POOLED}
        return {**out, "ci_method": "speaker_bootstrap"}
    cm = np.asarray(confusion, dtype=np.int64)
    idx = np.arange(cm.shape[0])
    y_true = np.repeat(np.repeat(idx, cm.shape[1]), cm.ravel()).astype(str)
    y_pred = np.repeat(np.tile(idx, cm.shape[0]), cm.ravel()).astype(str)
    if y_true.size == 0:
        return {}
    value = scores_from_confusion(cm)
    out = {k: (float(value[k]), *bootstrap_ci(y_true, y_pred, k, n_boot=n_boot)) for k in POOLED}
    return {**out, "ci_method": "utterance_bootstrap"}


def _speaker_decisions(members: list[dict], data, conf) -> tuple[list, list, list] | None:
    """Every fold's (gold, prediction, speaker) concatenated, or None when any fold's cannot be read back."""
    from sertk.eval.compare import CompareError, decisions
    gold, pred, spk = [], [], []
    for r in members:
        if r.get("task") != "classification":
            return None
        try:
            _, g, p, s = decisions(r, data, conf)
        except (CompareError, ValueError, OSError):
            return None
        gold, pred, spk = gold + g, pred + p, spk + s
    return gold, pred, spk


SEED_DIR = re.compile(r"(?<=/)seed\d+(?=/)")  # <split>/seed<N>/: sertk.tasks.runner's per-seed dirs


def _seed_group_key(row: Row) -> tuple:
    """What a row is apart from its seed: model, protocol, folds and its file's place with seed<N>/ blanked."""
    return (row.section, row.stage, row.name, row.task, row.protocol_id, tuple(row.folds),
            SEED_DIR.sub("seed*", Path(row.paths[0]).as_posix()))


def _seeds_row(rows: list[Row], seeds: list[int]) -> Row:
    """One row for the runs of several seeds: each metric's mean and sd (ddof=1) over the seeds; the
    seeds' own rows (with their intervals) are kept for the report's seed table."""
    rows = [r for _, r in sorted(zip(seeds, rows), key=lambda t: t[0])]
    agg = aggregate_folds([{**r.metrics, **({"confusion": r.confusion} if r.confusion is not None else {})}
                           for r in rows])
    first = rows[0]
    metrics = dict(agg["mean"])
    for key in ("n", "dims"):
        if key in first.metrics:
            metrics[key] = first.metrics[key]  # the same test set each seed
    undefined: dict[str, list] = {}
    for r in rows:
        for d, where in r.undefined.items():
            undefined.setdefault(d, []).extend(where)
    return Row(stage=first.stage, name=first.name, task=first.task, protocol=first.protocol,
               protocol_id=first.protocol_id, metrics=metrics, labels=first.labels, confusion=agg.get("confusion"),
               paths=[p for r in rows for p in r.paths], folds=first.folds, fold_ids=first.fold_ids,
               std=agg["std"], section=first.section, collapsed=any(r.collapsed for r in rows),
               undefined=undefined, extra=first.extra, seeds=sorted(seeds), seed_rows=rows)


def merge_seeds(rows: list[tuple[Row, int | None]]) -> list[Row]:
    """Rows that differ only in their training seed become one (``_seeds_row``); two results of one
    seed and place are an error naming both files."""
    groups: dict[tuple, list[tuple[Row, int | None]]] = {}
    for row, seed in rows:
        groups.setdefault(_seed_group_key(row), []).append((row, seed))
    out = []
    for members in groups.values():
        seeds = [s for _, s in members]
        if len(members) == 1 or None in seeds:
            out += [r for r, _ in members]
            continue
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})[0]
            raise ResultsError(f"two results of seed {dup} for {members[0][0].name} ({members[0][0].protocol_id}): "
                               + " and ".join(r.paths[0] for r, s in members if s == dup))
        out.append(_seeds_row([r for r, _ in members], seeds))
    return out


def build_rows(records: list[dict], data=None, conf=None) -> list[Row]:
    singles = [r for r in records if (r.get("extra") or {}).get("fold") is None]
    folded = [r for r in records if (r.get("extra") or {}).get("fold") is not None]
    rows = [(_single_row(r), r) for r in singles]
    rows += [(_fold_row(g, data, conf), g[0]) for g in _fold_groups(folded)]
    for row, record in rows:
        row.section = group_title(record)
    return merge_seeds([(row, record.get("seed")) for row, record in rows])


# ---------------------------------------------------------------- formatting

def _num(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return f"{v:.3f}"


def _cell(row: Row, key: str, sub: str | None = None) -> str:
    """``m``, ``m [lo, hi]`` (bootstrap CI) or ``m ± s`` (folds) for a metric."""
    m = row.metrics.get(key)
    s = row.std.get(key)
    if sub is not None:
        m = m.get(sub) if isinstance(m, dict) else None
        s = s.get(sub) if isinstance(s, dict) else None
    if not isinstance(m, (int, float)) or isinstance(m, bool):
        return "–"
    if row.seeds:
        return f"{m:.3f} ± {_num(s)} ({len(row.seeds)} seeds)"
    if row.folds:
        pooled = row.pooled.get(key) if sub is None else None
        if pooled and pooled[1] is not None:
            mark = "" if row.pooled.get("ci_method") == "speaker_bootstrap" else UTTERANCE_MARK
            return f"{m:.3f} ± {_num(s)}; pooled {pooled[0]:.3f} [{pooled[1]:.3f}, {pooled[2]:.3f}]{mark}"
        return f"{m:.3f} ± {_num(s)}"
    ci = row.metrics.get(f"{key}_{sub}_ci" if sub else f"{key}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return f"{m:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{m:.3f}"


def _pair(row: Row, a: str, b: str) -> str:
    return f"{_num(row.metrics.get(a))} / {_num(row.metrics.get(b))}"


def _table(header: list[str], body: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in body])


def _classification_table(rows: list[Row], out_dir: Path) -> str:
    body = []
    for r in rows:
        link = f"[png]({Path(os.path.relpath(r.plot.resolve(), out_dir)).as_posix()})" if r.plot else "–"
        body.append([r.label, r.short_protocol, _num(r.metrics.get("n")), _cell(r, "uar"), _cell(r, "wa"),
                     _cell(r, "macro_f1"), _pair(r, "majority_uar", "majority_wa"),
                     _pair(r, "chance_uar", "chance_wa"), link])
    return _table(["result", "protocol", "n", "UAR", "WA", "macro-F1", "majority UAR / WA",
                   "chance UAR / WA", "confusion"], body) + (
        "\n\nMajority: always predicting the most frequent test class. Chance: guessing at random with "
        "the test-set class priors (UAR 1/C, WA Σ p_c²), C = classes present in the test set.")


def zsfuse_ablation(rows: list[Row]) -> list[str]:
    """ZS-Fuse (stage 9): the ablation table each result carries in ``extra.ablation`` (one per test set):
    every ALM variant, FM, and fusion, with the gain of the best fusion over the best single FM."""
    out = []
    for r in rows:
        for p in r.paths:
            try:
                extra = json.loads(Path(p).read_text()).get("extra") or {}
            except (OSError, ValueError):
                continue
            table, gain = extra.get("ablation"), extra.get("gain") or {}
            if not table:
                continue
            body = [[t["system"], t.get("kind", ""), _num(t.get("dev_uar"))] +
                    [_ci_cell(t, k) for k in ("uar", "wa", "macro_f1")] for t in table]
            out += ["", f"ZS-Fuse ablation, {r.name}, {r.short_protocol} (headline row above: "
                        f"{extra.get('system')}):", "",
                    _table(["system", "kind", "dev UAR", "UAR", "WA", "macro-F1"], body), "",
                    f"Best fusion by dev UAR ({gain.get('best_fusion_by_dev')}) minus best FM by dev UAR "
                    f"({gain.get('best_fm_by_dev')}): {_signed(gain.get('uar_gain_dev_selected'))} UAR; "
                    f"best fusion minus best FM on test (oracle): {_signed(gain.get('uar_gain_oracle'))}."
                    + _paired_sentence(gain.get("headline_vs_best_fm_paired"), extra.get("system"),
                                       gain.get("best_fm_by_dev"))]
    return out


def _paired_sentence(res: dict | None, a: str | None, b: str | None) -> str:
    """The headline's paired test against the best single model, as one sentence of the ablation note."""
    if not res:
        return ""
    from sertk.eval.compare import diff_text
    return (f" Headline ({a}) minus best FM by dev ({b}), {res.get('test', 'paired bootstrap')} over "
            f"{res.get('resample')}s ({res.get('speakers')} speakers): {diff_text(res)} UAR, "
            f"p = {res.get('p'):.4f}"
            + (" (significant at 0.05, uncorrected)" if res.get("p", 1) < 0.05 else " (not significant)")
            + (f"; {res['note']}" if res.get("note") else "") + ".")


def _ci_cell(t: dict, key: str) -> str:
    m, ci = t.get(key), t.get(f"{key}_ci")
    if not isinstance(m, (int, float)):
        return "–"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return f"{m:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{m:.3f}"


def _signed(v) -> str:
    return f"{v:+.3f}" if isinstance(v, (int, float)) else "–"


AVD_ORDER = ("arousal", "valence", "dominance")


def _dims(rows: list[Row]) -> list[str]:
    """Regression dimensions in their recorded order (A/V/D first when unrecorded)."""
    order = [d for r in rows for d in (r.metrics.get("dims") or [])]
    rest = sorted({d for r in rows for d in (r.metrics.get("ccc") or {})} - set(order),
                  key=lambda d: (AVD_ORDER.index(d) if d in AVD_ORDER else len(AVD_ORDER), d))
    return list(dict.fromkeys(order + rest))


UNDEFINED = "undefined"
UNDEFINED_NOTE = (f"*{UNDEFINED}*: CCC has no value where the test set's reference and the predictions are one "
                  "and the same constant (nothing varies to agree on: e.g. a dimension annotated with a single "
                  "value) or the set has fewer than 2 utterances; results.json holds null there. The mean CCC "
                  "then averages the defined dimensions only (their count in brackets), and a fold mean the "
                  "folds where the dimension is defined.")


def _ccc_cell(row: Row, dim: str) -> str:
    """A dimension's CCC, or ``undefined`` (with the folds where it is, when others define it)."""
    if dim not in row.undefined:
        return _cell(row, "ccc", dim)
    folds = row.undefined[dim]
    if not row.folds or len(folds) == len(row.folds):
        return UNDEFINED
    return f"{_cell(row, 'ccc', dim)} (undefined in fold {', '.join(str(f) for f in folds)})"


def _ccc_mean_cell(row: Row) -> str:
    """The mean CCC; for a single result lacking some dimensions, how many it averages."""
    if row.metrics.get("ccc_mean") is None and row.undefined:
        return UNDEFINED
    cell = _cell(row, "ccc_mean")
    if row.undefined and not row.folds:
        have = [d for d in (row.metrics.get("ccc") or {}) if d not in row.undefined]
        cell += f" ({len(have)} of {len(row.metrics.get('ccc') or {})} dims)"
    return cell


def _regression_table(rows: list[Row]) -> str:
    dims = _dims(rows)
    body = [[r.label, r.short_protocol, _num(r.metrics.get("n"))] + [_ccc_cell(r, d) for d in dims]
            + [_ccc_mean_cell(r)] for r in rows]
    table = _table(["result", "protocol", "n"] + [f"CCC {d}" for d in dims] + ["mean CCC"], body) + (
        "\n\nCCC 1 is perfect agreement; any constant prediction of a varying reference scores CCC 0.")
    if any(r.undefined for r in rows):
        table += "\n\n" + UNDEFINED_NOTE
    if has_students([r.metrics for r in rows]):  # stage 8: deployment figures of each student
        table += "\n\nStudents (int8 ONNX):\n\n" + students_table(
            [(r.label, r.short_protocol, r.metrics) for r in rows])
    return table


def _generic_table(rows: list[Row]) -> str:
    keys = sorted({k for r in rows for k, v in r.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"})
    body = [[r.label, r.short_protocol, _num(r.metrics.get("n"))] + [_cell(r, k) for k in keys] for r in rows]
    return _table(["result", "protocol", "n"] + keys, body)


def seeds_table(rows: list[Row]) -> list[str]:
    """Rows of repeated seeds: the mean ± sd over seeds beside each seed's own figure and interval."""
    seeded = [r for r in rows if r.seeds]
    if not seeded:
        return []
    body = []
    for r in seeded:
        key = "uar" if r.task == "classification" else "ccc_mean" if r.task == "regression" else None
        if key is None:
            continue
        values = [x.metrics.get(key) for x in r.seed_rows]
        spread = [v for v in values if isinstance(v, (int, float))]
        body.append([r.label, r.short_protocol, key, _cell(r, key),
                     f"{min(spread):.3f}–{max(spread):.3f}" if spread else "–"]
                    + ["; ".join(f"seed {s}: {_cell(x, key)}" for s, x in zip(r.seeds, r.seed_rows))])
    if not body:
        return []
    return ["", "Repeated seeds (each seed trains the model again on the same split; the table's figure is "
            "the mean ± sd over seeds, each seed's interval beside it):", "",
            _table(["result", "protocol", "metric", "mean ± sd", "range", "per seed"], body)]


def _plot_rows(rows: list[Row], plot_dir: Path) -> None:
    from sertk.eval.plots import plot_confusion  # matplotlib only when plotting

    for r in rows:
        if r.task != "classification" or r.confusion is None:
            continue
        labels = r.labels or [str(i) for i in range(len(r.confusion))]
        head = r.protocol.get("protocol") or r.protocol["scheme"]
        tail = "folds" if r.folds else str(r.protocol["test"])
        fname = f"stage{r.stage}_{slug(r.name)}_{slug(str(head))}_{slug(tail)}_{protocol_hash_of(r.protocol_id)}.png"
        title = f"{r.label}: {r.short_protocol}" + (" (summed over folds)" if r.folds else "") + (
            f" (summed over {len(r.seeds)} seeds)" if r.seeds else "")
        r.plot = plot_confusion(r.confusion, labels, plot_dir / fname, title)


def _kcurve_sections(rows: list[Row], out_dir: Path) -> list[str]:
    """Stage 6: each ICL result's k-curve (every method and enrolment condition per k) and its PNG."""
    from sertk.eval.kcurve import markdown_table

    out = []
    for r in rows:
        curve = r.extra.get("kcurve")
        if not curve:
            continue
        if r.folds:
            out += ["", f"k-curve of {r.label}: {r.short_protocol}. UAR, mean ± sd over the {len(r.folds)} folds of "
                    f"each fold's mean over {r.extra.get('draws')} seeded enrolment draws per test speaker "
                    f"({r.extra.get('speakers')} test speakers in all); per-fold curves and PNGs beside each "
                    "fold's result. Methods and conditions as below.", "", markdown_table(curve)]
            continue
        png = Path(str(r.extra.get("kcurve_png", "")))
        link = f" ([png]({Path(os.path.relpath(png.resolve(), out_dir)).as_posix()}))" if png.is_file() else ""
        head = r.extra.get("headline") or {}
        out += ["", f"k-curve of {r.label}: {r.short_protocol}{link}. UAR, mean [95% CI] over "
                f"{r.extra.get('draws')} seeded enrolment draws per test speaker ({r.extra.get('speakers')} "
                "speakers; the speaker's other utterances are the queries, the same for every method). "
                "*arbitrary*: enrolment labels as drawn; *cover*: every class enrolled. icl_k0 and si: no "
                "personalisation; spk_norm: enrolment-statistics normalisation; finetune: SI classifier tuned on "
                "the pairs; ncm: nearest-class-mean mixed with SI. The row above is "
                f"{head.get('method')} at k={head.get('k')} ({head.get('condition')}), pooled over draws.", "",
                markdown_table(curve), *_icl_paired_lines(r.extra.get("paired"))]
    return out


def _icl_paired_lines(paired: dict | None) -> list[str]:
    """ICL's headline against ICL at k = 0 and each baseline at the same k, paired on the same (draw, query)
    decisions (sertk.tasks.icl.paired_vs_references), as a compact table under its k-curve."""
    if not paired or not paired.get("vs"):
        return []
    k = paired.get("k")
    lines = ["", f"{paired.get('method')} at k={k} ({paired.get('condition')}) minus each reference, UAR on the same "
             "queries of the same draws; p (Holm) corrected across these rows. (u): fewer test speakers than a "
             "speaker-level test needs: queries permuted (each with all its draws), p holds for these utterances only.",
             "", "| reference | ICL - reference [95% CI] | p | p (Holm) |", "|---|---|---|---|"]
    from sertk.eval.compare import diff_text, utterance_mark
    for ref, res in paired["vs"].items():
        mark = utterance_mark(res)
        name = f"{ref} (k=0)" if ref == "icl_k0" else f"{ref} (k={k})"
        lines.append(f"| {name} | {diff_text(res)} | {res.get('p', 1):.4f}{mark} | "
                     f"{res.get('p_holm', 1):.4f}{mark}" + (" **significant**" if res.get("p_holm", 1) < 0.05 else "")
                     + " |")
    return lines


def render(rows: list[Row], title: str, exp_root: Path, out_dir: Path, n_files: int) -> str:
    lines = [f"# {title}", "",
             f"Generated by sertk {sertk.__version__} (stage 11) from {n_files} results.json file(s) under "
             f"`{exp_root}`. Figures are fractions; `a [lo, hi]` is a 95% bootstrap confidence interval that "
             "resamples test speakers unless the result's `ci_method` says utterances; `m ± s` is the mean ± "
             "sample std (ddof=1) over folds, `m ± s (N seeds)` over the training seeds of repeated runs, and "
             "`pooled` scores every fold's test utterances as one set (its "
             f"interval resamples speakers; {UTTERANCE_MARK}: decisions, where a fold's could not be read back). "
             "Definitions: docs/metrics.md.", ""]
    if not rows:
        lines.append(f"No results.json found under `{exp_root}`.")
        return "\n".join(lines) + "\n"
    sections: dict[str, list[Row]] = {}
    for r in rows:
        sections.setdefault(r.section, []).append(r)
    for sec in sorted(sections, key=_section_order):
        lines += [f"## {sec}", ""]
        by_task: dict[str, list[Row]] = {}
        for r in sorted(sections[sec], key=lambda r: (r.name, r.stage, r.short_protocol, r.protocol_id)):
            by_task.setdefault(r.task, []).append(r)
        for task in sorted(by_task, key=lambda t: ({"classification": 0, "regression": 1}.get(t, 2), t)):
            rs = by_task[task]
            if len(by_task) > 1:
                lines += [f"### {task}", ""]
            if task == "classification":
                lines.append(_classification_table(rs, out_dir))
                lines += zsfuse_ablation(rs)
            elif task == "regression":
                lines.append(_regression_table(rs))
            else:
                lines.append(_generic_table(rs))
            if any(r.collapsed for r in rs):
                lines += ["", COLLAPSED_NOTE]
            lines += seeds_table(rs)
            lines += _kcurve_sections(rs, out_dir)
            lines += ["", "Protocols:", ""]
            listed = set()
            for r in rs:
                if r.protocol_id not in listed:
                    listed.add(r.protocol_id)
                    lines.append(f"- `{r.protocol_id}`")
                    lines += [f"  - fold {f}: `{pid}`" for f, pid in zip(r.folds, r.fold_ids)]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def zoo_section(zoo_dir: Path, records: list[dict]) -> str:
    """The zoo table: each stage-0 model's card, with the UAR of frozen-layer probes on it beside
    the eGeMAPS + logistic-regression baseline on the same splits."""
    cards = [json.loads(p.read_text()) for p in sorted(zoo_dir.glob("*/zoo.json"))]
    if not cards:
        return ""

    def uar(r):
        return r["metrics"]["uar"] if "uar" in r.get("metrics", {}) else None

    def where(r):
        return f"{r['protocol'].get('train')} → {r['protocol'].get('test')}"
    probes = [r for r in records if r.get("task") == "classification" and (r.get("extra") or {}).get("encoder")]
    cols = sorted({where(r) for r in probes})
    egemaps = {where(r): uar(r) for r in records if r.get("name") == "egemaps_lr" and where(r) in cols}
    header = ["model", "class", "real or stand-in for", "params", "objective", "train s", "pool-dev"] + \
        [f"probe UAR {c}" for c in cols]
    body = []
    for c in cards:
        mine = [r for r in probes if Path(str(r["extra"]["encoder"])).name == c["name"]]
        cells = []
        for col in cols:
            hits = [f"{uar(r):.3f} ({r['name']}, layer {r['extra'].get('layer')})" for r in mine if where(r) == col]
            cells.append("; ".join(hits) or "-")
        dev = ", ".join(f"{k} {v}" for k, v in (c.get("dev") or {}).items())
        first = (card_names(c) or [None])[0]
        kind = f"real: `{first}`" if c.get("real") else f"stand-in for `{first}`"
        body.append([f"`zoo/{c['name']}`", f"`{c.get('class')}`", kind,
                     f"{c.get('params', 0):,}", c.get("objective", ""), f"{c.get('train_seconds', 0):.0f}", dev] + cells)
    if egemaps:
        body.append(["eGeMAPS + LR (reference)", "-", "-", "-", "88 functionals, logistic regression", "-", "-"] +
                    [f"{egemaps[c]:.3f}" if egemaps.get(c) is not None else "-" for c in cols])
    pool = next((c["pool"] for c in cards if c.get("pool")), {})
    return "\n".join([
        "## Model zoo (stage 0)", "",
        f"Real models are imported as published; stand-ins are trained on the pre-training pool (`{pool.get('path')}`: "
        f"{pool.get('utterances')} utterances, {pool.get('speakers')} speakers no evaluation set contains); model "
        f"cards in `{zoo_dir}/<name>/README.md`.",
        "Probe UAR: logistic regression on a frozen layer of the model, trained on the protocol's train set.", "",
        _table(header, body), ""])


CONDITION_COLUMNS = [("UAR", "uar"), ("dUAR vs aligned", "duar_vs_aligned"), ("dUAR vs none", "duar_vs_none"),
                     ("neutral share", "neutral_share"), ("neutral mass moved vs aligned", "neutral_mass_moved_vs_aligned"),
                     ("agreement with none", "agreement_with_none"), ("entropy (norm.)", "prediction_entropy_norm"),
                     ("unparsed", "unparsed_rate"), ("utts w/ changed token", "tokens_changed"),
                     ("p vs aligned (Holm)", "p_vs_aligned_holm"), ("p vs none (Holm)", "p_vs_none_holm")]
P_COLUMNS = ("p_vs_aligned_holm", "p_vs_none_holm")  # one test set's p-values: not averaged over folds


def model_label(record: dict) -> str:
    """The model a stage-10 result ran, as a table cell: an offline stand-in (``stand_ins``) as
    ``zoo/<name>`` with the hub checkpoint it stood in for."""
    model = str((record.get("extra") or {}).get("model"))
    for s in (record.get("stand_ins") or {}).values():
        if s.get("path") == model:
            return f"`zoo/{s['zoo_model']}` (for `{s['configured']}`)"
    return f"`{model}`"


def _p_cell(metrics: dict, key: str) -> str:
    p = metrics.get(key)
    if not isinstance(p, (int, float)):
        return "–"
    res = metrics.get(key.replace("p_vs_", "paired_vs_").replace("_holm", "")) or {}
    from sertk.eval.compare import utterance_mark
    text = f"{p:.3f}" + utterance_mark(res)
    return f"**{text}**" if p < 0.05 else text


def condition_section(records: list[dict]) -> str:
    """Stage 10's condition table: per model, test set and decision, one row per token condition
    (folds averaged), with the figures that say whether predictions shift to neutral or collapse."""
    recs = [r for r in records if r["stage"] == 10 and (r.get("extra") or {}).get("condition")
            and r["extra"].get("decision")]
    if not recs:
        return ""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        e, p = r["extra"], r["protocol"]
        test = re.sub(r"(?i)fold[_-]?\d+", "fold*", str(p["test"]))
        key = (model_label(r), p["corpus"], p.get("protocol") or p["scheme"], test, e["decision"], e["condition"])
        groups.setdefault(key, []).append(r)
    order = ["none", "aligned", "shuffled", "permuted", "conflicting", "corrupted", "corrupted_nonsense"]
    body = []
    for key in sorted(groups, key=lambda k: (k[:5], order.index(k[5]) if k[5] in order else len(order))):
        members = groups[key]
        cells = []
        for _, m in CONDITION_COLUMNS:
            vals = [r["metrics"].get(m) for r in members if isinstance(r["metrics"].get(m), (int, float))]
            if m in P_COLUMNS:
                cells.append(_p_cell(members[0]["metrics"], m) if len(members) == 1 else "–")
                continue
            cells.append(_num(sum(vals) / len(vals)) if vals else "–")
        folds = f" ({len(members)} folds)" if len(members) > 1 else ""
        body.append([key[0], f"{key[1]} {key[2]}: {key[3]}{folds}", key[4], key[5]] + cells)
    return "\n".join([
        "### Concept-token conditions", "",
        "Same audio, only the token block of the prompt changes. dUAR: UAR minus that of the aligned / no-token "
        "prompt; neutral share: predictions that are neutral; neutral mass moved: change, vs aligned, in the share of "
        "utterances of other classes predicted neutral; agreement with none: predictions equal to the no-token one's; "
        "entropy: of the predicted-class distribution over log2(C) (1 = all classes equally often, 0 = collapse); "
        "unparsed: free answers naming no class (errors); utts w/ changed token: utterances with any token differing from aligned "
        "(results.json also holds token_slots_changed, the share of changed slots). p vs aligned / none: paired test "
        "of the UAR difference on the same utterances, Holm-corrected over the test set's and decision's "
        "comparisons, **bold** below 0.05 (speakers resampled; (u): too few speakers, utterances permuted, so the p "
        "holds for these utterances only; folds: – here, pool them with `sertk compare`).", "",
        _table(["model", "test set", "decision", "condition"] + [c for c, _ in CONDITION_COLUMNS], body), ""])


def write_report(exp_root, out_md, title: str = "sertk results", zoo: str | Path | None = None,
                 compare: str | Path | None = None, data: str | Path = "data", conf: str | Path = "conf") -> str:
    """Write ``out_md`` (RESULTS.md) and ``exp_root/plots/*.png``; return the markdown.

    Only those files are written (atomically); nothing under ``exp_root`` is removed.
    With ``zoo`` (mini_emo's stage-0 dir) the report opens with the zoo table;
    with ``compare`` (a recipe's conf/compare.yaml) it adds the paired
    comparisons (sertk.eval.compare), reading gold labels from ``data``/``conf``.
    """
    exp_root, out_md = Path(exp_root), Path(out_md)
    records = read_results(exp_root)
    rows = build_rows(records, data, conf)
    _plot_rows(rows, exp_root / "plots")
    text = render(rows, title, exp_root, out_md.resolve().parent, len(records))
    conditions = condition_section(records)
    if conditions:  # at the end of the stage-10 section
        head, sep, rest = text.partition("## Stage 10: acoustic concept tokens\n")
        after, nxt, tail = rest.partition("\n## ")
        text = head + sep + after.rstrip("\n") + "\n\n" + conditions + (nxt + tail if nxt else "") if sep else \
            text + "\n" + conditions
    if zoo and Path(zoo).is_dir():
        head, sep, rest = text.partition("\n## ")
        table = zoo_section(Path(zoo), records)
        text = head + table + "\n" + sep.lstrip("\n") + rest if table else text
    if compare:
        from sertk.eval.compare import comparison_section, load_compare_config
        section = comparison_section(load_compare_config(compare), exp_root, data, conf)
        if section:
            text = text.rstrip("\n") + "\n\n" + section
    if data is not None and Path(data).is_dir():  # what each test set can tell (sertk.eval.power)
        from sertk.eval.power import mdd_section
        section = mdd_section(exp_root, data, conf)
        if section:
            text = text.rstrip("\n") + "\n\n" + section
    curves = learning_curve_section(exp_root, out_md.resolve().parent)
    if curves:
        text = text.rstrip("\n") + "\n\n" + curves
    write_text_atomic(out_md, text)
    return text


def learning_curve_section(exp_root: Path, out_dir: Path) -> str:
    """One row per trained model dir: epochs, best epoch and its dev metric, the learning-curve PNG link."""
    rows = []
    for hist_path in sorted(Path(exp_root).rglob("history.json")):
        rel = hist_path.parent.relative_to(exp_root)
        if is_moved_aside(rel):
            continue
        try:
            hist = json.loads(hist_path.read_text(encoding="utf-8"))
            best = json.loads((hist_path.parent / "best.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a run still training (no best.json yet) or a foreign file
        metric, epochs = hist.get("select_metric"), hist.get("history") or []
        value = (best.get("metrics") or {}).get(metric)
        png = hist_path.parent / "learning_curve.png"
        link = f"[png]({Path(os.path.relpath(png.resolve(), out_dir)).as_posix()})" if png.is_file() else "–"
        if not best.get("metrics"):  # e.g. SELM's few-shot adaptation: a fixed number of epochs, no dev set
            dev, verdict = "– (no dev set: last epoch kept)", "– (nothing to judge by)"
        else:
            dev = f"{metric} {_num(value)}"
            verdict = f"did not learn: {best['collapse_reason']}" if best.get("collapsed") else "learned"
        rows.append([rel.as_posix(), str(len(epochs)), str(best.get("epoch")), dev, verdict, link])
    if not rows:
        return ""
    return "\n".join(["## Learning curves", "",
                      "Every model the trainer fitted: train loss and dev metric per epoch (`history.json` beside "
                      "the model), the epoch selected on dev, and the trainer's verdict.", "",
                      _table(["model dir", "epochs", "best epoch", "dev at best", "verdict", "curve"], rows), ""])
