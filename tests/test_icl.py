"""ICL personalisation: episodes, loss masking, k = 0 decision, meta-training on a toy task, task end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from sertk.common.protocol import Split
from sertk.data.audio import write_audio
from sertk.data.datadir import DataDir
from sertk.data.episodes import Episode, EpisodeSampler, enrolment_draws, group_by_speaker
from sertk.models.causal_lm import build_causal_lm
from sertk.models.icl import EpisodeTemplate, ICLSpeechLM
from sertk.models.personal_baselines import PersonalBaselines
from sertk.models.scoring import candidate_logprobs
from sertk.models.text_tokenizer import SentencePieceTokenizer
from sertk.tasks import TaskContext, check_config
from sertk.tasks import icl as task

CLASSES = ["neutral", "happy", "angry", "sad"]
LM = {"mode": "full", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 96,
                                 "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}
PROJ = {"length": 1, "proj_hidden": 32, "mapper_layers": 1, "mapper_heads": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def tok():
    return SentencePieceTokenizer.train(["say the emotion.", ":", ";"] + [" " + c for c in CLASSES], 48)


def _model(tok, classes=CLASSES, feat_dim=8, seed=0, instruction="say the emotion.", prefix=":", sep=";"):
    torch.manual_seed(seed)
    template = EpisodeTemplate.build(tok, classes, instruction, prefix, sep)
    return ICLSpeechLM(build_causal_lm(LM, tok.vocab_size, tok.eos_id), feat_dim, template, PROJ)


# ------------------------------------------------------------------ episodes --

def _roster(n_spk=5, n_utt=12):
    utts = [f"s{s}_{i:02d}" for s in range(n_spk) for i in range(n_utt)]
    return utts, {u: u.split("_")[0] for u in utts}, {u: CLASSES[int(u[-2:]) % 4] for u in utts}


def test_an_episode_never_mixes_speakers_nor_holds_its_query_in_its_enrolment():
    utts, u2s, u2e = _roster()
    sampler = EpisodeSampler(group_by_speaker(utts, u2s), [0, 3, 11, 40], seed=1)
    episodes = sampler.episodes(400, epoch=2)
    assert episodes == sampler.episodes(400, epoch=2)  # a function of (seed, epoch): resumable, same on DDP ranks
    assert episodes != sampler.episodes(400, epoch=3)
    ks = set()
    for e in episodes:
        assert {u2s[u] for u in (*e.enrol, e.query)} == {e.speaker}
        assert e.query not in e.enrol and len(set(e.enrol)) == len(e.enrol)
        ks.add(len(e.enrol))
    assert ks == {0, 3, 11}  # k = 40 is capped at the speaker's 12 utterances minus the query
    with pytest.raises(ValueError, match="own enrolment"):
        Episode("s0", ("s0_01", "s0_02"), "s0_02")
    # evaluation draws: enrolment and queries split the speaker's utterances; "cover" holds every class
    mine = [u for u in utts if u2s[u] == "s2"]
    for cond in ("arbitrary", "cover"):
        draws = enrolment_draws(mine, [u2e[u] for u in mine], 5, 4, seed=0, condition=cond, speaker="s2")
        assert len(draws) == 4 and draws == enrolment_draws(mine, [u2e[u] for u in mine], 5, 4, 0, cond, "s2")
        for enrol, queries in draws:
            assert len(enrol) == 5 and not set(enrol) & set(queries) and sorted(enrol + queries) == sorted(mine)
            if cond == "cover":
                assert {u2e[u] for u in enrol} == set(CLASSES)
    assert enrolment_draws(mine, [u2e[u] for u in mine], 3, 2, 0, "cover", "s2") == []  # 3 < 4 classes
    assert enrolment_draws(mine, [u2e[u] for u in mine], 12, 2, 0, "arbitrary", "s2") == []  # no query left


# ------------------------------------------------------------------ the model --

def _batch(rng, n_episodes, k, classes=4, feat_dim=8, frames=3):
    feats, eps, labels = [], [], []
    for _ in range(n_episodes):
        ys = [int(v) for v in rng.integers(0, classes, size=k + 1)]
        eps.append(list(range(len(feats), len(feats) + k + 1)))
        labels.append(ys)
        feats += [torch.tensor(rng.normal(size=(frames, feat_dim)), dtype=torch.float32) for _ in ys]
    return torch.stack(feats), torch.full((len(feats),), frames), eps, labels


def test_the_loss_reaches_only_the_query_label_tokens(tok):
    model = _model(tok).eval()
    feats, lens, eps, labels = _batch(np.random.default_rng(0), 3, 4)
    loss = model(feats, lens, eps, labels)
    with torch.no_grad():
        audio = model.audio_embeds(feats, lens)
        ctxs = model.episode_contexts(audio, eps, labels)
        gold = [model.template.class_ids[ys[-1]] for ys in labels]
        # the query label's log-probability after its episode, scored by the shared scorer, and nothing else
        want = -np.mean([float(candidate_logprobs(model.lm, [c], [g])[0, 0]) / len(g) for c, g in zip(ctxs, gold)])
    assert float(loss.detach()) == pytest.approx(want, abs=1e-5)
    loss.backward()  # the enrolment audio is context: the projector learns through it
    assert model.prefixer.proj[1].weight.grad.abs().sum() > 0


def test_k0_is_the_plain_speech_lm_decision(tok):
    model = _model(tok).eval()
    feats, lens, eps, labels = _batch(np.random.default_rng(1), 5, 0)
    with torch.no_grad():
        audio = model.audio_embeds(feats, lens)
        got = model.score(model.episode_contexts(audio, eps, labels))
        emb = model.lm.get_input_embeddings()
        t = model.template
        plain = [torch.cat([emb(torch.tensor(t.instruction)), audio[i], emb(torch.tensor(t.label_prefix))])
                 for i in range(len(eps))]
        want = candidate_logprobs(model.lm, plain, t.class_ids)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(got.argmax(1), want.argmax(1))
    # the evaluation path (enrolment pieces shared by a draw's queries) gives the same decisions
    a = {f"u{i}": audio[i] for i in range(len(eps))}
    assert task._icl_predict(model, a, [([], list(a))], {}, 2)[0] == want.argmax(1).tolist()


def _shift_batch(rng, n, ks, feat_dim=8, mu=None):
    """Toy personalisation: x = speaker offset + class mean + noise, the offset larger than the class
    spread, so a query alone is ambiguous and the speaker's enrolment audio resolves it."""
    feats, eps, labels = [], [], []
    for _ in range(n):
        k = int(rng.choice(ks))
        shift = rng.normal(size=feat_dim) * 3.0
        ys = [int(v) for v in rng.integers(0, 2, size=k + 1)]
        eps.append(list(range(len(feats), len(feats) + k + 1)))
        labels.append(ys)
        feats += [torch.tensor(shift + mu[y] + 0.3 * rng.normal(size=(3, feat_dim)), dtype=torch.float32)
                  for y in ys]
    return torch.stack(feats), torch.full((len(feats),), 3), eps, labels


