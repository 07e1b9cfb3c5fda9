"""The synthetic corpus keeps its promises: reproducible, balanced, disjoint,
and its labels really drive the acoustics (measured with openSMILE eGeMAPS)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import opensmile
import pytest
import soundfile as sf

from sertk.bin import make_synth_corpus
from sertk.common.config import ConfigError, load_config
from sertk.data.datadir import DataDir
from sertk.data.synth import (acoustic_targets, caption_of, generate_corpus, plan_corpus, plan_pool,
                              render_utterance, sentences_of, validate_config)
from sertk.data.synth.render import random_streams

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "egs/mini_emo/conf/synth.yaml"
TINY = [f"domains.{d}.{k}" for d in ("studio", "phone")
        for k in ("speakers.train=2", "speakers.dev=2", "speakers.test=2", "added_speakers.test=0",
                  "utts_per_speaker=4")]
SETS = [f"{d}_{s}" for d in ("studio", "phone") for s in ("train", "dev", "test")]
POOL_TINY = ["pretrain.speakers=4", "pretrain.utts_per_speaker=8"]


def tiny_config(*extra):
    return load_config(CONFIG, TINY + list(extra))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = tiny_config()
    generate_corpus(cfg, root / "audio", root / "data", nj=1)
    return cfg, root


@pytest.fixture(scope="module")
def smile():
    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                           feature_level=opensmile.FeatureLevel.Functionals)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every data-dir file and wav, with the corpus root replaced so that two roots compare."""
    out = {}
    for p in sorted((root / "data").rglob("*")):
        if p.is_file() and p.name != "synth_manifest.json":
            out[str(p.relative_to(root))] = p.read_bytes().replace(str(root).encode(), b"ROOT")
    for p in sorted((root / "audio").rglob("*.wav")):
        out[str(p.relative_to(root))] = p.read_bytes()
    return out


def test_default_config_is_valid_and_sized_as_documented():
    cfg = load_config(CONFIG)
    validate_config(cfg)
    specs = plan_corpus(cfg)
    assert 1000 <= len(specs) <= 2000  # 1,728: 16 test speakers per domain (docs/mini_emo.md)
    spk = {s.speaker.spk for s in specs}
    assert len(spk) >= 24 and {s.speaker.gender for s in specs} == {"f", "m"}
    assert {"neutral", "happy", "angry", "sad"} <= set(cfg["emotions"])


def test_same_seed_gives_identical_corpus_for_any_nj(corpus, tmp_path):
    cfg, root = corpus
    generate_corpus(cfg, tmp_path / "audio", tmp_path / "data", nj=2)
    a, b = _snapshot(root), _snapshot(tmp_path)
    assert a.keys() == b.keys() and len(a) > 40
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:3]


def test_another_seed_gives_another_corpus(corpus):
    cfg, _ = corpus
    one = plan_corpus(cfg)
    two = plan_corpus(tiny_config(f"seed={cfg['seed'] + 1}"))
    assert [s.utt for s in one] == [s.utt for s in two]
    assert sum(a.avd != b.avd for a, b in zip(one, two)) > 0.9 * len(one)
    wa, wb = render_utterance(one[0]), render_utterance(two[0])
    assert wa.shape != wb.shape or not np.array_equal(wa, wb)


def test_data_dirs_are_complete_balanced_and_speaker_disjoint(corpus):
    cfg, root = corpus
    emotions = list(cfg["emotions"])
    words = {w for s in sentences_of(cfg) for w in s}
    seen_speakers: dict[str, str] = {}
    for name in SETS:
        d = DataDir.read(root / "data" / name)
        domain, split = name.split("_")
        assert len(d) == 2 * 4
        for f in ("utt2emo", "utt2avd", "utt2gender", "utt2domain", "text", "utt2caption"):
            assert set(d.field(f)) == set(d.utts), f"{name}/{f} does not cover every utterance"
        counts = {e: list(d.utt2emo.values()).count(e) for e in emotions}
        assert len(set(counts.values())) == 1, f"{name}: unbalanced labels {counts}"
        for spk in d.spk2utt:
            assert seen_speakers.setdefault(spk, name) == name, f"{spk} in {seen_speakers[spk]} and {name}"
            assert spk.startswith(f"{domain}-")
        assert {d.field("utt2gender")[u] for u in d.utts} == {"f", "m"}
        for u in d.utts:
            assert u.startswith(d.utt2spk[u] + "-") and d.field("utt2domain")[u] == domain
            assert all(0.0 <= v <= 1.0 for v in d.utt2avd[u])
            assert set(d.field("text")[u].split()) <= words
            caption = d.field("utt2caption")[u]
            assert ("female" if d.field("utt2gender")[u] == "f" else "male") in caption and caption.endswith(".")
            info = sf.info(d.audio_source(u)[0])
            assert info.samplerate == cfg["domains"][domain]["sample_rate"]
            assert 1.0 <= info.duration <= 4.0
    manifest = json.loads((root / "data" / "synth_manifest.json").read_text())
    assert manifest["sets"] == sorted(SETS)


