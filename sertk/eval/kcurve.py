"""k-shot personalisation curves: per-draw metrics summarised over draws, as TSV, PNG and markdown.

One draw is one seeded choice of enrolment utterances for every test speaker;
its UAR/WA/macro-F1 are computed over the queries of all speakers together.
Over the draws a curve point is the mean and a 95% t-interval (the draws are
the repetitions, so the interval says how much the figure depends on *which*
enrolment utterances a user happens to record). The same rows feed the
stage-6 files and the stage-11 report table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sertk.common.fileio import atomic_path, write_text_atomic

METRICS = ("uar", "wa", "macro_f1")


def summarise(per_draw: dict[tuple[str, int, str], list[dict]]) -> list[dict]:
    """Rows {condition, k, method, draws, n_queries, <metric>_mean/_std/_ci} from
    {(condition, k, method): [metrics per draw]}, in the dict's order."""
    from scipy import stats

    rows = []
    for (cond, k, method), draws in per_draw.items():  # the caller's order: methods as it lists them
        row = {"condition": cond, "k": int(k), "method": method, "draws": len(draws),
               "n_queries": int(np.mean([d["n"] for d in draws]))}
        for m in METRICS:
            v = np.array([d[m] for d in draws], dtype=np.float64)
            mean = float(v.mean())
            sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            half = float(stats.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v))) if len(v) > 1 else 0.0
            row.update({f"{m}_mean": mean, f"{m}_std": sd, f"{m}_ci": [mean - half, mean + half]})
        rows.append(row)
    return rows


def write_tsv(rows: list[dict], path: str | Path) -> Path:
    head = ["condition", "k", "method", "draws", "n_queries"] + [f"{m}_{s}" for m in METRICS
                                                                  for s in ("mean", "std", "ci_low", "ci_high")]
    lines = ["\t".join(head)]
    for r in rows:
        vals = [r["condition"], r["k"], r["method"], r["draws"], r["n_queries"]]
        for m in METRICS:
            vals += [f"{r[f'{m}_mean']:.4f}", f"{r[f'{m}_std']:.4f}", f"{r[f'{m}_ci'][0]:.4f}",
                     f"{r[f'{m}_ci'][1]:.4f}"]
        lines.append("\t".join(str(v) for v in vals))
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def fold_mean(curves: list[list[dict]], metric: str = "uar") -> list[dict]:
    """The k-curves of a protocol's folds as one: per (method, condition, k) the mean over the folds that
    have the point and its sample std (``<metric>_fold_sd``; one fold: no std)."""
    points: dict[tuple, list[float]] = {}
    for curve in curves:
        for r in curve:
            points.setdefault((r["method"], r["condition"], r["k"]), []).append(float(r[f"{metric}_mean"]))
    out = []
    for (method, cond, k), v in points.items():
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else None
        out.append({"method": method, "condition": cond, "k": k, "draws": 1, "folds": len(v),
                    f"{metric}_mean": float(np.mean(v)), f"{metric}_fold_sd": sd})
    return out


def markdown_table(rows: list[dict], metric: str = "uar") -> str:
    """One line per (method, condition), one column per k: ``mean [lo, hi]`` over draws, or ``mean ± sd``
    over folds for a :func:`fold_mean` curve."""
    ks = sorted({r["k"] for r in rows})
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    at = {(r["method"], r["condition"], r["k"]): r for r in rows}
    lines = ["| method | enrolment | " + " | ".join(f"k={k}" for k in ks) + " |",
             "| --- | --- | " + " | ".join("---" for _ in ks) + " |"]
    for cond in conds:
        for m in _methods(rows):
            cells = []
            for k in ks:
                r = at.get((m, cond, k))
                if r is None:
                    cells.append("–")
                elif r.get(f"{metric}_fold_sd") is not None:
                    cells.append(f"{r[f'{metric}_mean']:.3f} ± {r[f'{metric}_fold_sd']:.3f}")
                elif r["draws"] > 1:
                    lo, hi = r[f"{metric}_ci"]
                    cells.append(f"{r[f'{metric}_mean']:.3f} [{lo:.3f}, {hi:.3f}]")
                else:
                    cells.append(f"{r[f'{metric}_mean']:.3f}")
            if any(c != "–" for c in cells):
                lines.append(f"| {m} | {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_kcurve(rows: list[dict], png: str | Path, title: str = "", metric: str = "uar") -> Path:
    """UAR (mean and CI band over draws) against k, one line per (method, condition); saved atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ks = sorted({r["k"] for r in rows})
    colours = {m: f"C{i % 10}" for i, m in enumerate(_methods(rows))}  # a method keeps its colour; conditions: style
    for cond in dict.fromkeys(r["condition"] for r in rows):
        for m in _methods(rows):
            pts = sorted((r["k"], r[f"{metric}_mean"], *r[f"{metric}_ci"]) for r in rows
                         if r["method"] == m and r["condition"] == cond)
            if len(pts) < 1:
                continue
            x = [ks.index(p[0]) for p in pts]
            style = "-" if cond == "arbitrary" else "--"
            ax.plot(x, [p[1] for p in pts], style, marker="o", color=colours[m], label=f"{m} ({cond})")
            ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], color=colours[m], alpha=0.08)
    ax.set_xticks(range(len(ks)), labels=[str(k) for k in ks])
    ax.set_xlabel("enrolment utterances k")
    ax.set_ylabel(metric.upper())
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    return png