def test_meta_training_learns_to_use_the_enrolment(tok):
    torch.manual_seed(0)
    tok2 = SentencePieceTokenizer.train([" neutral", " angry", ";"], 40)
    model = _model(tok2, ["neutral", "angry"], instruction="", prefix="", sep=";")
    mu = np.random.default_rng(1).normal(size=(2, 8))
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(200):  # mostly context-rich episodes: the skill to learn is reading the enrolment
        loss = model(*_shift_batch(rng, 32, [0, 2, 4, 4, 4], mu=mu))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = {}
    with torch.no_grad():
        for k in (0, 4):
            feats, lens, eps, labels = _shift_batch(np.random.default_rng(7), 300, [k], mu=mu)
            scores = model.score(model.episode_contexts(model.audio_embeds(feats, lens), eps, labels))
            acc[k] = float((scores.argmax(1).numpy() == np.array([y[-1] for y in labels])).mean())
    assert acc[4] > acc[0] + 0.15, acc


def test_baselines_personalise_on_speaker_offsets():
    """Per-speaker normalisation and NCM fix what the SI classifier cannot: large speaker offsets."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(2, 6))

    def speaker(n):
        y = rng.integers(0, 2, size=n)
        return rng.normal(size=6) * 4.0 + mu[y] + 0.3 * rng.normal(size=(n, 6)), y
    xs, ys, spk = [], [], []
    for s in range(30):
        x, y = speaker(12)
        xs.append(x), ys.append(y), spk.extend([f"s{s}"] * 12)
    base = PersonalBaselines.fit(np.concatenate(xs), np.concatenate(ys), spk, 2)
    hits = {m: [] for m in ("si", "spk_norm", "ncm")}
    for _ in range(20):
        x, y = speaker(12)
        xe, ye, xq, yq = x[:6], y[:6], x[6:], y[6:]
        for m in hits:
            p = base.predict(m, xq, xe, ye) if m != "ncm" else base.ncm(xq, xe, ye, alpha=1.0, temperature=1.0)
            hits[m].append((p.argmax(1) == yq).mean())
    acc = {m: float(np.mean(v)) for m, v in hits.items()}
    assert acc["spk_norm"] > acc["si"] + 0.15 and acc["ncm"] > acc["si"] + 0.15, acc


# ---------------------------------------------------------- task end to end --

ENC = {"type": "wav2vec2", "layer": 1, "config": {
    "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "layer",
    "do_stable_layer_norm": True, "mask_time_prob": 0.0}}


def _write_set(root, name, speakers, per_spk, seed, sr=8000):
    rng = np.random.default_rng(seed)
    tables = {"wav.scp": {}, "utt2spk": {}, "utt2emo": {}}
    freqs = {"neutral": 150, "happy": 300, "angry": 600, "sad": 100}
    for s in range(speakers):
        spk, gain = f"{name}{s}", 0.5 + s * 0.4
        for i in range(per_spk):
            cls = CLASSES[i % 4]
            utt = f"{spk}_{i:02d}"
            t = np.arange(int(0.25 * sr)) / sr
            wav = gain * 0.3 * np.sin(2 * np.pi * freqs[cls] * t) + 0.05 * rng.standard_normal(t.size)
            path = root / "audio" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, wav.astype(np.float32), sr)
            tables["wav.scp"][utt], tables["utt2spk"][utt], tables["utt2emo"][utt] = str(path), spk, cls
    DataDir(tables=tables).write(root / "data" / name)


def _cfg():
    return {"task": "icl", "model": {"encoder": dict(ENC), "projector": {**PROJ, "frame_pool": 2},
                                     "lm": {**LM, "tokenizer": {"vocab_size": 48}},
                                     "instruction": "say the emotion.", "label_prefix": ":", "separator": ";"},
            "episodes": {"k": [0, 1, 4], "per_epoch": 32, "dev_queries": 3},
            "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "progress": False, "device": "cpu"},
            "eval": {"k": [0, 1, 4], "draws": 2, "conditions": ["arbitrary", "cover"], "bootstrap": 0},
            "baselines": {"finetune_grid": {"steps": [0, 5], "lr": [0.1]}, "ncm_grid": {"alpha": [0.0, 0.5]}}}


def test_task_meta_trains_and_evaluates_k_curves_with_baselines_on_the_same_draws(tmp_path):
    root = tmp_path
    for name, n_spk, seed in (("tr", 3, 0), ("dv", 2, 1), ("te", 2, 2)):
        _write_set(root, name, n_spk, 8, seed)
    (root / "labels.yaml").write_text(yaml.safe_dump({"name": "four", "labels": CLASSES}))
    cfg = _cfg()
    check_config(cfg, "test")
    split = Split(corpus="toy", protocol="p", scheme="speaker-independent", train="tr", dev="dv", tests=["te"],
                  label_map=str(root / "labels.yaml"))
    ctx = TaskContext(data=root / "data", dump=root / "dump", expdir=root / "exp" / "icl" / "p", name="icl", stage=6)
    task.train(cfg, split, ctx)
    info = yaml.safe_load((ctx.expdir / "model.yaml").read_text())
    assert info["train_speakers"] == 3 and set(info["baselines"]) == {"finetune", "ncm"}
    [path] = task.evaluate(cfg, split, ctx)
    rec = json.loads(path.read_text())
    assert rec["extra"]["headline"] == {"method": "icl", "k": 4, "condition": "arbitrary", "pooled_over_draws": 2}
    rows = {(r["condition"], r["k"], r["method"]): r for r in rec["extra"]["kcurve"]}
    methods = {"icl", "icl_k0", "si", "spk_norm", "finetune", "ncm"}
    assert {m for (_, _, m) in rows} == methods
    assert {(c, k) for (c, k, _) in rows} == {("arbitrary", 0), ("arbitrary", 1), ("arbitrary", 4), ("cover", 4)}
    for (c, k, m), r in rows.items():  # every method scored the same queries of the same draws
        assert r["n_queries"] == rows[(c, k, "icl")]["n_queries"] == 2 * (8 - k)
        assert r["draws"] == (1 if k == 0 else 2)
    # at k = 0 the ICL model is the plain speech-LM
    assert rows[("arbitrary", 0, "icl")]["uar_mean"] == rows[("arbitrary", 0, "icl_k0")]["uar_mean"]
    out = ctx.expdir / "eval" / "te"
    assert (out / "kcurve.png").stat().st_size > 0 and (out / "kcurve.tsv").is_file()
    u2s = DataDir.read(root / "data" / "te").utt2spk
    draws = [line.split("\t") for line in (out / "draws.tsv").read_text().splitlines()[1:]]
    preds = [line.split("\t") for line in (out / "predictions.tsv").read_text().splitlines()[1:]]
    for cond, k, d, spk, enrol in draws:
        enrol = enrol.split()
        assert len(enrol) == int(k) and all(u2s[u] == spk for u in enrol)
        queries = {p[3] for p in preds if p[:3] == [cond, k, d] and u2s[p[3]] == spk}
        assert queries and not queries & set(enrol) and len(queries) + len(enrol) == 8
    # the stage-11 report shows the k-curve table
    from sertk.eval.report import write_report
    text = write_report(root / "exp", root / "RESULTS.md")
    assert "k=0 | k=1 | k=4" in text and "| icl | arbitrary |" in text and "| spk_norm | cover |" in text


def test_the_lm_reads_label_words_and_the_headline_interval_resamples_speakers(tmp_path):
    """Codes (CREMA-D's ANG, MSP-Podcast-like H) reach the LM as their words; results keep the codes;
    the headline interval resamples test speakers (each query is scored once per draw)."""
    from sertk.eval.metrics import bootstrap_ci
    from sertk.models.text_tokenizer import load_tokenizer

    for name, n_spk, seed in (("tr", 3, 0), ("dv", 2, 1), ("te", 3, 2)):
        _write_set(tmp_path, name, n_spk, 8, seed)
    codes = ["NEU", "H", "ANG", "SAD"]  # CLASSES' order; utt2emo holds the words, the map's aliases take them in
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump({
        "name": "codes", "labels": codes, "aliases": dict(zip(CLASSES, codes)), "words": {"H": "happy"}}))
    cfg = _cfg()
    cfg["train"]["epochs"] = 1
    cfg["eval"] = {"k": [0, 4], "draws": 3, "conditions": ["arbitrary"], "bootstrap": 200}
    split = Split(corpus="toy", protocol="p", scheme="speaker-independent", train="tr", dev="dv", tests=["te"],
                  label_map=str(tmp_path / "labels.yaml"))
    ctx = TaskContext(data=tmp_path / "data", dump=tmp_path / "dump", expdir=tmp_path / "exp", name="icl", stage=6)
    task.train(cfg, split, ctx)
    info = yaml.safe_load((ctx.expdir / "model.yaml").read_text())
    assert info["labels"] == codes and info["label_words"] == CLASSES
    assert info["episodes"]["diverse"] is True  # auto: these speakers have every class
    tok = load_tokenizer(ctx.expdir / "tokenizer")
    model, _ = task.load_trained(ctx.expdir, ENC["config"]["hidden_size"])
    word_ids = [tok.encode(" " + w) for w in CLASSES]
    assert model.template.class_ids == word_ids  # the answers scored
    assert [tok.decode(x).strip() for x in model.template.class_ids] == CLASSES
    audio = torch.zeros(2, PROJ["length"], model.lm.get_input_embeddings().weight.shape[1])
    pieces = model.enrolment(audio, [2, 1])  # enrolment labels ANG, H
    t = model.template
    for piece, word in zip(pieces[2::2], ("angry", "happy")):
        assert torch.equal(piece, model._tokens(t.label_prefix + tok.encode(" " + word) + t.separator))
    [path] = task.evaluate(cfg, split, ctx)
    rec = json.loads(path.read_text())
    assert rec["labels"] == codes and rec["metrics"]["ci_method"] == "speaker_bootstrap"
    u2s = DataDir.read(tmp_path / "data" / "te").utt2spk
    rows = [line.split("\t") for line in (path.parent / "predictions.tsv").read_text().splitlines()[1:]]
    head = [r for r in rows if r[:2] == ["arbitrary", "4"]]
    assert len(head) == 3 * 3 * (8 - 4)  # 3 speakers x 3 draws x 4 queries: each query up to 3 times
    gold, pred = [r[4] for r in head], [r[5] for r in head]
    assert rec["metrics"]["uar_ci"] == list(bootstrap_ci(gold, pred, "uar", n_boot=200,
                                                         groups=[u2s[r[3]] for r in head]))
    cfg["eval"]["ci_unit"] = "query"  # or queries, each with all its draws
    [path] = task.evaluate(cfg, split, ctx)
    rec = json.loads(path.read_text())
    assert rec["metrics"]["ci_method"] == "query_bootstrap"
    assert rec["metrics"]["uar_ci"] == list(bootstrap_ci(gold, pred, "uar", n_boot=200, groups=[r[3] for r in head]))
    with pytest.raises(ValueError, match="eval.ci_unit must be one of"):
        check_config({**cfg, "eval": {"ci_unit": "utterance"}}, "icl.yaml")

def test_the_headline_interval_counts_a_query_once_and_resamples_speakers():
    """Pooled over 5 draws each query appears 5 times; speakers differ in how well they are served."""
    from sertk.eval.metrics import bootstrap_ci

    rng = np.random.default_rng(0)
    utt2spk = {f"s{s}_{i:02d}": f"s{s}" for s in range(8) for i in range(12)}
    skill = {f"s{s}": 0.3 + 0.09 * s for s in range(8)}
    gold = {u: int(rng.integers(4)) for u in utt2spk}
    right = {u: rng.random() < skill[utt2spk[u]] for u in utt2spk}  # a query is mostly decided alike in every draw
    by_draw = {}
    for d in range(5):
        qs = sorted(utt2spk)
        pred = [gold[u] if (right[u] if rng.random() < 0.8 else rng.random() < 0.5) else (gold[u] + 1) % 4
                for u in qs]
        by_draw[d] = ([gold[u] for u in qs], pred, qs)
    m = task.headline_metrics(by_draw, CLASSES, utt2spk, "speaker", 500)
    g = [CLASSES[i] for d in by_draw for i in by_draw[d][0]]
    p = [CLASSES[i] for d in by_draw for i in by_draw[d][1]]
    spk = [utt2spk[u] for d in by_draw for u in by_draw[d][2]]
    assert m["n"] == 5 * 96 and m["ci_method"] == "speaker_bootstrap"
    assert m["uar_ci"] == list(bootstrap_ci(g, p, "uar", n_boot=500, groups=spk))
    pooled = bootstrap_ci(g, p, "uar", n_boot=500)  # what the headline held before: decisions resampled
    assert m["uar_ci"][1] - m["uar_ci"][0] > 1.5 * (pooled[1] - pooled[0])
    q = task.headline_metrics(by_draw, CLASSES, utt2spk, "query", 500)
    assert q["ci_method"] == "query_bootstrap"
    assert q["uar_ci"][1] - q["uar_ci"][0] > 1.5 * (pooled[1] - pooled[0])
    assert "uar_ci" not in task.headline_metrics(by_draw, CLASSES, utt2spk, "speaker", 0)

def test_a_protocol_without_dev_speakers_holds_training_speakers_out(tmp_path):
    """IEMOCAP's leave-one-session-out folds have no dev set: dev speakers come out of training, not test."""
    for name, n_spk, seed in (("tr", 3, 0), ("te", 2, 2)):
        _write_set(tmp_path, name, n_spk, 6, seed)
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump({"name": "four", "labels": CLASSES}))
    cfg = _cfg()
    cfg["episodes"]["dev_speakers"] = 1
    cfg["train"]["epochs"] = 1
    split = Split(corpus="toy", protocol="loso", scheme="loso", train="tr", dev=None, tests=["te"],
                  label_map=str(tmp_path / "labels.yaml"))
    ctx = TaskContext(data=tmp_path / "data", dump=tmp_path / "dump", expdir=tmp_path / "exp", name="icl", stage=5)
    task.train(cfg, split, ctx)
    info = yaml.safe_load((ctx.expdir / "model.yaml").read_text())
    assert (info["train_speakers"], info["dev_speakers"]) == (2, 1)
    cfg["episodes"]["dev_speakers"] = 3
    with pytest.raises(ValueError, match="dev_speakers=3"):
        task.train(cfg, split, TaskContext(data=tmp_path / "data", dump=tmp_path / "dump",
                                           expdir=tmp_path / "exp2", name="icl", stage=5))


