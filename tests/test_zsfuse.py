"""ZS-Fuse (stage 9): zero-shot CLAP scores, prompt ensembles and amplification, late fusion, the task."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from transformers import ClapModel, ClapProcessor

from sertk.common.protocol import Split
from sertk.data.datadir import DataDir
from sertk.fusion.late_fusion import (calibrate_temperature, dev_weights, fuse, fuse_label_free, log_softmax,
                                      simplex_grid)
from sertk.models.clap_zeroshot import (ClapFrontEnd, ClapZeroShot, PromptSet, amplify_audio, amplify_text,
                                        class_logits)
from sertk.tasks import TaskContext, check_config, zsfuse
from sertk.zoo.clap import clap_config, feature_extractor, train_tokenizer

from zoo_fixtures import TINY_WHISPER

LABELS = ["neutral", "angry", "sad"]
ENTRY = {"config": {"projection_dim": 16, "logit_scale_init_value": 5.0,
                    "audio": {"spec_size": 32, "num_mel_bins": 16, "patch_size": 4, "patch_stride": [4, 4],
                              "window_size": 4, "depths": [1, 1], "num_attention_heads": [1, 2],
                              "patch_embeds_hidden_size": 8, "hidden_size": 16},
                    "text": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 32, "max_position_embeddings": 34}},
         "features": {"sample_rate": 16000, "feature_size": 16, "hop_length": 512, "fft_window_size": 512,
                      "max_length_s": 1, "frequency_max": 8000}}
PROMPTS = {"templates": ["the speaker sounds {}", "a {} voice"],
           "classes": {"neutral": ["neutral", "calm"], "angry": ["angry", "annoyed"], "sad": ["sad", "gloomy"]}}
TINY_ENC = {"type": "wav2vec2", "layer": 2, "config": {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "layer",
    "do_stable_layer_norm": True, "mask_time_prob": 0.0}}


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A random-init CLAP saved as a hub checkpoint is (model + processor), loaded by path."""
    d = tmp_path_factory.mktemp("clap")
    torch.manual_seed(0)
    lines = [t.format(s) for t in PROMPTS["templates"] for v in PROMPTS["classes"].values() for s in v]
    tok = train_tokenizer(lines * 3, 300, 1)
    ClapModel(clap_config(ENTRY, len(tok))).eval().save_pretrained(d)
    ClapProcessor(feature_extractor=feature_extractor(ENTRY), tokenizer=tok).save_pretrained(d)
    return d


def _wavs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(rng.integers(4000, 24000)))).astype(np.float32) for _ in range(n)]


def test_front_end_equals_the_processor_feature_extractor(clap_dir):
    fe = ClapProcessor.from_pretrained(clap_dir).feature_extractor
    wavs = [w for w in _wavs(6) if len(w) <= fe.nb_max_samples]  # longer clips: the extractor crops at random
    assert len(wavs) >= 2
    ref = np.stack([fe(w, sampling_rate=16000, return_tensors="np")["input_features"][0] for w in wavs])
    got = ClapFrontEnd(fe)(wavs)[0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-3)  # dB; float32 vs the extractor's float64
    long = _wavs(1)[0]
    long = np.concatenate([long] * 3)
    assert ClapFrontEnd(fe).fit(long).shape == (fe.nb_max_samples,)


def test_zero_shot_scores_equal_hand_computed_cosine_times_scale(clap_dir):
    zs = ClapZeroShot(str(clap_dir), device="cpu")
    model, proc = ClapModel.from_pretrained(clap_dir).eval(), ClapProcessor.from_pretrained(clap_dir)
    wavs = [w[:proc.feature_extractor.nb_max_samples] for w in _wavs(5, 1)]
    with torch.no_grad():
        feats = proc.feature_extractor(wavs, sampling_rate=16000, return_tensors="pt")["input_features"]
        a = model.get_audio_features(input_features=feats).pooler_output.numpy().astype(np.float64)
    prompts = PromptSet.build(PROMPTS["templates"], PROMPTS["classes"], LABELS)
    scale = float(model.logit_scale_a.detach().exp())
    audio = zs.audio_embeddings(wavs)
    np.testing.assert_allclose(audio, a, atol=1e-4)
    assert zs.logit_scale == pytest.approx(scale)

    def text(strings):
        with torch.no_grad():
            enc = proc.tokenizer(strings, padding=True, return_tensors="pt")
            return model.get_text_features(**enc).pooler_output.numpy().astype(np.float64)

    for ensemble in ("single", "embedding", "score"):
        got = class_logits(audio, zs.text_embeddings, prompts, LABELS, ensemble, scale=scale, temperature=2.0)
        want = np.zeros((len(wavs), len(LABELS)))
        for c, label in enumerate(LABELS):
            strings = ([f"the speaker sounds {PROMPTS['classes'][label][0]}"] if ensemble == "single" else
                       [t.format(s) for t in PROMPTS["templates"] for s in PROMPTS["classes"][label]])
            t = text(strings)
            cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
            if ensemble == "score":
                want[:, c] = cos.mean(1)
            else:
                m = t.mean(0)
                want[:, c] = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (m / np.linalg.norm(m))
        np.testing.assert_allclose(got, want * scale / 2.0, atol=1e-4)


