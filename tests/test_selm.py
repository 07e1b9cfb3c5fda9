"""SELM: loss masking, batched class scoring, feature cache, frozen encoder, save/load, task end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_model

from sertk.common.protocol import Split
from sertk.data.audio import write_audio
from sertk.data.datadir import DataDir
from sertk.features.embedding_cache import cache_key, encoder_batch, store_name
from sertk.models.selm import SELM, build_lm, encode_example
from sertk.models.text_tokenizer import SentencePieceTokenizer, load_tokenizer
from sertk.models.views import make_views, map_gold, view_values
from sertk.tasks import TaskContext, check_config
from sertk.tasks import selm as task
from sertk.train.inference import resolve_device
from sertk.train.trainer import Trainer

from zoo_fixtures import TINY_WHISPER

CLASSES = ["neutral", "happy", "angry", "sad"]
ENC = {"type": "wav2vec2", "layer": 1, "config": {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "layer",
    "do_stable_layer_norm": True, "mask_time_prob": 0.0, "hidden_dropout": 0.1}}
WHISPER = {**TINY_WHISPER, "window": "clip", "layer": 2}  # a local Whisper encoder, its clip window
LM = {"mode": "full", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
                                 "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}
PREFIX = {"length": 3, "proj_hidden": 32, "mapper_layers": 1, "mapper_heads": 2, "dropout": 0.0}


def _cfg(**over):
    cfg = {"task": "selm", "model": {"encoder": dict(ENC), "prefix": dict(PREFIX),
                                     "lm": {**LM, "tokenizer": {"vocab_size": 60}}, "prompt": "say the emotion.",
                                     "views": ["categorical", "sentiment", "dimensional"]},
           "data": {"cache": True}, "train": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "progress": False},
           "eval": {"batch_size": 8, "bootstrap": 0}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def tok():
    return SentencePieceTokenizer.train(task._tokenizer_corpus(_cfg(), CLASSES), 60)


def _model(tok, feat_dim=8, seed=0, encoder=None):
    torch.manual_seed(seed)
    return SELM(build_lm(LM, tok), feat_dim, PREFIX, encoder).eval()


def _hand_logprob(model, prefix, ids):
    """Sum of log p(token) over ``ids`` positions, one unbatched sequence at a time."""
    emb = torch.cat([prefix[None], model.lm.get_input_embeddings()(torch.tensor([ids]))], 1)
    logp = torch.log_softmax(model.lm(inputs_embeds=emb).logits[0].detach(), -1)
    p = prefix.shape[0]
    return [float(logp[p - 1 + t, ids[t]]) for t in range(len(ids))]


def test_tokenizer_is_deterministic_and_round_trips(tok, tmp_path):
    again = SentencePieceTokenizer.train(task._tokenizer_corpus(_cfg(), CLASSES), 60)
    assert again.proto == tok.proto
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode("emotion: angry") == tok.encode("emotion: angry")
    assert loaded.decode(tok.encode(" sad")).strip() == "sad"


def test_loss_covers_target_tokens_only(tok):
    model = _model(tok)
    views = make_views(["categorical"], CLASSES)
    prompt = tok.encode("say the emotion.")
    ids, tgt = encode_example(tok, prompt, views["categorical"], ["angry"])
    assert not any(tgt[:len(prompt)]) and all(tgt[len(prompt):])
    feats = torch.randn(1, 5, 8)
    lens = torch.tensor([5])
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
             "target_mask": torch.tensor([tgt])}
    loss = model(feats=feats, feat_lengths=lens, **batch)
    prefix = model.audio_prefix(feats, lens)[0]
    per_tok = _hand_logprob(model, prefix, ids)
    expected = -np.mean(per_tok[len(prompt):])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # only logits that predict target tokens receive gradient: prefix and prompt positions do not
    model.zero_grad()
    captured = {}
    hook = model.lm.lm_head.register_forward_hook(lambda mod, inp, out: captured.update(out=out) or out.retain_grad())
    model(feats=feats, feat_lengths=lens, **batch).backward()
    hook.remove()
    g = captured["out"].grad[0].abs().sum(-1)
    first = PREFIX["length"] + len(prompt) - 1  # the logit that predicts the first target token
    assert torch.all(g[:first] == 0) and torch.all(g[first:-1] > 0) and g[-1] == 0
    # changing the prompt text changes only the context, never which tokens are scored
    ids2, tgt2 = encode_example(tok, tok.encode("emotion"), views["categorical"], ["angry"])
    assert sum(tgt2) == sum(tgt)


def test_class_scoring_equals_hand_summed_token_logprobs(tok):
    model = _model(tok)
    view = make_views(["categorical"], CLASSES)["categorical"]
    feats, lens = torch.randn(3, 6, 8), torch.tensor([6, 4, 2])
    prompt = tok.encode("say the emotion.")
    with torch.no_grad():
        prefix = model.audio_prefix(feats, lens)
        chosen, scores = model.decode_view(prefix, [prompt] * 3, view, tok)
        head = tok.encode("emotion:")
        for b in range(3):
            for c, cls in enumerate(CLASSES):
                cand = tok.encode(" " + cls) + [tok.eos_id]
                lp = _hand_logprob(model, prefix[b], prompt + head + cand)
                assert float(scores[0][b, c]) == pytest.approx(sum(lp[-len(cand):]), abs=1e-4)
            assert chosen[b][0] == CLASSES[int(scores[0][b].argmax())]
        # the LM-prior correction subtracts lambda * log p(class | text only)
        _, corrected = model.decode_view(prefix, [prompt] * 3, view, tok, prior_weight=0.5)
        prior = model.score_candidates(None, [[tok.eos_id] + prompt + head],
                                       [tok.encode(" " + c) + [tok.eos_id] for c in CLASSES])
        assert torch.allclose(corrected[0], scores[0] - 0.5 * prior, atol=1e-5)


def test_constrained_decoding_yields_valid_views(tok):
    model = _model(tok)
    views = make_views(["sentiment", "dimensional"], CLASSES)
    with torch.no_grad():
        prefix = model.audio_prefix(torch.randn(2, 4, 8), torch.tensor([4, 3]))
        for view in views.values():
            chosen, _ = model.decode_view(prefix, [[], []], view, tok)
            for vals in chosen:
                assert all(v in s.values for v, s in zip(vals, view.slots))
    assert view_values(views["dimensional"], None, (0.1, 0.5, 0.9), (0.4, 0.6)) == ["low", "mid", "high"]
    assert view_values(views["sentiment"], "angry", None, (0.4, 0.6)) == ["negative"]
    assert map_gold("calm", {"calm": "neutral"}, CLASSES) == "neutral"
    assert map_gold("fearful", {}, CLASSES) is None


def test_save_load_round_trip_gives_identical_scores(tok, tmp_path):
    cfg = _cfg()
    model = _model(tok)
    save_model(model, str(tmp_path / "best.safetensors"))
    tok.save(tmp_path / "tokenizer")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": cfg["model"]}))
    loaded, tok2, _ = task.load_trained(tmp_path, 8)
    view = make_views(["categorical"], CLASSES)["categorical"]
    feats, lens = torch.randn(2, 5, 8), torch.tensor([5, 3])
    with torch.no_grad():
        a = model.decode_view(model.audio_prefix(feats, lens), [[], []], view, tok)[1][0]
        b = loaded.decode_view(loaded.audio_prefix(feats, lens), [[], []], view, tok2)[1][0]
    assert torch.equal(a, b)


def test_projector_standardises_each_dimension_with_the_training_frame_statistics():
    """A frozen layer's dimensions differ in offset and scale (SELM on Whisper tiny.en never left the class
    prior without this): with the statistics set from the training frames, the prefix does not depend on a
    per-dimension affine change of the features."""
    from sertk.features.embedding_cache import frame_stats
    from sertk.models.selm import PrefixMapper

    torch.manual_seed(0)
    pm = PrefixMapper(6, 8, length=2, proj_hidden=16, mapper_heads=2).eval()
    feats, lengths = torch.randn(3, 10, 6), torch.tensor([10, 7, 4])
    pm.set_feature_stats(*frame_stats(f[:n] for f, n in zip(feats, lengths)))
    out = pm(feats, lengths)
    scale, offset = torch.rand(6) * 5 + 0.1, torch.randn(6) * 3
    moved = feats * scale + offset
    pm.set_feature_stats(*frame_stats(f[:n] for f, n in zip(moved, lengths)))
    assert torch.allclose(pm(moved, lengths), out, atol=1e-4)
    pm.set_feature_stats(torch.zeros(6), torch.ones(6))  # without them it would
    assert not torch.allclose(pm(moved, lengths), out, atol=1e-2)


# ---------------------------------------------------------- data-backed tests --

def _write_set(root, name, n_per_class, seed, sr=16000):
    rng = np.random.default_rng(seed)
    wav_scp, u2s, u2e, u2a = {}, {}, {}, {}
    freqs = {"neutral": 150, "happy": 300, "angry": 600, "sad": 100}
    for c, cls in enumerate(CLASSES):
        for i in range(n_per_class):
            utt = f"{name}_s{i % 2}_{cls}_{i}"
            dur = 0.3 + 0.1 * (i % 3)
            t = np.arange(int(dur * sr)) / sr
            wav = (0.3 * np.sin(2 * np.pi * freqs[cls] * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
            path = root / "audio" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, wav, sr)
            wav_scp[utt], u2s[utt], u2e[utt] = str(path), f"{name}_s{i % 2}", cls
            u2a[utt] = f"{0.2 + 0.2 * c:.2f} 0.50 0.50"
    d = DataDir(tables={"wav.scp": wav_scp, "utt2spk": u2s, "utt2emo": u2e, "utt2avd": u2a})
    d.write(root / "data" / name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("selm_corpus")
    for name, n, seed in (("a_train", 4, 0), ("a_dev", 2, 1), ("a_test", 2, 2), ("b_train", 3, 3), ("b_test", 2, 4)):
        _write_set(root, name, n, seed)
    (root / "labels.yaml").write_text(yaml.safe_dump({"name": "four", "labels": CLASSES}))
    return root


def _split(root):
    return Split(corpus="toy", protocol="a", scheme="domain", train="a_train", dev="a_dev",
                 tests=["a_test", "b_test"], label_map=str(root / "labels.yaml"))


def _ctx(root, exp):
    return TaskContext(data=root / "data", dump=root / "dump", expdir=exp, name="selm", stage=4)


@pytest.mark.parametrize("encoder", [ENC, WHISPER], ids=["wav2vec2", "whisper"])
def test_cached_training_matches_on_the_fly_and_encoder_stays_frozen(corpus, tmp_path, encoder):
    split = _split(corpus)
    states, encoders = {}, {}
    for cache in (True, False):
        cfg = _cfg(data={"cache": cache})
        cfg["model"]["encoder"] = dict(encoder)
        env = task._Env(cfg, split, _ctx(corpus, tmp_path / f"c{cache}"))
        before = {k: v.clone() for k, v in env.encoder.state_dict().items()}
        tokz = task._make_tokenizer(cfg, CLASSES)
        views = task._views(cfg, CLASSES)
        torch.manual_seed(0)
        model = env.model(tokz)
        assert (model.encoder is None) == cache
        tr = Trainer(model, env.dataset("a_train", tokz, views), None, None, lambda m, b: m(**task.model_inputs(b)),
                     None, {"epochs": 1, "batch_size": 4, "lr": 3e-3, "progress": False, "max_grad_norm": None},
                     tmp_path / f"t{cache}")
        tr.collate_fn = tr.train_dataset.collate
        tr.fit(resume=False)
        states[cache] = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        if not cache:
            after = model.encoder.state_dict()
            assert all(torch.equal(before[k], after[k].cpu()) for k in before), "frozen encoder changed in training"
    assert states[True].keys() == states[False].keys()
    for k in states[True]:
        assert torch.allclose(states[True][k], states[False][k], atol=1e-4), k
    # the cache is reused (same key), one store per encoder setting shared by the sets, each set an index into it
    key_a = cache_key(env.encoder_spec, env.weights_digest, 16000, None)
    dev = resolve_device("auto")  # the cache's device: the store is named by it (and its batch) off the CPU
    store = corpus / "dump" / "encoder_feats" / store_name(key_a, dev, encoder_batch(1, dev))  # default batch: 1
    assert (store / "a_train" / "index.json").is_file()  # written last
    assert (store / "shards").is_dir()
    assert key_a != cache_key(env.encoder_spec, "other-weights", 16000, None)


def test_task_trains_evaluates_and_adapts_few_shot(corpus, tmp_path):
    cfg = _cfg(fewshot={"k": [1, 2], "pool": {"b_test": "b_train"}, "train": {"epochs": 2, "progress": False}},
               eval={"batch_size": 8, "bootstrap": 0, "lm_prior_weight": 0.2})
    cfg["train"]["device"] = "cpu"  # scores are re-computed below on the CPU in float32
    check_config(cfg, "test")
    split, ctx = _split(corpus), _ctx(corpus, tmp_path / "exp" / "a")
    task.train(cfg, split, ctx)
    assert (ctx.expdir / "tokenizer" / "tokenizer.model").is_file()
    written = task.evaluate(cfg, split, ctx)
    names = {json.loads(p.read_text())["name"] for p in written}
    assert names == {"selm", "selm_fewshot_k1", "selm_fewshot_k2"}
    rec = json.loads((ctx.expdir / "eval" / "b_test" / "results.json").read_text())
    assert rec["labels"] == CLASSES and 0.0 <= rec["metrics"]["uar"] <= 1.0
    assert set(rec["extra"]["views"]) == {"sentiment", "dimensional"}
    curve = (ctx.expdir / "eval" / "b_test" / "fewshot_curve.tsv").read_text().splitlines()
    assert [r.split("\t")[:2] for r in curve[1:]] == [["0", "0"], ["1", "4"], ["2", "8"]]
    # scores.txt holds the model's log-likelihoods: re-scoring the reloaded model reproduces them
    lines = (ctx.expdir / "eval" / "a_test" / "scores.txt").read_text().splitlines()[1:]
    first = lines[0].split()
    env = task._Env(cfg, split, ctx)
    model, tokz, _ = task.load_trained(ctx.expdir, env.encoder.hidden_size)
    # the projector standardises each feature dimension with the training set's frame statistics, saved
    train_feats = env.source("a_train")
    frames = torch.cat([train_feats[u] for u in train_feats])
    assert torch.allclose(model.prefixer.feat_mean, frames.mean(0), atol=1e-5)
    assert torch.allclose(model.prefixer.feat_std, frames.std(0), atol=1e-5)
    feats = env.source("a_test")[first[0]]
    with torch.no_grad():
        prefix = model.audio_prefix(feats[None], torch.tensor([feats.shape[0]]))
        _, s = model.decode_view(prefix, [task.prompt_ids(cfg, tokz)], task._views(cfg, CLASSES)["categorical"],
                                 tokz, prior_weight=0.2)
    assert np.allclose(s[0][0].numpy(), [float(x) for x in first[1:]], atol=1e-3)


def test_bad_config_and_unknown_test_label_are_named(corpus, tmp_path):
    with pytest.raises(ValueError, match="model.lm"):
        check_config(_cfg(model={**_cfg()["model"], "lm": {"bogus": 1}}), "selm.yaml")
    with pytest.raises(ValueError, match="views"):
        check_config(_cfg(model={**_cfg()["model"], "views": ["dimensional"]}), "selm.yaml")
    with pytest.raises(FileNotFoundError, match="from_experiment"):
        task.build_encoder(_cfg(model={**_cfg()["model"], "encoder": {"from_experiment": str(tmp_path)}}),
                           _split(corpus))


@pytest.mark.parametrize("mode", ["frozen", "full", "lora"])
def test_lm_modes_train_what_they_say(tok, mode):
    lm = build_lm({**LM, "mode": mode, "lora": {"r": 2, "alpha": 4}}, tok)
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    if mode == "frozen":
        assert not trainable
    elif mode == "full":
        assert trainable == {n for n, _ in lm.named_parameters()}
    else:
        assert trainable and all("lora_" in n for n in trainable)
    model = SELM(lm, 8, PREFIX)
    model.train()
    assert model.lm.training == (mode != "frozen") and model.prefixer.training


# ------------------------------------------- labels the model lacks, partial views --

def _relabel(root, name, new: dict[str, str], drop_avd: int = 0):
    """Give some utterances of a written set other labels; drop the A/V/D of the first ``drop_avd``."""
    d = DataDir.read(root / "data" / name)
    for u, lab in new.items():
        d.tables["utt2emo"][u] = lab
    d.tables["utt2avd"] = {u: v for i, (u, v) in enumerate(sorted(d.tables["utt2avd"].items())) if i >= drop_avd}
    d.write(root / "data" / name)
    return d


@pytest.fixture(scope="module")
def odd_labels(corpus, tmp_path_factory):
    """A model trained on a set with partial utt2avd, and a test set with classes it lacks (calm, fru)."""
    _write_set(corpus, "p_train", 3, 7)
    partial = _relabel(corpus, "p_train", {}, drop_avd=5)
    _write_set(corpus, "c_test", 2, 8)
    utts = DataDir.read(corpus / "data" / "c_test").utts
    _relabel(corpus, "c_test", {utts[0]: "calm", utts[1]: "calm", utts[2]: "fru"})
    split = Split(corpus="toy", protocol="odd", scheme="x", train="p_train", dev="a_dev", tests=["c_test"],
                  label_map=str(corpus / "labels.yaml"))
    exp = tmp_path_factory.mktemp("odd") / "exp"
    cfg = _cfg(train={"epochs": 1, "batch_size": 4, "lr": 3e-3, "progress": False})
    return split, _ctx(corpus, exp), cfg, utts, len(partial.tables["utt2avd"])


def test_each_view_trains_on_the_utterances_that_have_its_targets(odd_labels, caplog):
    split, ctx, cfg, _, n_avd = odd_labels
    with caplog.at_level("INFO", logger="sertk.tasks.selm"):
        task.train(cfg, split, ctx)
    assert "p_train: views: categorical 12 utts, sentiment 12 utts, dimensional 7 utts" in caplog.text
    assert n_avd == 7
    env = task._Env(cfg, split, ctx)
    tokz = task._make_tokenizer(cfg, CLASSES)
    views = task._views(cfg, CLASSES)
    ex = env.dataset("p_train", tokz, views).examples
    assert task.view_counts(ex, views) == {"categorical": 12, "sentiment": 12, "dimensional": 7}


def test_test_classes_the_model_lacks_are_mapped_or_dropped_with_few_shot(odd_labels):
    split, ctx, cfg, utts, _ = odd_labels
    if not (ctx.expdir / "best.safetensors").is_file():
        task.train(cfg, split, ctx)
    fewshot = {"k": [1], "pool": {"c_test": "c_test"}, "train": {"epochs": 1, "progress": False}}
    # calm merged into neutral, fru (no class) dropped: scored and adapted few-shot on what is left
    mapped = _cfg(eval={"batch_size": 8, "bootstrap": 0, "label_mapping": {"calm": "neutral"},
                        "drop_unmapped": True}, fewshot=fewshot)
    written = task.evaluate(mapped, split, ctx)
    rec = json.loads((ctx.expdir / "eval" / "c_test" / "results.json").read_text())
    assert rec["extra"]["dropped_unmapped"] == 1
    # 8 utterances: two relabelled calm (scored as neutral, beside the one neutral left), one fru
    assert sum(map(sum, rec["confusion"])) == 7 and sum(rec["confusion"][CLASSES.index("neutral")]) == 3
    shot = json.loads(next(p for p in written if "fewshot" in str(p)).read_text())
    assert shot["extra"]["fewshot_n"] == 4  # one per model class; fru is never drawn
    assert sum(map(sum, shot["confusion"])) == 3  # 7 scored less the 4 adaptation utterances
    # without the mapping calm is unmapped too: dropped, or an error naming the utterance and class
    dropped = _cfg(eval={"batch_size": 8, "bootstrap": 0, "drop_unmapped": True}, fewshot=fewshot)
    task.evaluate(dropped, split, ctx)
    rec = json.loads((ctx.expdir / "eval" / "c_test" / "results.json").read_text())
    assert rec["extra"]["dropped_unmapped"] == 3 and sum(map(sum, rec["confusion"])) == 5
    strict = _cfg(eval={"batch_size": 8, "bootstrap": 0}, fewshot=fewshot)
    with pytest.raises(ValueError, match=f"utterance '{utts[0]}' has class 'calm', unknown to the model"):
        task.evaluate(strict, split, ctx)
