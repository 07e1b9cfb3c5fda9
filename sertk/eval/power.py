"""How small a UAR difference can a test set tell apart? Power and minimum detectable difference by simulation.

A p-value of "not significant" means little unless one knows what the test
set could have detected. Following oruk-bench, the power of sertk's own
paired test is simulated from a real result: a reference system A keeps its
per-utterance correctness, whole speakers are drawn with replacement (to the
test set's size, or to a larger one to ask how many speakers would do), and
system B is A with some utterances' correctness flipped, so that B's expected
UAR exceeds A's by ``d`` while the two disagree on a share ``discordance`` of
the utterances (measured between the real systems on that test set). Each
draw is then decided by the rule ``sertk compare`` applies
(:func:`sertk.eval.significance.paired_test`): a paired speaker bootstrap
from ``min_speakers`` speakers on, else approximate randomisation over
utterances. The minimum detectable difference (MDD) is the smallest ``d`` on
a grid detected (p < alpha, B ahead) in at least 80% of the draws.

UAR depends only on per-class correct counts, so everything runs on
[draw, speaker, class] counts; the same random numbers serve every ``d``
(common random numbers), so power rises with ``d`` draw by draw and the grid
can be bisected.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from sertk.eval.compare import CompareError, decisions
from sertk.eval.metrics import _group_counts
from sertk.eval.results import read_results
from sertk.eval.significance import MIN_SPEAKERS

log = logging.getLogger(__name__)

ALPHA = 0.05
TARGET_POWER = 0.80
TARGET_DIFF = 0.05       # the difference a test set should detect (issue 23)
STEP = 0.01              # MDD grid
MAX_SPEAKERS = 64        # largest test set the speaker search tries
N_SIM = 1000             # simulated test sets per power figure: power's Monte Carlo sd <= 0.016
N_RESAMPLES = 500        # bootstrap resamples / permutations inside each simulated test
_BLOCK = 2_000_000       # array elements per block of draws (bounds memory, not the result)


@dataclass(frozen=True)
class SpeakerCounts:
    """A test set as the simulation sees it: per speaker and class, the reference's correct count and the support."""
    correct: np.ndarray  # [G, K] int
    support: np.ndarray  # [G, K] int

    @property
    def recall(self) -> np.ndarray:
        """The reference's recall of each class on the whole test set."""
        return self.correct.sum(0) / self.support.sum(0)

    @property
    def uar(self) -> float:
        return float(self.recall.mean())


def speaker_counts(gold: Sequence, speakers: Sequence, correct: Sequence[bool]) -> SpeakerCounts:
    """Counts of one reference system's decisions (``correct``: its prediction equals ``gold``) per speaker."""
    if not (len(gold) == len(speakers) == len(correct)) or not len(gold):
        raise ValueError(f"speaker_counts: {len(gold)} labels, {len(speakers)} speaker ids and "
                         f"{len(correct)} correctness flags; need the same non-zero number")
    cls = np.unique(np.asarray([str(g) for g in gold]), return_inverse=True)[1].reshape(-1)
    spk = np.unique(np.asarray([str(s) for s in speakers]), return_inverse=True)[1].reshape(-1)
    k, g = int(cls.max()) + 1, int(spk.max()) + 1
    cell = spk * k + cls
    support = np.bincount(cell, minlength=g * k).reshape(g, k)
    hit = np.bincount(cell, weights=np.asarray(correct, dtype=np.float64), minlength=g * k).reshape(g, k)
    return SpeakerCounts(hit.astype(np.int64), support)


def _uar(correct: np.ndarray, support: np.ndarray) -> np.ndarray:
    """UAR over the last axis (classes): mean recall of the classes with support, as scores_from_confusion."""
    present = support > 0
    recall = np.where(present, correct / np.where(present, support, 1), 0.0)
    return recall.sum(-1) / present.sum(-1)