def test_task_runs_on_a_whisper_encoder(tmp_path):
    """A Whisper encoder's cached clip-window layer feeds ICL and its baselines like any encoder's."""
    from zoo_fixtures import TINY_WHISPER

    for name, n_spk, seed in (("tr", 2, 0), ("dv", 1, 1), ("te", 1, 2)):
        _write_set(tmp_path, name, n_spk, 6, seed)
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump({"name": "four", "labels": CLASSES}))
    cfg = _cfg()
    cfg["model"]["encoder"] = {**TINY_WHISPER, "window": "clip", "layer": 2}
    cfg["episodes"] = {"k": [0, 1], "per_epoch": 8, "dev_queries": 2}
    cfg["train"]["epochs"] = 1
    cfg["eval"] = {"k": [0, 1], "draws": 1, "conditions": ["arbitrary"], "bootstrap": 0}
    check_config(cfg, "icl_whisper.yaml")
    split = Split(corpus="toy", protocol="p", scheme="speaker-independent", train="tr", dev="dv", tests=["te"],
                  label_map=str(tmp_path / "labels.yaml"))
    ctx = TaskContext(data=tmp_path / "data", dump=tmp_path / "dump", expdir=tmp_path / "exp", name="icl", stage=6)
    task.train(cfg, split, ctx)
    assert yaml.safe_load((ctx.expdir / "model.yaml").read_text())["encoder"]["window"] == "clip"
    [path] = task.evaluate(cfg, split, ctx)
    rows = json.loads(path.read_text())["extra"]["kcurve"]
    assert {(r["k"], r["method"]) for r in rows} >= {(1, "icl"), (1, "spk_norm"), (0, "icl_k0")}
    [index] = (tmp_path / "dump" / "encoder_feats").glob("*/te/index.json")
    assert json.loads(index.read_text())["encoder"]["type"] == "whisper"