def test_extreme_speaking_rates_stay_within_duration_range(corpus):
    cfg, _ = corpus
    specs = plan_corpus(cfg)
    longest = max(sentences_of(cfg), key=lambda s: len("".join(s)))
    shortest = min(sentences_of(cfg), key=lambda s: len("".join(s)))
    for words, a in ((longest, 0.0), (shortest, 1.0)):
        spec = dataclasses.replace(specs[0], words=tuple(words), avd=(a, 0.5, 0.5))
        dur = render_utterance(spec).size / spec.sample_rate
        assert 1.0 <= dur <= 4.0


def test_second_run_is_skipped_and_config_change_regenerates(tmp_path):
    cfg = tiny_config("domains.phone.speakers.train=1", "domains.phone.speakers.dev=1",
                      "domains.phone.speakers.test=1")
    first = generate_corpus(cfg, tmp_path / "a", tmp_path / "d", nj=1)
    assert not first.get("skipped")
    wav = Path(DataDir.read(tmp_path / "d" / "studio_train").audio_source("studio-f01-0001")[0])
    mtime = wav.stat().st_mtime_ns
    assert generate_corpus(cfg, tmp_path / "a", tmp_path / "d", nj=1) == {"skipped": True}
    assert wav.stat().st_mtime_ns == mtime
    wav.unlink()  # a missing file makes the corpus stale
    assert not generate_corpus(cfg, tmp_path / "a", tmp_path / "d", nj=1).get("skipped")
    cfg["seed"] += 1
    cfg["domains"]["studio"]["speakers"]["train"] = 1
    assert not generate_corpus(cfg, tmp_path / "a", tmp_path / "d", nj=1).get("skipped")
    listed = {DataDir.read(tmp_path / "d" / s).audio_source(u)[0] for s in SETS
              for u in DataDir.read(tmp_path / "d" / s).utts}
    assert {str(p) for p in (tmp_path / "a").rglob("*.wav")} == listed  # no stale audio is left behind


def test_cli_writes_corpus_and_names_bad_config_keys(tmp_path, capsys):
    args = ["--config", str(CONFIG), "--out-audio", str(tmp_path / "audio"), "--out-data", str(tmp_path / "data"),
            "--nj", "1"] + [x for kv in TINY for x in ("--set", kv)]
    assert make_synth_corpus.main(args) == 0
    assert all(DataDir.read(tmp_path / "data" / s).utts for s in SETS)
    assert make_synth_corpus.main(args + ["--set", "domains.studio.utts_per_speaker=5"]) == 1
    assert "domains.studio.utts_per_speaker" in capsys.readouterr().err


@pytest.mark.parametrize("override, key", [
    ("emotions.sad.avd=[0.2,1.5,0.3]", "emotions.sad.avd"),
    ("cues.loudness_db.pleasure=3", "cues.loudness_db"),
    ("domains.phone.sample_rate=11025", "domains.phone.sample_rate"),
    ("domains.phone.channel.band=[300,5000]", "domains.phone.channel.band"),
    ("variation.intensity=[1.2,0.4]", "variation.intensity"),
    ("speakers.f0_hz.male=[118,-3]", "speakers.f0_hz.male"),
])
def test_bad_config_values_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(tiny_config(override))



# ------------------------------------------------------------- pre-training pool
@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    cfg = tiny_config(*POOL_TINY)
    generate_corpus(cfg, root / "audio", root / "data", nj=1, part="pretrain")
    return cfg, root


