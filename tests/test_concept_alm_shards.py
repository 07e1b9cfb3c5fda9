"""Stage 10 with eval.nj: each test set evaluated in parts, one process each, merged into the results of one job."""
import json

import pytest

from sertk.common.protocol import Split
from sertk.tasks import TaskContext, check_config
from sertk.tasks.concept_alm import evaluate, part_rows

from test_concept_alm import tiny_recipe  # noqa: F401  (the fixture: a test set, its tokens, a tiny Qwen2-Audio)


@pytest.mark.parametrize("n,bs,nj", [(16, 5, 2), (16, 5, 3), (7, 8, 2), (100, 8, 7), (3, 1, 5)])
def test_parts_are_whole_batches_covering_every_utterance_once(n, bs, nj):
    rows = [part_rows(n, bs, nj, j) for j in range(1, nj + 1)]
    assert rows[0][0] == 0 and rows[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))  # contiguous, disjoint
    assert all(lo % bs == 0 and (hi % bs == 0 or hi == n) for lo, hi in rows)  # a single job's batches
    assert part_rows(n, bs, nj, None) == (0, n)


def _run(root, exp, nj):
    cfg = {"task": "concept_alm", "model": {"name_or_path": str(root / "alm"), "device": "cpu"},
           "prompt": {"instruction": "which emotion? {labels}.", "candidate_suffix": "<|im_end|>"},
           "neutral": "neutral", "data": {"batch_size": 5}, "generation": {"max_new_tokens": 2},
           "conditions": ["none", "aligned", "shuffled", "conflicting"], "eval": {"bootstrap": 20, "nj": nj}}
    check_config(cfg, "cfg")
    split = Split(corpus="toy", protocol="p", scheme="held-out", train="test", dev=None, tests=["test"],
                  label_map=str(root / "labels.yaml"))
    ctx = TaskContext(data=root / "data", dump=root / "dump", expdir=exp / "tokens_alm" / "p", name="tokens_alm",
                      stage=10)
    return ctx.expdir, evaluate(cfg, split, ctx)


def test_two_part_jobs_merge_into_the_results_of_one_job(tiny_recipe, tmp_path):  # noqa: F811
    one, paths1 = _run(tiny_recipe, tmp_path / "nj1", 1)
    two, paths2 = _run(tiny_recipe, tmp_path / "nj2", 2)
    assert [p.relative_to(one) for p in paths1] == [p.relative_to(two) for p in paths2] and len(paths1) == 8
    # both part processes ran, each on its own whole batches (16 utterances, batch 5: 10 + 6)
    parts = [json.loads((two / "eval" / "parts" / f"test.{j}.json").read_text()) for j in (1, 2)]
    assert [len(p["utts"]) for p in parts] == [10, 6]
    for p1, p2 in zip(paths1, paths2):
        r1, r2 = json.loads(p1.read_text()), json.loads(p2.read_text())
        assert r1["metrics"] == r2["metrics"] and r1["extra"] == r2["extra"]
        for name in ("predictions.txt", "scores.txt", "answers.txt"):
            if (p1.parent / name).is_file():
                assert (p1.parent / name).read_bytes() == (p2.parent / name).read_bytes(), (p1, name)
    for cond in ("aligned", "shuffled", "conflicting"):  # the perturbation is drawn over the whole set
        assert (one / "eval/test" / cond / "utt2tokens").read_text() == \
            (two / "eval/test" / cond / "utt2tokens").read_text()


def test_sharding_settings_are_checked():
    base = {"task": "concept_alm", "model": {"name_or_path": "x"}}
    for ev, msg in (({"nj": 0}, "eval.nj"), ({"nj": 2, "job": 3}, "eval.job"), ({"backend": "pbs"}, "eval.backend"),
                    ({"jobs": 2}, "jobs")):
        with pytest.raises(ValueError, match=msg):
            check_config({**base, "eval": ev}, "cfg")