def test_amplification_by_one_is_the_identity_and_n_repeats_the_query(clap_dir):
    w = _wavs(1)[0]
    assert amplify_audio(w, 1) is w
    np.testing.assert_array_equal(amplify_audio(w, 3), np.concatenate([w, w, w]))
    assert amplify_text("the speaker sounds {}", "angry", 1) == "the speaker sounds angry"
    assert amplify_text("a {} voice", "sad", 2) == "a sad voice a sad voice"  # the paper's: the whole query
    assert amplify_text("a {} voice", "angry", 3, "word") == "a angry angry angry voice"  # an ablation
    prompts = PromptSet.build(PROMPTS["templates"], PROMPTS["classes"], LABELS)
    assert prompts.prompts("sad", "embedding", 1) == [t.format(s) for t in PROMPTS["templates"]
                                                      for s in PROMPTS["classes"]["sad"]]
    zs = ClapZeroShot(str(clap_dir), device="cpu")
    wavs = _wavs(3, 2)
    np.testing.assert_array_equal(zs.audio_embeddings(wavs, amplify=1), zs.audio_embeddings(wavs))
    short = [x[:3000] for x in wavs]
    assert not np.allclose(zs.audio_embeddings(short, amplify=3), zs.audio_embeddings(short, amplify=1))


def test_a_cached_prompt_embedding_does_not_depend_on_what_filled_the_cache(clap_dir, tmp_path):
    """A prompt's stored text embedding is the same bits whether the job that filled the cache asked
    for it alone or beside longer and shorter prompts (padding and batch mates move batched values)."""
    prompt = "the speaker sounds angry"
    others = ["a sad voice", "the speaker sounds calm calm calm calm calm calm calm calm", "a gloomy gloomy voice"]
    alone = ClapZeroShot(str(clap_dir), cache_dir=tmp_path / "alone", device="cpu")
    together = ClapZeroShot(str(clap_dir), cache_dir=tmp_path / "together", device="cpu")
    alone.text_embeddings([prompt])
    together.text_embeddings([others[0], prompt, *others[1:]])
    stored = [ClapZeroShot(str(clap_dir), cache_dir=tmp_path / d, device="cpu")._text[prompt]
              for d in ("alone", "together")]  # what a later job reads from each cache
    np.testing.assert_array_equal(stored[0], stored[1])
    assert stored[0].dtype == np.float32 and stored[0].shape == (16,)
    old = tmp_path / "old" / alone._text_file.name  # a file of the batched format: never read back
    old.parent.mkdir()
    old.write_text(json.dumps({prompt: [0.0] * 16}))
    np.testing.assert_array_equal(ClapZeroShot(str(clap_dir), cache_dir=old.parent, device="cpu")
                                  .text_embeddings([prompt])[0], stored[0])


def test_fusion_with_a_one_hot_weight_equals_that_model_alone():
    rng = np.random.default_rng(0)
    lp = [log_softmax(rng.standard_normal((20, 4)) * s) for s in (1.0, 3.0, 0.5)]
    for domain in ("log", "prob"):
        for m in range(3):
            w = np.eye(3)[m]
            np.testing.assert_allclose(fuse(lp, w, domain), lp[m], atol=1e-9)
    per_utt = np.tile(np.eye(3)[1], (20, 1))
    np.testing.assert_allclose(fuse(lp, per_utt, "log"), lp[1], atol=1e-9)


def test_dev_weights_and_temperature_follow_the_dev_labels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    good = np.eye(3)[y] * 2.0 + 0.3 * rng.standard_normal((60, 3))
    noise = rng.standard_normal((60, 3))
    w = dev_weights([log_softmax(noise), log_softmax(good)], y, "log", 0.1)
    assert w[1] > w[0]
    assert np.isclose(w.sum(), 1.0) and len(simplex_grid(3, 0.5)) == 6
    mixed = np.eye(3)[y] + rng.standard_normal((60, 3))  # some errors: the best temperature is inside the grid
    t1 = calibrate_temperature(mixed, y)
    assert 0.05 < t1 < 20
    assert calibrate_temperature(mixed * 10, y) == pytest.approx(10 * t1, rel=0.1)