def test_pool_is_its_own_complete_balanced_data_dir(pool):
    cfg, root = pool
    assert sorted(p.name for p in (root / "data").iterdir()) == ["pretrain"]  # no evaluation set written
    assert sorted(p.name for p in (root / "audio").iterdir()) == ["pretrain"]
    d = DataDir.read(root / "data" / "pretrain")
    assert len(d) == 4 * 8
    for f in ("utt2emo", "utt2avd", "utt2gender", "utt2domain", "text", "utt2caption"):
        assert set(d.field(f)) == set(d.utts), f"pretrain/{f} does not cover every utterance"
    eval_speakers = {s.speaker.spk for s in plan_corpus(cfg)}
    assert not set(d.spk2utt) & eval_speakers and all(s.startswith("pool-") for s in d.spk2utt)
    assert set(d.field("utt2gender").values()) == {"f", "m"}
    domains = d.field("utt2domain")
    assert set(domains.values()) == set(cfg["pretrain"]["domains"]) == {"studio", "phone"}
    for spk, utts in d.spk2utt.items():
        emo = [d.utt2emo[u] for u in utts]
        assert len({emo.count(e) for e in cfg["emotions"]}) == 1, f"{spk}: unbalanced labels {emo}"
        dom = [domains[u] for u in utts]
        assert dom.count("studio") == dom.count("phone"), f"{spk}: unbalanced domains {dom}"
    for u in d.utts:
        path = d.audio_source(u)[0]
        assert path == str(root.resolve() / "audio" / "pretrain" / d.utt2spk[u] / f"{u}.wav")
        assert sf.info(path).samplerate == cfg["domains"][domains[u]]["sample_rate"]
        assert ("telephone" in d.field("utt2caption")[u]) == (domains[u] == "phone")
    manifest = json.loads((root / "data" / "pretrain" / "synth_manifest.json").read_text())
    assert manifest["sets"] == ["pretrain"] and manifest["part"] == "pretrain"


def test_pool_variety_widens_the_channel():
    specs = plan_pool(load_config(CONFIG))
    v = load_config(CONFIG)["pretrain"]["variety"]
    studio = [s for s in specs if s.domain == "studio"]
    assert 0.25 < np.mean([s.rt60 is not None for s in studio]) < 0.55  # reverberant studio, rt60_prob 0.4
    assert all(v["snr_db"][0] <= s.snr_db <= v["snr_db"][1] for s in specs)
    assert all(v["expression"][0] <= s.expression <= v["expression"][1] for s in specs)
    assert {s.speaker.split for s in specs} == {"pretrain"}


def test_pool_is_identical_for_any_nj_and_second_run_is_skipped(pool, tmp_path):
    cfg, root = pool
    generate_corpus(cfg, tmp_path / "audio", tmp_path / "data", nj=2, part="pretrain")
    a, b = _snapshot(root), _snapshot(tmp_path)
    assert a.keys() == b.keys() and len(a) > 32
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:3]
    assert generate_corpus(cfg, tmp_path / "audio", tmp_path / "data", nj=2, part="pretrain") == {"skipped": True}


def test_pool_does_not_change_the_evaluation_corpus():
    cfg = load_config(CONFIG)
    assert "pretrain" in cfg
    without = {k: v for k, v in cfg.items() if k != "pretrain"}
    assert plan_corpus(cfg) == plan_corpus(without)
    assert plan_corpus(tiny_config(*POOL_TINY)) == plan_corpus(tiny_config("pretrain.speakers=2"))


def _mtimes(root: Path, folder: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted((root / folder).rglob("*")) if p.is_file()}


