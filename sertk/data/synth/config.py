"""Validation of a synthetic-corpus config (see egs/mini_emo/conf/synth.yaml).

Every number that defines the corpus lives in the config, so a bad value
fails here with the dotted key that is wrong, before any audio is made.
A/V/D are on a 0-1 scale; ``avd_reference`` is the point the acoustic cues
are measured from (0.5 = the middle of each dimension).
"""
from __future__ import annotations

from typing import Any

from sertk.common.config import ConfigError

DIMS = ("arousal", "valence", "dominance")
# Acoustic cues that A/V/D drive (renderer units, per unit of A/V/D above the reference):
CUES = (
    "f0_level_st",    # F0 level shift, semitones
    "f0_range_log",   # log factor on the size of pitch accents
    "loudness_db",    # active-speech level, dB
    "rate_log",       # log factor on the speaking rate
    "brightness",     # flatter spectral tilt (glottal source low-pass opens)
    "contour",        # F0 contour shape: >0 rising/flat, <0 falling with steep declination
    "formant_shift",  # relative shift of all formants (smiling shortens the tract)
    "low_shelf_db",   # low-frequency emphasis below ~300 Hz, dB
)
VOICE_QUALITIES = ("tension", "breathiness", "creak", "smile")
# Per-speaker style gains exist for every cue plus the emotion's voice quality.
STYLE_KEYS = CUES + ("voice",)
SPLITS = ("train", "dev", "test")
# A domain's speakers appended after the whole roster (see speakers.speaker_roster): they enlarge its dev or
# test set while every existing speaker, and so the training sets, stay byte-identical.
ADDED_SPEAKERS = "added_speakers"
ADDED_SPLITS = ("dev", "test")
GENDERS = ("female", "male")
CHANNEL_KEYS = {"snr_db", "rt60", "band", "agc", "codec", "gain_db_sd", "noise_color"}
TOP_KEYS = {"seed", "name", "synth_rate", "duration", "avd_reference", "emotions", "variation",
            "cues", "speakers", "lexicon", "domains", "pretrain"}
# The pre-training pool: config key, speakers' split and home, data dir and audio folder all
# read "pretrain"; its speaker ids start with "pool-". Neither may name a domain, so that
# the pool's ids and folders can never collide with an evaluation set's.
POOL = "pretrain"
POOL_PREFIX = "pool"
POOL_KEYS = {"speakers", "utts_per_speaker", "domains", "variety"}
VARIETY_KEYS = {"snr_db", "rt60", "rt60_prob", "expression"}


def _fail(key: str, msg: str):
    raise ConfigError(f"synth config: {key}: {msg}")


