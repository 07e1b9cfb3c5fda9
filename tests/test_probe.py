"""Linear probe: learns audible classes from a frozen random encoder, writes its results, reuses the cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from sertk.common.protocol import Split
from sertk.data.datadir import DataDir
from sertk.features import embedding_cache
from sertk.tasks import TaskContext, check_config, get_task
from sertk.tasks import probe

CLASSES = ["neutral", "angry", "sad"]
PITCH = {"neutral": 180.0, "angry": 420.0, "sad": 110.0}
ENC = {"type": "wav2vec2", "layer": 2, "config": {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "layer",
    "do_stable_layer_norm": True, "mask_time_prob": 0.0}}


def _cfg(**model):
    return {"task": "probe", "baseline": True,
            "model": {"encoder": dict(ENC), "pooling": "mean+std", "C": 1.0, **model},
            "data": {"max_duration": 1.0, "cache_batch_size": 8}, "eval": {"bootstrap": 50}}


def _write_set(root, name, n_per_class, seed, sr=16000):
    """Harmonic tones whose pitch (and loudness) tells the class, with jitter and noise per utterance."""
    rng = np.random.default_rng(seed)
    wav_scp, u2s, u2e = {}, {}, {}
    for cls in CLASSES:
        for i in range(n_per_class):
            utt = f"{name}_s{i % 2}_{cls}_{i}"
            t = np.arange(int((0.3 + 0.1 * rng.random()) * sr)) / sr
            f0 = PITCH[cls] * (1 + 0.05 * rng.standard_normal())
            wav = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3))
            wav = 0.2 * (1.5 if cls == "angry" else 1.0) * wav + 0.02 * rng.standard_normal(t.size)
            path = root / "audio" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wav.astype(np.float32), sr)
            wav_scp[utt], u2s[utt], u2e[utt] = str(path), f"{name}_s{i % 2}", cls
    DataDir(tables={"wav.scp": wav_scp, "utt2spk": u2s, "utt2emo": u2e}).write(root / "data" / name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_corpus")
    for name, n, seed in (("toy_train", 8, 0), ("toy_dev", 4, 1), ("toy_test", 6, 2)):
        _write_set(root, name, n, seed)
    (root / "labels.yaml").write_text(yaml.safe_dump({"name": "three", "labels": CLASSES}))
    return root


def _split(root):
    return Split(corpus="toy", protocol="p", scheme="speaker-independent", train="toy_train", dev="toy_dev",
                 tests=["toy_test"], label_map=str(root / "labels.yaml"))


def _ctx(root, exp):
    return TaskContext(data=root / "data", dump=root / "dump", expdir=exp, name="probe_l2", stage=4)


def _cache_entries(root):
    return sorted(p.parent.name for p in (root / "dump" / "encoder_feats").glob("*/toy_train"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One probe trained and evaluated, plus the encoder it ran and that encoder's weights beforehand."""
    cfg, ctx = _cfg(), _ctx(corpus, tmp_path_factory.mktemp("exp") / "p")
    built = []

    def spy(*args, **kw):
        encoder, digest = embedding_cache.frozen_encoder(*args, **kw)
        built.append((encoder, {k: v.clone() for k, v in encoder.state_dict().items()}))
        return encoder, digest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "frozen_encoder", spy)
        probe.train(cfg, _split(corpus), ctx)
        written = probe.evaluate(cfg, _split(corpus), ctx)
    return cfg, ctx, written, built


def test_probe_separates_classes_on_held_out_speech(trained):
    cfg, ctx, written, _ = trained
    assert [p.parent.name for p in written] == ["toy_test"]
    rec = json.loads(written[0].read_text())
    assert rec["task"] == "classification" and rec["labels"] == CLASSES
    assert rec["metrics"]["uar"] >= 0.8, rec["metrics"]  # chance is 1/3
    lo, hi = rec["metrics"]["uar_ci"]
    assert lo <= rec["metrics"]["uar"] <= hi
    assert rec["extra"]["encoder"] == "wav2vec2" and rec["extra"]["layer"] == 2
    assert rec["extra"]["baseline"] is True and rec["protocol"]["test"] == "toy_test"
    info = yaml.safe_load((ctx.expdir / "model.yaml").read_text())
    assert info["task"] == "probe" and info["layer"] == 2 and info["pooling"] == "mean+std"
    assert info["labels"] == CLASSES and info["feature_dim"] == 64 and info["dev_uar"] >= 0.8
    assert info["encoder"]["config"] == ENC["config"] and info["encoder"]["freeze"] is True
    z = np.load(ctx.expdir / "model.npz", allow_pickle=False)
    assert {"mean", "scale", "coef", "intercept", "classes", "labels"} <= set(z.files)