def test_eval_and_pool_parts_leave_each_other_alone(tmp_path):
    cfg = tiny_config(*POOL_TINY, *[f"domains.{d}.speakers.{s}=1" for d in ("studio", "phone")
                                    for s in ("train", "dev", "test")])
    out = (tmp_path / "audio", tmp_path / "data")
    generate_corpus(cfg, *out, nj=1)
    generate_corpus(cfg, *out, nj=1, part="pretrain")
    pool_files = _mtimes(tmp_path, "audio/pretrain") | _mtimes(tmp_path, "data/pretrain")
    generate_corpus(cfg, *out, nj=1, force=True)  # regenerating the evaluation sets keeps the pool
    assert _mtimes(tmp_path, "audio/pretrain") | _mtimes(tmp_path, "data/pretrain") == pool_files
    eval_files = _mtimes(tmp_path, "audio/studio") | _mtimes(tmp_path, "data/studio_train")
    cfg["pretrain"]["speakers"] = 2  # a smaller pool: regenerated, stale pool wavs removed, eval untouched
    assert generate_corpus(cfg, *out, nj=1) == {"skipped": True}
    assert generate_corpus(cfg, *out, nj=1, part="pretrain")["utterances"] == {"pretrain": 16}
    assert _mtimes(tmp_path, "audio/studio") | _mtimes(tmp_path, "data/studio_train") == eval_files
    d = DataDir.read(tmp_path / "data" / "pretrain")
    assert {str(p) for p in (tmp_path / "audio" / "pretrain").rglob("*.wav")} == {d.audio_source(u)[0]
                                                                                  for u in d.utts}


def test_cli_writes_the_pool_and_names_a_missing_pretrain_key(tmp_path, capsys):
    args = ["--config", str(CONFIG), "--out-audio", str(tmp_path / "audio"), "--out-data", str(tmp_path / "data"),
            "--nj", "1", "--part", "pretrain", "--set", "pretrain.speakers=2", "--set", "pretrain.utts_per_speaker=4"]
    assert make_synth_corpus.main(args) == 0
    assert len(DataDir.read(tmp_path / "data" / "pretrain")) == 8
    assert not (tmp_path / "data" / "studio_train").exists()
    assert make_synth_corpus.main(args + ["--set", "pretrain=null"]) == 1
    assert "pretrain: missing" in capsys.readouterr().err


@pytest.mark.parametrize("override, key", [
    ("pretrain.utts_per_speaker=6", "pretrain.utts_per_speaker"),
    ("pretrain.speakers=0", "pretrain.speakers"),
    ("pretrain.domains=[studio,radio]", "pretrain.domains"),
    ("pretrain.domains=[]", "pretrain.domains"),
    ("pretrain.variety.snr_db=[45,12]", "pretrain.variety.snr_db"),
    ("pretrain.variety.rt60_prob=1.5", "pretrain.variety.rt60_prob"),
    ("pretrain.variety.expression=[0.5,4]", "pretrain.variety.expression"),
    ("pretrain.variety.reverb=0.3", "pretrain.variety"),
    ("pretrain.voices=3", "pretrain"),
])
def test_bad_pool_values_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(tiny_config(override))


def test_no_domain_may_take_the_pools_names():
    for name in ("pool", "pretrain"):
        cfg = tiny_config()
        cfg["domains"][name] = cfg["domains"].pop("phone")
        with pytest.raises(ConfigError, match=rf"domains\.{name}: .*reserved"):
            validate_config(cfg)

# ------------------------------------------------------------- acoustics
def _studio_specs(cfg, n=6, emotion="neutral"):
    return [s for s in plan_corpus(cfg) if s.domain == "studio" and s.emotion == emotion][:n]


def _measure(smile, spec, names):
    wav = render_utterance(spec)
    return smile.process_signal(wav, spec.sample_rate)[names].to_numpy()[0]


def _with_avd(spec, dim, value):
    avd = list(spec.avd)
    avd[dim] = value
    return dataclasses.replace(spec, avd=tuple(avd))


LOUD, F0 = "loudness_sma3_amean", "F0semitoneFrom27.5Hz_sma3nz_amean"


def test_higher_arousal_is_louder_and_higher_pitched(corpus, smile):
    cfg, _ = corpus
    for spec in _studio_specs(cfg):
        lo = _measure(smile, _with_avd(spec, 0, 0.2), [LOUD, F0])
        hi = _measure(smile, _with_avd(spec, 0, 0.8), [LOUD, F0])
        assert hi[0] > lo[0] * 1.1, f"{spec.utt}: loudness {lo[0]:.3f} -> {hi[0]:.3f}"
        assert hi[1] > lo[1] + 1.0, f"{spec.utt}: F0 {lo[1]:.2f} -> {hi[1]:.2f} semitones"


