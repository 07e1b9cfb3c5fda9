"""ICL's headline paired against ICL at k = 0 and the personal baselines on the same (draw, query) decisions."""
from __future__ import annotations

import numpy as np
import pytest

from sertk.eval.report import _icl_paired_lines
from sertk.eval.significance import approximate_randomization, paired_test
from sertk.tasks.icl import BASELINE_METHODS, ICL, ICL_K0, paired_vs_references

CLASSES = ["ang", "hap", "neu", "sad"]


def _decisions(n_spk, per=8, draws=3, k=4, acc=None, seed=0):
    """(cond, k, method) -> draw -> (gold, pred, queries), as icl._evaluate_test builds it."""
    rng = np.random.default_rng(seed)
    acc = acc or {ICL: 0.9, ICL_K0: 0.4, **{m: 0.4 for m in BASELINE_METHODS}}
    queries = [f"s{s}-{i}" for s in range(n_spk) for i in range(per)]
    gold = {q: int(rng.integers(4)) for q in queries}
    out = {}
    for d in range(draws):
        qs = [q for q in queries if rng.random() < 0.8]  # each draw leaves its enrolment out of the queries
        for m, a in acc.items():
            pred = [gold[q] if rng.random() < a else (gold[q] + 1) % 4 for q in qs]
            out.setdefault(("arbitrary", k, m), {})[d] = ([gold[q] for q in qs], pred, qs)
    return out, {q: q.split("-")[0] for q in queries}


def test_icl_headline_is_paired_with_k0_and_each_baseline():
    dec, utt2spk = _decisions(n_spk=6)
    res = paired_vs_references(dec, "arbitrary", 4, CLASSES, utt2spk, n=1000)
    assert list(res["vs"]) == [ICL_K0, *BASELINE_METHODS] and res["k"] == 4
    for ref, row in res["vs"].items():
        assert row["resample"] == "speaker" and row["speakers"] == 6 and row["p_holm"] >= row["p"]
        assert row["diff"] > 0.3 and row["p_holm"] < 0.05
    # draws pooled item by item: the same figures as the paired test on the concatenated draws
    items = [x for d in sorted(dec[("arbitrary", 4, ICL)]) for x in zip(*dec[("arbitrary", 4, ICL)][d])]
    ref = [x for d in sorted(dec[("arbitrary", 4, "si")]) for x in zip(*dec[("arbitrary", 4, "si")][d])]
    again = paired_test([CLASSES[g] for g, _, _ in items], [CLASSES[p] for _, p, _ in items],
                        [CLASSES[p] for _, p, _ in ref], "uar", [utt2spk[q] for *_, q in items], n=1000)
    assert res["vs"]["si"]["diff"] == again["diff"] and res["vs"]["si"]["ci"] == again["ci"]
    lines = "\n".join(_icl_paired_lines(res))
    assert "| icl_k0 (k=0) | +" in lines and "| ncm (k=4) |" in lines and "**significant**" in lines
    assert paired_vs_references(dec, "arbitrary", 4, CLASSES, utt2spk, n=0) is None


def test_icl_on_few_speakers_permutes_queries_with_all_their_draws():
    dec, utt2spk = _decisions(n_spk=3, acc={ICL: 0.6, ICL_K0: 0.6, **{m: 0.6 for m in BASELINE_METHODS}})
    res = paired_vs_references(dec, "arbitrary", 4, CLASSES, utt2spk, n=500)
    row = res["vs"][ICL_K0]
    assert row["resample"] == "utterance" and "3 speakers" in row["note"] and "ci" not in row
    assert "(u)" in "\n".join(_icl_paired_lines(res))
    items = [x for d in sorted(dec[("arbitrary", 4, ICL)]) for x in zip(*dec[("arbitrary", 4, ICL)][d])]
    k0 = [x for d in sorted(dec[("arbitrary", 4, ICL_K0)]) for x in zip(*dec[("arbitrary", 4, ICL_K0)][d])]
    by_query = approximate_randomization([CLASSES[g] for g, _, _ in items], [CLASSES[p] for _, p, _ in items],
                                         [CLASSES[p] for _, p, _ in k0], "uar", groups=[q for *_, q in items],
                                         n_perm=500)
    assert row["p"] == by_query["p"]  # a query's draws swap together, not as independent items