def _systems(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 40)

    def sys(name, kind, strength):
        dev = np.eye(3)[y] * strength + rng.standard_normal((40, 3))
        return zsfuse.System(name, kind, dev, {"t": rng.standard_normal((30, 3)) + strength}, {"model": name})
    alms = {"a1": sys("a1", "alm", 1.0), "a2": sys("a2", "alm", 0.2)}
    fms = [sys("f1", "fm", 2.0), sys("f2", "fm", 0.5)]
    return alms, fms, y


def test_label_free_rule_reads_no_labels():
    alms, fms, y = _systems()
    shuffled = np.random.default_rng(5).permutation(y)
    flipped = (y + 1) % 3
    runs = [zsfuse.fusion_systems(alms, fms, labels, ["t"], "log", 0.25, rule) for labels in (y, shuffled, flipped)
            for rule in ("entropy",)]
    free = [[r for r in run if "label-free" in r.name] for run in runs]
    assert len(free[0]) == 2 * 2 + 3  # 4 pairs + ALMs + FMs + all
    for other in free[1:]:
        for a, b in zip(free[0], other):
            np.testing.assert_array_equal(a.test["t"], b.test["t"])
            np.testing.assert_array_equal(a.dev, b.dev)
    dev_rows = [[r for r in run if r.name.endswith("(dev)")] for run in runs]
    assert any(not np.array_equal(a.test["t"], b.test["t"]) for a, b in zip(dev_rows[0], dev_rows[2]))
    # the rule itself takes no labels; equal weights are the plain mean of the log-posteriors
    logits = [alms["a1"].dev, fms[0].dev]
    np.testing.assert_allclose(fuse_label_free(logits, "equal"),
                               (log_softmax(logits[0]) + log_softmax(logits[1])) / 2)


# ------------------------------------------------------------------ task --


def _write_set(root, name, n, seed):
    rng = np.random.default_rng(seed)
    pitch = {"neutral": 180.0, "angry": 420.0, "sad": 110.0}
    tables = {"wav.scp": {}, "utt2spk": {}, "utt2emo": {}}
    for cls in LABELS:
        for i in range(n):
            utt = f"{name}_s{i % 2}_{cls}_{i}"
            t = np.arange(int((0.3 + 0.2 * rng.random()) * 16000)) / 16000
            wav = 0.2 * np.sin(2 * np.pi * pitch[cls] * t) + 0.02 * rng.standard_normal(t.size)
            path = root / "audio" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wav.astype(np.float32), 16000)
            tables["wav.scp"][utt], tables["utt2spk"][utt], tables["utt2emo"][utt] = str(path), f"{name}{i % 2}", cls
    DataDir(tables=tables).write(root / "data" / name)