def test_predictions_and_posteriors_agree(trained):
    _, ctx, _, _ = trained
    out = ctx.expdir / "eval" / "toy_test"
    pred = dict(line.split() for line in (out / "predictions.txt").read_text().splitlines())
    lines = (out / "scores.txt").read_text().splitlines()
    assert lines[0].split()[2:] == CLASSES
    rows = {u: np.array([float(v) for v in rest]) for u, *rest in (ln.split() for ln in lines[1:])}
    assert rows.keys() == pred.keys() and len(pred) == 6 * len(CLASSES)
    for u, p in rows.items():
        assert p.sum() == pytest.approx(1.0, abs=1e-4) and CLASSES[int(p.argmax())] == pred[u]


def test_encoder_stays_frozen_and_is_seeded(trained):
    _, ctx, _, built = trained
    assert len(built) == 2  # train and evaluate each build it once
    for encoder, before in built:
        assert not any(p.requires_grad for p in encoder.parameters())
        assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(torch.equal(built[0][1][k], built[1][1][k]) for k in built[0][1])
    info = yaml.safe_load((ctx.expdir / "model.yaml").read_text())
    assert info["encoder_weights_sha256"] == embedding_cache.state_digest(built[0][0])


def test_second_train_reuses_cache_and_another_layer_gets_its_own(trained, corpus, tmp_path, monkeypatch):
    _, ctx, _, _ = trained
    first = _cache_entries(corpus)
    assert len(first) == 1

    def boom(*a, **k):
        raise AssertionError("the encoder ran although its features are cached")

    monkeypatch.setattr(embedding_cache, "compute_features", boom)
    again = _ctx(corpus, tmp_path / "again")
    probe.train(_cfg(C=0.1), _split(corpus), again)  # another C: same features
    probe.evaluate(_cfg(C=0.1), _split(corpus), again)
    assert _cache_entries(corpus) == first
    monkeypatch.undo()
    probe.train(_cfg(encoder={**ENC, "layer": 1}), _split(corpus), _ctx(corpus, tmp_path / "l1"))
    entries = _cache_entries(corpus)
    assert len(entries) == 2 and set(first) < set(entries)


def test_config_checks():
    assert get_task("probe") is probe
    check_config(_cfg(), "probe.yaml")
    check_config(_cfg(encoder={"name_or_path": "zoo/not-built-yet", "layer": 2}), "probe.yaml")  # never fetched
    for bad, match in (({"Cee": 1}, "Cee"), ({"pooling": "max"}, "pooling"),
                       ({"encoder": {**ENC, "freeze": False}}, "freeze"),
                       ({"encoder": {**ENC, "layer": 7}}, "layer"), ({"encoder": {"layer": 1}}, "name_or_path")):
        with pytest.raises(ValueError, match=match):
            check_config(_cfg(**bad), "probe.yaml")
    with pytest.raises(ValueError, match="data"):
        check_config({**_cfg(), "data": {"cache": False}}, "probe.yaml")


def test_probe_on_the_real_whisper_tiny_en(corpus, whisper_tiny_en, tmp_path):
    """A Whisper checkpoint dir probed at a middle layer (clip window): its features separate the classes,
    and results name the encoder, layer and window."""
    enc = {"name_or_path": str(whisper_tiny_en), "layer": 2, "window": "clip"}
    cfg = _cfg(encoder=enc)
    check_config(cfg, "probe_whisper.yaml")
    ctx = _ctx(corpus, tmp_path / "p")
    probe.train(cfg, _split(corpus), ctx)
    [path] = probe.evaluate(cfg, _split(corpus), ctx)
    rec = json.loads(path.read_text())
    assert rec["metrics"]["uar"] >= 0.8, rec["metrics"]  # chance is 1/3
    assert rec["extra"]["encoder"] == str(whisper_tiny_en) and rec["extra"]["layer"] == 2
    assert rec["extra"]["window"] == "clip"
    info = yaml.safe_load((ctx.expdir / "model.yaml").read_text())
    assert info["feature_dim"] == 2 * 384 and info["encoder"] == {**enc, "freeze": True}
    with pytest.raises(ValueError, match=r"layer 5 does not exist \(it has layers 0\.\.4"):
        probe.train(_cfg(encoder={**enc, "layer": 5}), _split(corpus), _ctx(corpus, tmp_path / "l5"))