def flip_rates(recall: np.ndarray, d: float, discordance: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Per class, P(A wrong -> B right) and P(A right -> B wrong), and the discordance they give.

    Class c's recall rises by ``d`` times its headroom over the mean headroom (so UAR rises by ``d``, and a class
    at recall 1 stays there); on top, B loses and gains equally many of the class's utterances (share ``s`` of
    what the class can lose and still gain), ``s`` set so that the class-averaged discordance is ``discordance``,
    or as near as the reference allows (at most ``s`` = 1; never below ``d``). Balanced within each class, a
    ``d`` of 0 leaves every class's expected recall as it was: the null of the paired test.
    """
    recall = np.asarray(recall, dtype=np.float64)
    head = 1.0 - recall
    if not feasible(recall, d):
        raise ValueError(f"d={d:.3f} exceeds the reference's headroom 1 - UAR = {head.mean():.3f}")
    d_c = d * head / head.mean() if d > 0 else np.zeros_like(head)
    room = np.minimum(recall, head - d_c)
    s = float(np.clip((discordance - d) / 2 / room.mean(), 0.0, 1.0)) if room.mean() > 0 else 0.0
    loss = s * room
    gain = d_c + loss
    p_gain = np.divide(gain, head, out=np.zeros_like(head), where=head > 0)
    p_loss = np.divide(loss, recall, out=np.zeros_like(head), where=recall > 0)
    return p_gain, p_loss, float(d + 2 * loss.mean())


def feasible(recall: np.ndarray, d: float) -> bool:
    """Whether B can be ``d`` ahead of a reference of these per-class recalls (UAR cannot pass 1)."""
    return d <= float(np.mean(1.0 - np.asarray(recall))) + 1e-12


def _blocks(counts: SpeakerCounts, n_speakers: int, n_sim: int, n_resamples: int, seed: int):
    """Yield (A correct, support, uniforms) of blocks of simulated test sets, the same for a seed whatever ``d``."""
    k, m = counts.support.shape[1], int(counts.support.max())
    per = max(1, min(n_sim, _BLOCK // max(n_speakers * k * m, n_resamples * k)))
    for b, start in enumerate(range(0, n_sim, per)):
        rng = np.random.default_rng([seed, n_speakers, 0, b])
        idx = rng.integers(0, len(counts.support), size=(min(per, n_sim - start), n_speakers))
        yield counts.correct[idx], counts.support[idx], rng.random((*idx.shape, k, m))


def _flip(a: np.ndarray, n: np.ndarray, u: np.ndarray, p_gain: float, p_loss: float):
    """(gains, losses) per cell: the first ``a`` items of a cell are A's correct ones, the next ``n - a`` its errors."""
    j = np.arange(u.shape[-1])
    right, wrong = j < a[..., None], (j >= a[..., None]) & (j < n[..., None])
    return (wrong & (u < p_gain[:, None])).sum(-1), (right & (u < p_loss[:, None])).sum(-1)


def _p_bootstrap(a, b, n, weights: np.ndarray) -> np.ndarray:
    """p of each draw's paired speaker bootstrap, as :func:`paired_bootstrap` (shifted differences, +1)."""
    m, s, k = a.shape

    def resampled(x):  # [B, m, K]: each resample's per-class totals
        return (weights @ x.transpose(1, 0, 2).reshape(s, m * k)).reshape(-1, m, k)

    rn = resampled(n)
    diff = _uar(resampled(b), rn) - _uar(resampled(a), rn)
    obs = _uar(b.sum(1), n.sum(1)) - _uar(a.sum(1), n.sum(1))
    hits = (np.abs(diff - diff.mean(0)) >= np.abs(obs) - 1e-12).sum(0)
    return (1 + hits) / (len(weights) + 1)