def test_task_writes_the_ablation_table_and_every_posterior(clap_dir, tmp_path):
    for name, n, seed in (("tr", 6, 0), ("dv", 3, 1), ("te", 3, 2)):
        _write_set(tmp_path, name, n, seed)
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump({"name": "three", "labels": LABELS}))
    cfg = {"task": "zsfuse", "alms": {"c1": {"name_or_path": str(clap_dir)}, "c2": {"name_or_path": str(clap_dir),
                                                                                  "padding": "pad"}},
           "prompts": PROMPTS, "zero_shot": {"amplify": [1, 2], "batch_size": 4},
           "fms": {"f1": {"encoder": TINY_ENC, "pooling": "mean+std"},
                   "f2": {"encoder": {**TINY_WHISPER, "window": "clip", "layer": 1}, "pooling": "mean"}},
           "fm_data": {"max_duration": 1.0, "cache_batch_size": 8}, "fusion": {"weight_step": 0.25},
           "eval": {"bootstrap": 20}}
    check_config(cfg, "zsfuse test")
    with pytest.raises(ValueError, match="amplify_twice"):
        check_config({**cfg, "zero_shot": {"amplify_twice": 2}}, "zsfuse test")
    split = Split(corpus="toy", protocol="p", scheme="speaker-independent", train="tr", dev="dv", tests=["te"],
                  label_map=str(tmp_path / "labels.yaml"))
    ctx = TaskContext(data=tmp_path / "data", dump=tmp_path / "dump", expdir=tmp_path / "exp", name="zsfuse", stage=9)
    [path] = zsfuse.evaluate(cfg, split, ctx)
    res = json.loads(path.read_text())
    rows = {r["system"]: r for r in res["extra"]["ablation"]}
    assert "c1: single prompt" in rows and "c1: ensemble (score)" in rows
    assert "c2: ensemble (embedding) + amplify x2" in rows
    assert "f1: probe" in rows and "fusion ALMs + FMs (label-free)" in rows and "fusion c1 + f2 (dev)" in rows
    assert res["extra"]["system"] == "fusion ALMs + FMs (dev)"
    # the ALMs enter fusion at their dev-chosen N; the same fusions with the ALMs at N = 1 are ablation rows
    members = rows["fusion ALMs + FMs (dev)"]["members"]
    assert {m.split(":")[0] for m in members} == {"c1", "c2", "f1", "f2"}
    assert all(m in rows for m in members)
    assert rows["fusion ALMs + FMs [ALMs x1] (dev)"]["members"][:2] == ["c1: ensemble (embedding)",
                                                                         "c2: ensemble (embedding)"]
    assert "fusion c1 + f2 [ALMs x1] (label-free)" in rows and "fusion FMs [ALMs x1] (dev)" not in rows
    assert res["extra"]["fms"] == {"f1": "wav2vec2", "f2": "whisper"}  # a Whisper FM beside a wav2vec 2.0 one
    assert rows["f2: probe"]["window"] == "clip" and rows["f2: probe"]["layer"] == 1
    assert res["metrics"]["uar"] == pytest.approx(rows["fusion ALMs + FMs (dev)"]["uar"])
    assert all(len(r["uar_ci"]) == 2 and 0 <= r["uar"] <= 1 for r in rows.values())
    assert rows["f1: probe"]["uar"] > 0.5  # the probe hears the pitch classes
    # the headline's claim over the best single FM is a paired test on the same utterances, speakers resampled
    gain = res["extra"]["gain"]
    paired = gain["headline_vs_best_fm_paired"]
    assert paired["diff"] == pytest.approx(rows[res["extra"]["system"]]["uar"] - rows[gain["best_fm_by_dev"]]["uar"],
                                           abs=1e-4)
    assert 0 < paired["p"] <= 1 and paired["speakers"] >= 2
    assert (paired["resample"] == "speaker") == (paired["speakers"] >= 5) and ("note" in paired) != ("ci" in paired)
    assert res["metrics"]["ci_method"] == "speaker_bootstrap" and rows["f1: probe"]["ci_method"] == "speaker_bootstrap"
    posts = sorted(p.name for p in (path.parent / "posteriors").iterdir())
    assert len(posts) == len(rows)
    p = np.loadtxt(path.parent / "posteriors" / "f1_probe.txt", usecols=(1, 2, 3))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
    # audio embeddings are cached: a second evaluation computes no CLAP audio embedding
    calls = []
    from sertk.models import clap_zeroshot
    real = clap_zeroshot.ClapAudioEmbedder.forward

    def spy(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clap_zeroshot.ClapAudioEmbedder, "forward", spy)
        [again] = zsfuse.evaluate(cfg, split, ctx)
    assert not calls
    # scoring through the cache leaves the CLAP in eval mode (BatchNorm, dropout): the same scores as direct calls
    zs = ClapZeroShot(str(clap_dir), device="cpu")
    from sertk.data.dataset import AudioDataset
    from sertk.features.embedding_cache import cached_features
    ds = AudioDataset(tmp_path / "data" / "te", sample_rate=16000, label_map=None, targets=())
    feats = cached_features(tmp_path / "cache", "k", "te", zs.embedder(1), ds)
    assert not zs.model.training
    direct = zs.audio_embeddings([ds[i]["wav"].numpy() for i in range(len(ds))])
    np.testing.assert_allclose(np.stack([feats[u][0].numpy() for u in ds.utts]), direct, atol=1e-5)
    assert json.loads(again.read_text())["metrics"] == res["metrics"]
    # stage 11 prints the ablation table under stage 9
    from sertk.eval.report import write_report
    text = write_report(tmp_path / "exp", tmp_path / "RESULTS.md")
    stage9 = text.split("## Stage 9: ZS-Fuse", 1)[1]
    assert "ZS-Fuse ablation" in stage9 and "| c2: ensemble (embedding) + amplify x2 | alm |" in stage9
    assert "minus best FM by dev UAR" in stage9
