"""Stage 10: concept-token conditions do what their names say, the condition figures mean what they claim,
and the task evaluates every condition x decision of a tiny ALM end to end into results the report reads."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sertk.common.protocol import Split
from sertk.eval.report import write_report
from sertk.features import concept_tokens as ct
from sertk.tasks import TaskContext, check_config
from sertk.tasks.concept_alm import (CONDITIONS, UNPARSED, condition_figures, condition_tokens, entropy_bits,
                                     evaluate, neutral_figures)

LEVELS = ["low", "mid", "high"]
ROOT = Path(__file__).resolve().parent.parent


def _tokens(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return [{c: LEVELS[int(rng.integers(3))] for c in ct.CONCEPTS} for _ in range(n)]


def test_shuffled_gives_other_utterances_tokens_and_keeps_each_concepts_multiset():
    toks = _tokens()
    out = condition_tokens("shuffled", toks, LEVELS, seed=0)
    assert out != toks
    for c in ct.CONCEPTS:
        assert Counter(t[c] for t in out) == Counter(t[c] for t in toks)
    # every row is some other row's tokens
    assert all(o in toks for o in out)
    assert sum(o is t for o, t in zip(out, toks)) == 0


def test_permuted_keeps_each_utterances_levels_but_moves_them_across_slots():
    toks = _tokens()
    out = condition_tokens("permuted", toks, LEVELS, seed=0)
    for o, t in zip(out, toks):
        assert list(o) == list(t) and sorted(o.values()) == sorted(t.values())
    assert sum(o != t for o, t in zip(out, toks)) > len(toks) // 2


def test_conflicting_changes_every_slot_of_every_utterance():
    toks = _tokens()
    out = condition_tokens("conflicting", toks, LEVELS, seed=0)
    flip = {"low": ["high"], "high": ["low"], "mid": ["low", "high"]}
    assert all(o[c] in flip[t[c]] for o, t in zip(out, toks) for c in ct.CONCEPTS)
    assert condition_tokens("conflicting", toks, LEVELS, seed=0) == out  # seeded


def test_the_removed_conflict_mid_key_is_refused_by_name():
    cfg = {"task": "concept_alm", "model": {"name_or_path": "x"}, "perturb": {"seed": 0, "conflict_mid": "keep"}}
    with pytest.raises(ValueError, match="conflict_mid.*every slot"):
        check_config(cfg, "cfg")


def test_corrupted_differs_from_aligned_and_nonsense_uses_no_level():
    toks = _tokens()
    out = condition_tokens("corrupted", toks, LEVELS, seed=0)
    assert out != toks and all(set(o.values()) <= set(LEVELS) for o in out)
    changed = np.mean([o[c] != t[c] for o, t in zip(out, toks) for c in ct.CONCEPTS])
    assert 0.5 < changed < 0.85  # about 2/3 of random levels differ from the true one
    assert condition_tokens("corrupted", toks, LEVELS, seed=0) == out  # seeded
    assert condition_tokens("corrupted", toks, LEVELS, seed=1) != out
    nonsense = condition_tokens("corrupted_nonsense", toks, LEVELS, seed=0)
    assert all(v in ct.NONSENSE_LEVELS and v not in LEVELS for o in nonsense for v in o.values())
    assert condition_tokens("none", toks, LEVELS, 0) is None and condition_tokens("aligned", toks, LEVELS, 0) == toks


def test_condition_figures():
    labels = ["neutral", "happy", "angry", "sad"]
    gold = ["neutral", "happy", "angry", "sad"] * 5
    pred = {"none": list(gold), "aligned": list(gold),
            "conflicting": ["neutral"] * 10 + gold[10:]}  # half the utterances pushed to neutral
    figs = condition_figures(pred, gold, labels, "neutral", n_boot=50)
    c = figs["conflicting"]
    assert c["neutral_share"] == pytest.approx(sum(p == "neutral" for p in pred["conflicting"]) / 20)
    moved = sum(1 for g in gold[:10] if g != "neutral") / 20
    assert c["neutral_error_mass"] == pytest.approx(moved)
    assert c["neutral_mass_moved_vs_aligned"] == pytest.approx(moved)
    assert c["duar_vs_aligned"] == pytest.approx(c["uar"] - 1.0) and c["uar"] < 1.0
    assert c["agreement_with_none"] == pytest.approx(np.mean([a == b for a, b in zip(pred["conflicting"], gold)]))
    assert figs["aligned"]["prediction_entropy_bits"] == pytest.approx(2.0)
    assert len(c["uar_ci"]) == 2 and c["uar_ci"][0] <= c["uar"] <= c["uar_ci"][1]
    assert entropy_bits(["happy"] * 7, labels) == 0.0
    # each condition is tested against aligned and none on the same utterances, Holm over the 4 tests
    # (conflicting vs aligned / none, aligned vs none, none vs aligned); no speakers given: utterances permuted
    assert c["paired_vs_aligned"]["diff"] == pytest.approx(c["duar_vs_aligned"])
    assert c["paired_vs_aligned"]["resample"] == "utterance" and "these utterances only" in c["paired_vs_aligned"]["note"]
    assert figs["aligned"]["paired_vs_none"]["p"] == 1.0            # identical predictions
    assert c["p_vs_aligned_holm"] >= c["paired_vs_aligned"]["p"]
    spk = [f"s{i % 6}" for i in range(20)]
    by_spk = condition_figures(pred, gold, labels, "neutral", n_boot=200, speakers=spk)["conflicting"]
    assert by_spk["paired_vs_aligned"]["resample"] == "speaker" and by_spk["ci_method"] == "speaker_bootstrap"


def test_unparsed_answers_are_errors_in_their_own_column():
    labels = ["neutral", "sad"]
    gold = ["neutral", "sad", "sad", "neutral"]
    figs = condition_figures({"none": ["neutral", UNPARSED, "sad", UNPARSED]}, gold, labels, "neutral", 0)
    m = figs["none"]
    assert m["unparsed"] == 2 and m["unparsed_rate"] == 0.5 and m["uar"] == pytest.approx(0.5)
    assert np.asarray(m["confusion"]).shape == (3, 3)
    assert neutral_figures(m["confusion"], labels + [UNPARSED], None) == {}


def test_recipe_configs_dry_run():
    from sertk.common.config import load_yaml

    for p in [ROOT / "egs/mini_emo/conf/tokens_alm.yaml", *sorted(ROOT.glob("egs/*/conf/tokens_*.yaml"))]:
        check_config(load_yaml(p), str(p))
    bad = load_yaml(ROOT / "egs/mini_emo/conf/tokens_alm.yaml")
    bad["conditions"] = ["aligned", "reversed"]
    with pytest.raises(ValueError, match="reversed"):
        check_config(bad, "x")


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """A 16-utterance test set, its stage-2 tokens and a tiny (untrained) Qwen2-Audio saved as a local model."""
    from test_generative_alm import tiny_qwen2_audio

    root = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(0)
    data = root / "data" / "test"
    data.mkdir(parents=True)
    labels = ["neutral", "happy", "angry", "sad"]
    utts = [f"s{i % 4}-{i:03d}" for i in range(16)]
    utts.sort()
    rows = {"wav.scp": [], "utt2spk": [], "utt2emo": []}
    for i, u in enumerate(utts):
        wav = root / "audio" / f"{u}.wav"
        wav.parent.mkdir(exist_ok=True)
        sf.write(wav, (0.1 * rng.standard_normal(8000 + 800 * i)).astype(np.float32), 16000)
        rows["wav.scp"].append(f"{u} {wav}")
        rows["utt2spk"].append(f"{u} {u.split('-')[0]}")
        rows["utt2emo"].append(f"{u} {labels[i % 4]}")
    for name, lines in rows.items():
        (data / name).write_text("\n".join(lines) + "\n")
    spk = {}
    for u in utts:
        spk.setdefault(u.split("-")[0], []).append(u)
    (data / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk.items())))
    toks = root / "dump" / "tokens" / "p"
    ct.write_utt2tokens(toks / "test" / "utt2tokens", dict(zip(utts, _tokens(len(utts)))))
    (toks / "thresholds.json").write_text(json.dumps({"levels": LEVELS}))
    (root / "labels.yaml").write_text("name: four\nlabels: [neutral, happy, angry, sad]\n")
    torch.manual_seed(0)
    model, proc = tiny_qwen2_audio()
    model.save_pretrained(root / "alm")
    proc.save_pretrained(root / "alm")
    return root


def test_every_condition_and_decision_is_evaluated_and_reported(tiny_recipe, tmp_path):
    root = tiny_recipe
    cfg = {"task": "concept_alm", "model": {"name_or_path": str(root / "alm"), "device": "cpu"},
           "prompt": {"instruction": "which emotion? {labels}.", "candidate_suffix": "<|im_end|>"},
           "neutral": "neutral", "data": {"batch_size": 5}, "generation": {"max_new_tokens": 2},
           "eval": {"bootstrap": 20}}
    check_config(cfg, "cfg")
    split = Split(corpus="toy", protocol="p", scheme="held-out", train="test", dev=None, tests=["test"],
                  label_map=str(root / "labels.yaml"))
    ctx = TaskContext(data=root / "data", dump=root / "dump", expdir=tmp_path / "exp" / "tokens_alm" / "p",
                      name="tokens_alm", stage=10)
    paths = evaluate(cfg, split, ctx)
    assert len(paths) == len(CONDITIONS) * 2
    recs = {(json.loads(p.read_text())["extra"]["condition"], json.loads(p.read_text())["extra"]["decision"]):
            json.loads(p.read_text()) for p in paths}
    for (cond, dec), r in recs.items():
        m = r["metrics"]
        assert r["stage"] == 10 and m["n"] == 16 and 0 <= m["uar"] <= 1
        assert (cond == "aligned") == ("duar_vs_aligned" not in m)
        assert (cond == "none") == ("agreement_with_none" not in m)
    exp = ctx.expdir / "eval" / "test"
    assert (exp / "aligned" / "scoring" / "confusion.png").is_file()
    # the changed-token figures: utterances with any changed token, and (utterance, concept) slots apart
    assert recs[("conflicting", "scoring")]["metrics"]["tokens_changed"] == 1.0
    assert recs[("conflicting", "scoring")]["metrics"]["token_slots_changed"] == 1.0
    perm = recs[("permuted", "scoring")]["metrics"]
    assert 0 < perm["token_slots_changed"] < perm["tokens_changed"] <= 1.0
    assert recs[("none", "scoring")]["metrics"]["tokens_changed"] is None
    assert (exp / "corrupted" / "generation" / "answers.txt").is_file()
    # the scoring decision is the argmax of the recorded answer log-probabilities
    scores = [ln.split() for ln in (exp / "none" / "scoring" / "scores.txt").read_text().splitlines()[1:]]
    preds = dict(ln.split() for ln in (exp / "none" / "scoring" / "predictions.txt").read_text().splitlines())
    labels = ["neutral", "happy", "angry", "sad"]
    assert all(preds[s[0]] == labels[int(np.argmax([float(v) for v in s[1:]]))] for s in scores)
    # the prompts carried the perturbed tokens: shuffled rows are other rows' aligned tokens
    aligned = ct.read_utt2tokens(exp / "aligned" / "utt2tokens")
    shuffled = ct.read_utt2tokens(exp / "shuffled" / "utt2tokens")
    assert all(shuffled[u] in aligned.values() for u in shuffled) and shuffled != aligned
    text = write_report(tmp_path / "exp", tmp_path / "RESULTS.md")
    assert "Concept-token conditions" in text and "corrupted_nonsense" in text