def _p_permutation(gains, losses, n, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """p of each draw's approximate randomisation over utterances, as :func:`approximate_randomization`:
    swapping a discordant utterance flips the sign of its 1 / (K n_c) share of the UAR difference."""
    g, l, nc = gains.sum(1), losses.sum(1), n.sum(1)  # [m, K] pooled over speakers
    w = np.where(nc > 0, 1.0 / np.maximum(nc, 1), 0.0) / (nc > 0).sum(-1, keepdims=True)
    obs = ((g - l) * w).sum(-1)
    disc = g + l
    signs = 2 * rng.binomial(disc[:, None, :], 0.5, size=(len(disc), n_perm, disc.shape[-1])) - disc[:, None, :]
    hits = (np.abs((signs * w[:, None, :]).sum(-1)) >= np.abs(obs)[:, None] - 1e-12).sum(1)
    return (1 + hits) / (n_perm + 1)


def power(counts: SpeakerCounts, d: float, discordance: float, n_speakers: int | None = None, n_sim: int = N_SIM,
          n_resamples: int = N_RESAMPLES, alpha: float = ALPHA, seed: int = 0,
          min_speakers: int = MIN_SPEAKERS) -> float:
    """Share of simulated test sets of ``n_speakers`` (default: as many as the real one) on which sertk's paired
    test finds B ahead of A at p < ``alpha`` (either way round when ``d`` is 0: the false-positive rate)."""
    s = len(counts.support) if n_speakers is None else int(n_speakers)
    if s < 1:
        raise ValueError(f"power: n_speakers must be >= 1, got {s}")
    p_gain, p_loss, _ = flip_rates(counts.recall, d, discordance)
    speaker_test = s >= min_speakers
    weights = (np.concatenate(list(_group_counts(None, s, n_resamples, seed))).astype(np.float64)
               if speaker_test else None)
    perm_rng = np.random.default_rng([seed, s, 1, 0])
    detected = 0
    for a, n, u in _blocks(counts, s, n_sim, n_resamples, seed):
        gains, losses = _flip(a, n, u, p_gain, p_loss)
        b = a + gains - losses
        if speaker_test:
            p = _p_bootstrap(a.astype(np.float64), b.astype(np.float64), n.astype(np.float64), weights)
        else:
            p = _p_permutation(gains, losses, n, n_resamples, perm_rng)
        ahead = _uar(b.sum(1), n.sum(1)) > _uar(a.sum(1), n.sum(1)) if d > 0 else True
        detected += int(np.sum((p < alpha) & ahead))
    return detected / n_sim


def _first(lo: int, hi: int, ok) -> int | None:
    """Smallest i in [lo, hi] with ok(i), for ok monotone in i; None if not even ok(hi)."""
    if lo > hi or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def mdd(counts: SpeakerCounts, discordance: float, n_speakers: int | None = None, step: float = STEP,
        target: float = TARGET_POWER, **kw) -> float | None:
    """Smallest UAR difference on a grid of ``step`` detected with power >= ``target``; None when even the
    largest reachable difference is not (``kw``: :func:`power`'s simulation settings)."""
    top = int(np.floor((1 - counts.uar) / step + 1e-9))
    k = _first(1, top, lambda i: power(counts, i * step, discordance, n_speakers, **kw) >= target)
    return None if k is None else round(k * step, 10)


def speakers_needed(counts: SpeakerCounts, discordance: float, d: float = TARGET_DIFF,
                    max_speakers: int = MAX_SPEAKERS, target: float = TARGET_POWER,
                    min_speakers: int = MIN_SPEAKERS, **kw) -> int | None:
    """Fewest test speakers (resampled from these, speaker-level test) detecting ``d`` with power >= ``target``;
    None beyond ``max_speakers``."""
    return _first(min_speakers, max_speakers,
                  lambda s: power(counts, d, discordance, s, min_speakers=min_speakers, **kw) >= target)


def analytic_mdd(n_utts: int, discordance: float, alpha: float = ALPHA, target: float = TARGET_POWER) -> float:
    """McNemar's normal approximation for independent utterances and balanced classes: d = z sqrt((q - d^2) / N),
    z = z_(1-alpha/2) + z_power. A check on the simulation, which has no speaker effect in that case."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(target)
    return z * float(np.sqrt(discordance / (n_utts + z * z)))


# ---------------------------------------------------------------- a recipe's test sets

def _test_sets(exp_root: Path, data: Path, conf: Path) -> dict[str, list[tuple[str, dict]]]:
    """test set -> [(result path, {utt: (gold, pred, speaker)})] of every classification result that pairs."""
    out: dict[str, list] = {}
    for r in read_results(exp_root):
        if r.get("task") != "classification":
            continue
        try:
            utts, gold, pred, spk = decisions(r, data, conf)
        except CompareError as e:
            log.info("MDD: %s left out (%s)", r["path"], e)
            continue
        rel = str(Path(r["path"]).parent.relative_to(exp_root))
        out.setdefault(r["protocol"]["test"], []).append((rel, dict(zip(utts, zip(gold, pred, spk)))))
    return out


def _comparable(results: list[tuple[str, dict]]) -> list[tuple[str, SpeakerCounts, np.ndarray]]:
    """(path, counts, per-utterance correctness) of the results that score the whole test set (few-shot runs may
    leave support utterances out) and beat chance (diagnostics such as corrupted prompts are not systems)."""
    most = max(len(d) for _, d in results)
    full = [(p, d) for p, d in results if len(d) == most]
    out = []
    for path, d in full:
        if d.keys() != full[0][1].keys():
            continue
        gold, pred, spk = zip(*(d[u] for u in sorted(d)))
        right = np.array([g == x for g, x in zip(gold, pred)])
        counts = speaker_counts(gold, spk, right)
        if counts.uar > 1.0 / counts.support.shape[1]:
            out.append((path, counts, right))
    return out


def measured_discordance(correct: Sequence[np.ndarray]) -> float:
    """Median over pairs of systems of the share of utterances one gets right and the other wrong."""
    if len(correct) < 2:
        raise ValueError("discordance needs two results on the test set")
    return float(np.median([np.mean(correct[i] != correct[j]) for i, j in combinations(range(len(correct)), 2)]))


def _reference(systems: list[tuple[str, SpeakerCounts, np.ndarray]]) -> tuple[str, SpeakerCounts]:
    """The result of median UAR (a typical system; the lower one of an even count)."""
    path, counts, _ = sorted(systems, key=lambda c: (c[1].uar, c[0]))[(len(systems) - 1) // 2]
    return path, counts


def mdd_table(exp_root: str | Path, data: str | Path, conf: str | Path, speakers_grid: Sequence[int] | None = None,
              d: float = TARGET_DIFF, **kw) -> list[dict]:
    """Per test set (data dir): its speakers and utterances, the reference result and measured discordance, the
    MDD at its size, and the fewest speakers (``speakers_grid``, default 5-64, bisected) for MDD <= ``d``."""
    grid = sorted(speakers_grid or range(MIN_SPEAKERS, MAX_SPEAKERS + 1))
    rows = []
    for test, results in sorted(_test_sets(Path(exp_root), Path(data), Path(conf)).items()):
        systems = _comparable(results)
        if len(systems) < 2:
            log.info("MDD: %s has %d whole-set result(s) above chance; discordance needs two", test, len(systems))
            continue
        q = measured_discordance([c for _, _, c in systems])
        ref, counts = _reference(systems)
        k = _first(0, len(grid) - 1, lambda i: power(counts, d, q, grid[i], **kw) >= TARGET_POWER)
        rows.append({"test_set": test, "speakers": len(counts.support), "utterances": int(counts.support.sum()),
                     "systems": len(systems), "reference": ref, "reference_uar": counts.uar, "discordance": q,
                     "discordance_simulated": flip_rates(counts.recall, d, q)[2],
                     "mdd": mdd(counts, q, **kw),
                     "test": "speaker bootstrap" if len(counts.support) >= MIN_SPEAKERS else "utterance permutation",
                     "speakers_for_d": None if k is None else grid[k], "d": d, "max_speakers": grid[-1]})
    return rows


def _discordance(row: dict) -> str:
    """Measured discordance, and the simulated one where the reference's recalls cannot reach it."""
    q, used = row["discordance"], row["discordance_simulated"]
    return f"{q:.3f}" + (f" ({used:.3f} simulated)" if abs(used - q) > 5e-4 else "")


def mdd_section(exp_root: str | Path, data: str | Path, conf: str | Path, **kw) -> str:
    """RESULTS.md's minimum-detectable-difference table (markdown); empty when no test set has two results."""
    rows = mdd_table(exp_root, data, conf, **kw)
    if not rows:
        return ""
    d = rows[0]["d"]
    lines = ["## Minimum detectable difference", "",
             f"| test set | speakers (utts) | systems | reference (UAR) | discordance | MDD (test) | "
             f"speakers for MDD <= {d:.2f} |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        need = r["speakers_for_d"] if r["speakers_for_d"] is not None else f"> {r['max_speakers']}"
        mdd_txt = f"{r['mdd']:.2f}" if r["mdd"] is not None else "none reachable"
        lines.append(f"| {r['test_set']} | {r['speakers']} ({r['utterances']}) | {r['systems']} | {r['reference']} "
                     f"({r['reference_uar']:.3f}) | {_discordance(r)} | {mdd_txt} ({r['test']}) | {need} |")
    lines += ["", f"The MDD is the smallest UAR difference (0.01 grid) that sertk's paired test (speaker bootstrap "
              f"from {MIN_SPEAKERS} speakers, else utterance permutation; p < {ALPHA}) detects in {TARGET_POWER:.0%} "
              f"of {N_SIM} simulated test sets, each drawing whole speakers with replacement from the reference "
              "result (the median-UAR system) and flipping its per-utterance correctness so that a system B is ahead "
              "by that difference while disagreeing with it on the measured share of utterances (the median over "
              "pairs of this test set's results). The last column draws more speakers from the same ones to find "
              "how many a test set would need; utterances are flipped independently, so a real difference that "
              "concentrates on some speakers needs more (docs/metrics.md)."]
    return "\n".join(lines)