def test_higher_dominance_is_louder_with_more_low_frequency_energy(corpus, smile):
    cfg, _ = corpus
    names = [LOUD, "alphaRatioV_sma3nz_amean"]  # alpha ratio: energy above 1 kHz over below (dB)
    for spec in _studio_specs(cfg):
        lo = _measure(smile, _with_avd(spec, 2, 0.2), names)
        hi = _measure(smile, _with_avd(spec, 2, 0.8), names)
        assert hi[0] > lo[0], f"{spec.utt}: loudness {lo[0]:.3f} -> {hi[0]:.3f}"
        assert hi[1] < lo[1], f"{spec.utt}: alpha ratio {lo[1]:.2f} -> {hi[1]:.2f} dB"


def test_valence_shapes_the_f0_contour_and_raises_formants(corpus):
    cfg, _ = corpus
    lld = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    fun = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                          feature_level=opensmile.FeatureLevel.Functionals)

    def final_movement(spec):
        # F0 of the last fifth of voiced frames relative to the median: rise > 0, fall < 0
        f0 = lld.process_signal(render_utterance(spec), spec.sample_rate)["F0semitoneFrom27.5Hz_sma3nz"].to_numpy()
        voiced = f0[f0 > 0]
        return voiced[-max(3, voiced.size // 5):].mean() - np.median(voiced)

    ratios = []
    for spec in _studio_specs(cfg, n=8):
        lo, hi = _with_avd(spec, 1, 0.2), _with_avd(spec, 1, 0.8)
        assert final_movement(hi) > final_movement(lo) + 1.0, spec.utt
        t_lo = acoustic_targets(lo, random_streams(lo.seed)["targets"])
        t_hi = acoustic_targets(hi, random_streams(hi.seed)["targets"])
        assert t_hi.formant_scale > t_lo.formant_scale and t_hi.contour > t_lo.contour
        # measured formants, on open vowels (openSMILE's LPC tracker is reliable there), neutral style
        flat = dataclasses.replace(spec.speaker, style={e: {k: 1.0 for k in g} for e, g in spec.speaker.style.items()})
        f1 = [fun.process_signal(render_utterance(dataclasses.replace(
            s, speaker=flat, words=("mala", "sana", "taka"))), 16000)["F1frequency_sma3nz_amean"].iloc[0]
            for s in (lo, hi)]
        ratios.append(f1[1] / f1[0])
    assert np.mean(ratios) > 1.02, ratios


def test_speaker_style_gain_scales_that_speakers_cue(corpus, smile):
    cfg, _ = corpus
    spec = _studio_specs(cfg, n=1, emotion="angry")[0]
    effect = []
    for gain in (0.5, 2.0):
        style = {e: dict(g) for e, g in spec.speaker.style.items()}
        style["angry"]["loudness_db"] = gain
        s = dataclasses.replace(spec, speaker=dataclasses.replace(spec.speaker, style=style))
        effect.append(_measure(smile, _with_avd(s, 0, 0.9), [LOUD])[0] - _measure(smile, _with_avd(s, 0, 0.1), [LOUD])[0])
    assert effect[1] > 1.3 * effect[0] > 0
    gains = [sp.gain("angry", "loudness_db") for sp in {s.speaker.spk: s.speaker for s in plan_corpus(cfg)}.values()]
    assert np.std(np.log(gains)) > 0.2  # speakers really differ in style


def test_phone_domain_is_band_limited_8khz_and_weaker(corpus):
    cfg, _ = corpus
    phone = [s for s in plan_corpus(cfg) if s.domain == "phone"][0]
    wav = render_utterance(phone)
    spec = np.abs(np.fft.rfft(wav)) ** 2
    f = np.fft.rfftfreq(wav.size, 1 / phone.sample_rate)
    assert phone.sample_rate == 8000
    assert spec[(f > 3800)].sum() < 0.01 * spec[(f > 400) & (f < 3000)].sum()
    assert phone.expression < cfg["domains"]["studio"]["expression"]


def test_caption_follows_the_acoustics(corpus):
    cfg, _ = corpus
    spec = dataclasses.replace(_studio_specs(cfg, n=1)[0], emotion="neutral")
    loud = caption_of(_with_avd(_with_avd(spec, 0, 0.98), 2, 0.98), cfg)
    soft = caption_of(_with_avd(_with_avd(spec, 0, 0.02), 2, 0.02), cfg)
    assert "loudly" in loud and "softly" in soft
    assert "studio" in loud
