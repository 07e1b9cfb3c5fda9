"""ZS-Fuse prompt amplification as the paper defines it (the audio and the whole text query repeated N
times), the dev choice of N for fusion, and batch-independent feature-fusion CLAP embeddings."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import ClapModel, ClapProcessor

from sertk.common.protocol import Split
from sertk.eval.metrics import classification_metrics
from sertk.models import clap_zeroshot
from sertk.models.clap_zeroshot import ClapZeroShot, PromptSet, class_logits
from sertk.tasks import TaskContext, check_config, zsfuse
from sertk.zoo.clap import clap_config, feature_extractor, train_tokenizer

from test_zsfuse import ENTRY, LABELS, PROMPTS, _write_set


def _save_clap(d, entry, fusion=False):
    torch.manual_seed(0)
    lines = [t.format(s) for t in PROMPTS["templates"] for v in PROMPTS["classes"].values() for s in v]
    tok = train_tokenizer(lines * 3, 300, 1)
    ClapModel(clap_config(entry, len(tok))).eval().save_pretrained(d)
    fe = feature_extractor(entry)
    if fusion:
        fe.truncation = "fusion"
    ClapProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return _save_clap(tmp_path_factory.mktemp("clap_amp"), ENTRY)


@pytest.fixture(scope="module")
def fusion_dir(tmp_path_factory):
    """A feature-fusion CLAP (LAION's ``truncation: fusion`` checkpoints): the extractor's 64 mels."""
    entry = copy.deepcopy(ENTRY)
    entry["config"]["audio"].update(spec_size=64, num_mel_bins=64, enable_fusion=True)
    entry["features"]["feature_size"] = 64
    return _save_clap(tmp_path_factory.mktemp("clap_fusion"), entry, fusion=True)


def _ref_audio(d, pieces_per_clip):
    """Hand-computed: the extractor's features of each piece, the model's normalised embedding of each,
    their mean re-normalised."""
    model, fe = ClapModel.from_pretrained(d).eval(), ClapProcessor.from_pretrained(d).feature_extractor
    out = []
    with torch.no_grad():
        for pieces in pieces_per_clip:
            feats = fe(pieces, sampling_rate=16000, return_tensors="pt")["input_features"]
            e = model.get_audio_features(input_features=feats).pooler_output.numpy().astype(np.float64).mean(0)
            out.append(e / np.linalg.norm(e))
    return np.stack(out)


def test_audio_amplification_embeds_every_window_of_n_copies_of_the_query(clap_dir):
    """N copies of what the window holds at N = 1 (repeat padding's copies included), window by window."""
    zs = ClapZeroShot(str(clap_dir), device="cpu")  # the zoo's repeatpad: whole copies that fit, then zeros
    w = zs.front.window  # 1 s at 16 kHz
    rng = np.random.default_rng(3)
    clip = (0.1 * rng.standard_normal(int(0.7 * w))).astype(np.float32)
    three = np.concatenate([clip, clip, clip])  # 2.1 windows: the model must hear all of it
    pieces = [three[:w], three[w:2 * w], np.pad(three[2 * w:], (0, 3 * w - len(three)))]
    np.testing.assert_allclose(zs.audio_embeddings([clip], amplify=3), _ref_audio(clap_dir, [pieces]), atol=1e-4)
    short = clip[:int(0.3 * w)]  # at N = 1 the window holds 3 copies and zeros; at N = 2, 6 copies
    six = np.concatenate([short] * 6)
    pieces = [six[:w], np.pad(six[w:], (0, 2 * w - len(six)))]
    np.testing.assert_allclose(zs.audio_embeddings([short], amplify=2), _ref_audio(clap_dir, [pieces]), atol=1e-4)
    assert [len(p) for p in clap_zeroshot.query_windows(short, 2, w, "repeatpad")] == [w, w]
    # zero padding: 2 copies of the clip in one window, then zeros
    zp = ClapZeroShot(str(clap_dir), padding="pad", device="cpu")
    two = np.pad(np.concatenate([short, short]), (0, w - 2 * len(short)))
    np.testing.assert_allclose(zp.audio_embeddings([short], amplify=2), _ref_audio(clap_dir, [[two]]), atol=1e-4)
    # a clip longer than the window is cropped the same way for every N: its N copies are N equal windows
    long = (0.1 * rng.standard_normal(int(1.5 * w))).astype(np.float32)
    np.testing.assert_allclose(zs.audio_embeddings([long], amplify=3), zs.audio_embeddings([long]), atol=1e-6)
    np.testing.assert_allclose(zs.audio_embeddings([clip, long], amplify=1, batch_size=1),
                               zs.audio_embeddings([clip, long], amplify=1, batch_size=2), atol=1e-5)
    assert zs.spec(2)["front"] == "clap_zeroshot/3"  # the embeddings changed meaning: no stale cache is read


def test_text_amplification_repeats_the_whole_prompt_by_default(clap_dir):
    zs = ClapZeroShot(str(clap_dir), device="cpu")
    model, tok = ClapModel.from_pretrained(clap_dir).eval(), ClapProcessor.from_pretrained(clap_dir).tokenizer
    prompts = PromptSet.build(PROMPTS["templates"], PROMPTS["classes"], LABELS)
    assert prompts.prompts("sad", "single", 3) == ["the speaker sounds sad the speaker sounds sad "
                                                   "the speaker sounds sad"]
    assert prompts.prompts("sad", "single", 2, "word") == ["the speaker sounds sad sad"]  # the ablation
    audio = zs.audio_embeddings([np.random.default_rng(0).standard_normal(9000).astype(np.float32) * 0.1])
    got = class_logits(audio, zs.text_embeddings, prompts, LABELS, "single", text_amplify=2)
    with torch.no_grad():
        for c, label in enumerate(LABELS):
            q = f"the speaker sounds {PROMPTS['classes'][label][0]}"
            t = model.get_text_features(**tok([f"{q} {q}"], return_tensors="pt")).pooler_output.numpy()[0]
            assert got[0, c] == pytest.approx(float(audio[0] @ t), abs=1e-5)


def test_fusion_checkpoint_embeddings_do_not_depend_on_the_batch(fusion_dir):
    """A feature-fusion CLAP's extractor marks a random clip of an all-short batch as long; a cached
    per-utterance embedding must be the same whatever batch computed it."""
    zs = ClapZeroShot(str(fusion_dir), device="cpu")
    w = zs.front.window
    rng = np.random.default_rng(7)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (int(0.4 * w), int(0.8 * w),
                                                                        int(2.5 * w), int(3.2 * w))]
    alone = np.concatenate([zs.audio_embeddings([c]) for c in clips])
    together = zs.audio_embeddings(clips, batch_size=4)
    shorts = zs.audio_embeddings(clips[:2], batch_size=2)
    reordered = zs.audio_embeddings(clips[::-1], batch_size=4)[::-1]
    for other in (together, reordered):
        np.testing.assert_allclose(other, alone, atol=1e-5)
    np.testing.assert_allclose(shorts, alone[:2], atol=1e-5)
    # a short clip is not long: the plain (unfused) path, as the extractor's features with is_longer False
    model = ClapModel.from_pretrained(fusion_dir).eval()
    fe = ClapProcessor.from_pretrained(fusion_dir).feature_extractor
    with torch.no_grad():
        feats = fe([clips[0].astype(np.float64)], sampling_rate=16000, return_tensors="pt")["input_features"]
        want = model.get_audio_features(input_features=feats, is_longer=torch.tensor([[False]])).pooler_output
    np.testing.assert_allclose(alone[0], want.numpy()[0], atol=1e-5)


def test_each_alm_enters_fusion_at_the_n_with_the_best_dev_uar(clap_dir, tmp_path):
    for name, n, seed in (("dv", 4, 1), ("te", 3, 2)):
        _write_set(tmp_path, name, n, seed)
    cfg = {"task": "zsfuse", "alms": {"c1": {"name_or_path": str(clap_dir)},
                                      "c2": {"name_or_path": str(clap_dir), "padding": "pad"}},
           "prompts": PROMPTS, "zero_shot": {"amplify": [1, 2, 3], "normalize": "center"},
           "fms": {"f1": {"encoder": {"type": "wav2vec2"}}}}
    check_config(cfg, "t")
    for bad in ("best", 0, True):
        with pytest.raises(ValueError, match="amplify_in_fusion"):
            check_config({**cfg, "zero_shot": {"amplify_in_fusion": bad}}, "t")
    split = Split(corpus="toy", protocol="p", scheme="si", train="dv", dev="dv", tests=["te"],
                  label_map="unused")
    ctx = TaskContext(data=tmp_path / "data", dump=tmp_path / "dump", expdir=tmp_path / "exp", name="z", stage=9)
    from sertk.data.datadir import DataDir
    d = DataDir.read(tmp_path / "data" / "dv")
    y = np.array([LABELS.index(d.utt2emo[u]) for u in d.utts])
    rows, chosen, at_one = zsfuse._alm_systems(cfg, split, ctx, LABELS, "dv", y)
    for alm in ("c1", "c2"):
        by_n = {1: next(r for r in rows if r.name == f"{alm}: ensemble (embedding)")}
        by_n.update({n: next(r for r in rows if r.name == f"{alm}: ensemble (embedding) + amplify x{n}")
                     for n in (2, 3)})
        uar = {n: classification_metrics([LABELS[i] for i in y], [LABELS[i] for i in r.dev.argmax(1)],
                                         LABELS)["uar"] for n, r in by_n.items()}
        best = min(n for n in uar if uar[n] == max(uar.values()))
        assert chosen[alm].info["amplify_in_fusion"] == best
        np.testing.assert_array_equal(chosen[alm].test["te"], by_n[best].test["te"])
        np.testing.assert_array_equal(at_one[alm].dev, by_n[1].dev)
    # dev labels that N = 3 gets right (the random CLAP is no emotion model): N = 3 is chosen, the x1 row stays
    r3 = next(r for r in rows if r.name == "c1: ensemble (embedding) + amplify x3")
    y3 = r3.dev.argmax(1)
    assert not np.array_equal(y3, at_one["c1"].dev.argmax(1))
    _, chosen_y3, at_one_y3 = zsfuse._alm_systems(cfg, split, ctx, LABELS, "dv", y3)
    assert chosen_y3["c1"].info["amplify_in_fusion"] == 3 and chosen_y3["c1"].name == r3.name
    np.testing.assert_array_equal(at_one_y3["c1"].dev, at_one["c1"].dev)
    fixed = {**cfg, "zero_shot": {**cfg["zero_shot"], "amplify_in_fusion": 3}}
    _, chosen3, _ = zsfuse._alm_systems(fixed, split, ctx, LABELS, "dv", np.zeros_like(y))
    assert chosen3["c1"].name == "c1: ensemble (embedding) + amplify x3"
    assert chosen3["c1"].info["amplify_chosen_on"] == "config"