def _num(cfg: dict, key: str, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if key not in cfg:
        _fail(f"{where}.{key}", "missing")
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(f"{where}.{key}", f"expected a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        _fail(f"{where}.{key}", f"{v} outside [{lo}, {hi}]")
    return float(v)


def _pair(cfg: dict, key: str, where: str, lo: float | None = None, ordered: bool = True) -> tuple[float, float]:
    v = cfg.get(key)
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
        _fail(f"{where}.{key}", f"expected two numbers [a, b], got {v!r}")
    if ordered and v[0] > v[1]:
        _fail(f"{where}.{key}", f"first value {v[0]} is larger than second {v[1]}")
    if lo is not None and min(v) < lo:
        _fail(f"{where}.{key}", f"values must be >= {lo}, got {v}")
    return float(v[0]), float(v[1])


def _mapping(cfg: Any, where: str, allowed: set | None = None) -> dict:
    if not isinstance(cfg, dict):
        _fail(where, f"expected a mapping, got {cfg!r}")
    if allowed is not None:
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return cfg


def _avd(v: Any, where: str) -> tuple[float, float, float]:
    if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
        _fail(where, f"expected [arousal, valence, dominance], got {v!r}")
    if any(not 0.0 <= x <= 1.0 for x in v):
        _fail(where, f"A/V/D are on a 0-1 scale, got {v}")
    return tuple(float(x) for x in v)  # type: ignore[return-value]


def validate_config(cfg: dict) -> dict:
    """Check a synth config; return it unchanged (raises ConfigError naming the key)."""
    _mapping(cfg, "top level", TOP_KEYS)
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        _fail("seed", f"expected an integer, got {cfg.get('seed')!r}")
    _num(cfg, "synth_rate", "top", 16000, 48000)
    dmin, dmax = _pair(cfg, "duration", "top", lo=0.3)
    if dmax - dmin < 0.5:
        _fail("duration", "the range must be at least 0.5 s wide")
    _avd(cfg.get("avd_reference"), "avd_reference")

    emotions = _mapping(cfg.get("emotions"), "emotions")
    if len(emotions) < 2:
        _fail("emotions", "need at least two emotions")
    for name, e in emotions.items():
        e = _mapping(e, f"emotions.{name}", {"avd", "voice"})
        _avd(e.get("avd"), f"emotions.{name}.avd")
        for q, v in _mapping(e.get("voice") or {}, f"emotions.{name}.voice", set(VOICE_QUALITIES)).items():
            _num({q: v}, q, f"emotions.{name}.voice", 0.0, 3.0)

    var = _mapping(cfg.get("variation"), "variation",
                   {"avd_sd", "intensity", "style_emotion_sd", "style_cue_sd", "style_cell_sd", "utterance"})
    _num(var, "avd_sd", "variation", 0.0, 0.5)
    _pair(var, "intensity", "variation", lo=0.0)
    for k in ("style_emotion_sd", "style_cue_sd", "style_cell_sd"):
        _num(var, k, "variation", 0.0, 2.0)
    utt = _mapping(var.get("utterance"), "variation.utterance", {"f0_st", "loudness_db", "rate_log"})
    for k in ("f0_st", "loudness_db", "rate_log"):
        _num(utt, k, "variation.utterance", 0.0, 10.0)

    cues = _mapping(cfg.get("cues"), "cues", set(CUES))
    for cue, dims in cues.items():
        for dim, v in _mapping(dims, f"cues.{cue}", set(DIMS)).items():
            _num({dim: v}, dim, f"cues.{cue}")

    spk = _mapping(cfg.get("speakers"), "speakers",
                   {"f0_hz", "vtl_scale", "syllable_s", "f0_range_st", "loudness_db", "breathiness",
                    "jitter", "shimmer_db", "brightness", "low_shelf_db"})
    def _mean_sd(node: dict, key: str, where: str) -> None:
        if _pair(node, key, where, ordered=False)[1] < 0:
            _fail(f"{where}.{key}", "the second value is a standard deviation and must be >= 0")

    for k in ("f0_hz", "vtl_scale"):
        g = _mapping(spk.get(k), f"speakers.{k}", set(GENDERS))
        for gender in GENDERS:
            _mean_sd(g, gender, f"speakers.{k}")
    for k in ("syllable_s", "f0_range_st", "loudness_db", "brightness", "low_shelf_db"):
        _mean_sd(spk, k, "speakers")
    for k in ("breathiness", "jitter", "shimmer_db"):
        _pair(spk, k, "speakers", lo=0.0)  # uniform range

    lex = _mapping(cfg.get("lexicon"), "lexicon", {"seed", "words", "syllables", "sentences", "sentence_syllables"})
    _num(lex, "seed", "lexicon")
    _num(lex, "words", "lexicon", 2)
    _num(lex, "sentences", "lexicon", 1)
    _pair(lex, "syllables", "lexicon", lo=1)
    _pair(lex, "sentence_syllables", "lexicon", lo=2)

    domains = _mapping(cfg.get("domains"), "domains")
    if not domains:
        _fail("domains", "need at least one domain")
    for name, d in domains.items():
        where = f"domains.{name}"
        if not str(name).replace("_", "").isalnum():
            _fail(where, "domain names must be alphanumeric (they prefix speaker and utterance ids)")
        if name in (POOL, POOL_PREFIX):
            _fail(where, f"'{name}' is reserved for the pre-training pool (its folders and speaker ids)")
        d = _mapping(d, where, {"sample_rate", "speakers", ADDED_SPEAKERS, "utts_per_speaker", "expression",
                                "channel"})
        sr = _num(d, "sample_rate", where, 8000, cfg["synth_rate"])
        if int(cfg["synth_rate"]) % int(sr):
            _fail(f"{where}.sample_rate", f"{sr} must divide synth_rate {cfg['synth_rate']}")
        sp = _mapping(d.get("speakers"), f"{where}.speakers", set(SPLITS))
        for s in SPLITS:
            _num(sp, s, f"{where}.speakers", 1)
        added = _mapping(d.get(ADDED_SPEAKERS) or {}, f"{where}.{ADDED_SPEAKERS}", set(ADDED_SPLITS))
        for s in added:
            if isinstance(added[s], float) and not added[s].is_integer():
                _fail(f"{where}.{ADDED_SPEAKERS}.{s}", f"expected a whole number of speakers, got {added[s]}")
            _num(added, s, f"{where}.{ADDED_SPEAKERS}", 0)
        _utts_per_speaker(d, where, len(emotions))
        _num(d, "expression", where, 0.0, 3.0)
        ch = _mapping(d.get("channel"), f"{where}.channel", CHANNEL_KEYS)
        _pair(ch, "snr_db", f"{where}.channel")
        if ch.get("rt60") is not None:
            _pair(ch, "rt60", f"{where}.channel", lo=0.05)
        if ch.get("band") is not None:
            lo_hz, hi_hz = _pair(ch, "band", f"{where}.channel", lo=20)
            if hi_hz >= sr / 2:
                _fail(f"{where}.channel.band", f"upper edge {hi_hz} Hz must be below Nyquist ({sr / 2} Hz)")
        _num(ch, "agc", f"{where}.channel", 0.0, 1.0)
        _num(ch, "gain_db_sd", f"{where}.channel", 0.0, 20.0)
        if ch.get("codec") not in (None, "mulaw"):
            _fail(f"{where}.channel.codec", f"unknown codec {ch.get('codec')!r}; use mulaw or null")
        if ch.get("noise_color") not in ("white", "pink", "brown"):
            _fail(f"{where}.channel.noise_color", f"expected white, pink or brown, got {ch.get('noise_color')!r}")
    if cfg.get(POOL) is not None:
        _validate_pool(cfg[POOL], list(domains), len(emotions))
    return cfg


def _utts_per_speaker(node: dict, where: str, n_emotions: int) -> None:
    n_utt = _num(node, "utts_per_speaker", where, 1)
    if int(n_utt) % n_emotions:
        _fail(f"{where}.utts_per_speaker", f"{int(n_utt)} is not a multiple of the {n_emotions} emotions "
              "(every speaker says every emotion equally often)")


def _validate_pool(pool: Any, domains: list[str], n_emotions: int) -> None:
    """The ``pretrain`` block; ``variety`` and each of its keys are optional (absent: the domain's own)."""
    pool = _mapping(pool, POOL, POOL_KEYS)
    _num(pool, "speakers", POOL, 1)
    _utts_per_speaker(pool, POOL, n_emotions)
    names = pool.get("domains")
    if not (isinstance(names, list) and names and len(set(map(str, names))) == len(names)):
        _fail(f"{POOL}.domains", f"expected a non-empty list of distinct domain names, got {names!r}")
    unknown = [n for n in names if n not in domains]
    if unknown:
        _fail(f"{POOL}.domains", f"unknown domain(s) {unknown}; the config has {domains}")
    where = f"{POOL}.variety"
    v = _mapping(pool.get("variety") or {}, where, VARIETY_KEYS)
    if "snr_db" in v:
        _pair(v, "snr_db", where)
    if ("rt60" in v) != ("rt60_prob" in v):
        _fail(f"{where}.{'rt60_prob' if 'rt60' in v else 'rt60'}", "rt60 and rt60_prob go together")
    if "rt60" in v:
        _pair(v, "rt60", where, lo=0.05)
        _num(v, "rt60_prob", where, 0.0, 1.0)
    if "expression" in v and _pair(v, "expression", where, lo=0.0)[1] > 3.0:
        _fail(f"{where}.expression", f"values must be <= 3.0, got {v['expression']}")


def pool_config(cfg: dict) -> dict:
    """The validated ``pretrain`` block; a clear error when the config has none."""
    validate_config(cfg)
    if cfg.get(POOL) is None:
        _fail(POOL, "missing: the pre-training pool needs a 'pretrain' block (speakers, utts_per_speaker, "
              "domains, variety; see egs/mini_emo/conf/synth.yaml)")
    return cfg[POOL]
