"""Plan, render and write a synthetic corpus: wav files + one data dir per domain and split
(part ``eval``), or the pre-training pool's one data dir (part ``pretrain``).

Planning (speakers, labels, sentences, channel draws, per-utterance seeds)
happens in one process from the config seed; rendering is a pure function of
each utterance's spec, so the corpus is byte-identical for any ``nj``.
A manifest per part with the config hash makes a second run with the same
config a no-op.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from sertk.common.fileio import atomic_path, hash_obj, write_json_atomic
from sertk.data.datadir import DataDir
from sertk.data.synth.caption import describe
from sertk.data.synth.config import POOL, pool_config, validate_config
from sertk.data.synth.lexicon import make_lexicon, make_sentences
from sertk.data.synth.prosody import acoustic_targets
from sertk.data.synth.render import random_streams, render_utterance
from sertk.data.synth.spec import UttSpec
from sertk.data.synth.speakers import SpeakerProfile, draw_speaker, pool_roster, speaker_roster

log = logging.getLogger(__name__)
MANIFEST = "synth_manifest.json"


def utt_seed(seed: int, utt: str) -> int:
    """A per-utterance seed that depends only on the corpus seed and the id."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{utt}".encode()).digest()[:8], "little")


def sentences_of(cfg: dict) -> list[list[str]]:
    lex = cfg["lexicon"]
    words = make_lexicon(int(lex["words"]), tuple(lex["syllables"]), int(lex["seed"]))
    return make_sentences(words, int(lex["sentences"]), tuple(lex["sentence_syllables"]), int(lex["seed"]))


def balanced_order(n: int, n_emotions: int, rng: np.random.Generator, n_domains: int = 1,
                   rotate: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(emotion index, domain index) per utterance, shuffled: every emotion equally often and,
    within each emotion, the domains in turn (``rotate`` moves the leftover cells across speakers)."""
    per = n // n_emotions
    emotion = np.repeat(np.arange(n_emotions), per)
    domain = (np.arange(n) % per + rotate) % n_domains
    perm = rng.permutation(n)
    return emotion[perm], domain[perm]


def channel_draws(d: dict, rng: np.random.Generator, variety: dict | None = None) -> dict:
    """One utterance's channel draws from domain ``d``; the pool's ``variety`` then widens them.

    Without ``variety`` the draws (and their order) are those the evaluation corpus was made with.
    """
    ch, v = d["channel"], variety or {}
    x = {"snr_db": float(rng.uniform(*ch["snr_db"])),
         "rt60": float(rng.uniform(*ch["rt60"])) if ch.get("rt60") else None,
         "gain_db": float(rng.normal(0.0, ch["gain_db_sd"])), "expression": float(d["expression"])}
    if v.get("snr_db"):
        x["snr_db"] = float(rng.uniform(*v["snr_db"]))
    if v.get("rt60") and rng.random() < float(v["rt60_prob"]):
        x["rt60"] = float(rng.uniform(*v["rt60"]))
    if v.get("expression"):
        x["expression"] = float(rng.uniform(*v["expression"]))
    return x


def speaker_specs(cfg: dict, sentences: list[list[str]], profile: SpeakerProfile, n: int,
                  rng: np.random.Generator, domains: list[str], variety: dict | None = None,
                  rotate: int = 0) -> list[UttSpec]:
    """A speaker's ``n`` utterances: labels, sentence and channel drawn in turn from ``rng``."""
    emotions = list(cfg["emotions"])
    ref = tuple(float(x) for x in cfg["avd_reference"])
    var = cfg["variation"]
    specs = []
    for j, (e_idx, d_idx) in enumerate(zip(*balanced_order(n, len(emotions), rng, len(domains), rotate))):
        emotion, domain = emotions[int(e_idx)], domains[int(d_idx)]
        centroid = np.asarray(cfg["emotions"][emotion]["avd"], dtype=np.float64)
        intensity = float(rng.uniform(*var["intensity"]))
        avd = np.asarray(ref) + intensity * (centroid - np.asarray(ref)) + rng.normal(0.0, var["avd_sd"], 3)
        avd = np.clip(np.round(avd, 3), 0.02, 0.98)
        sentence = sentences[int(rng.integers(len(sentences)))]
        d = cfg["domains"][domain]
        ch = channel_draws(d, rng, variety)
        utt = f"{profile.spk}-{j + 1:04d}"
        specs.append(UttSpec(
            utt=utt, speaker=profile, domain=domain, emotion=emotion, avd=tuple(float(x) for x in avd),
            intensity=intensity, words=tuple(sentence), seed=utt_seed(int(cfg["seed"]), utt), avd_reference=ref,
            cues=cfg["cues"], voice=dict(cfg["emotions"][emotion].get("voice") or {}),
            utterance_sd=var["utterance"], expression=ch["expression"], channel=d["channel"],
            snr_db=ch["snr_db"], rt60=ch["rt60"], gain_db=ch["gain_db"], synth_rate=int(cfg["synth_rate"]),
            sample_rate=int(d["sample_rate"]), duration=(float(cfg["duration"][0]), float(cfg["duration"][1]))))
    return specs


def plan_corpus(cfg: dict) -> list[UttSpec]:
    """Every evaluation utterance, in a fixed order (domain, split, speaker, number; added speakers last)."""
    validate_config(cfg)
    seed = int(cfg["seed"])
    sentences = sentences_of(cfg)
    domains = list(cfg["domains"])
    specs = []
    for spk_idx, (spk, gender, domain, split) in enumerate(speaker_roster(cfg)):
        dom_idx = domains.index(domain)
        profile = draw_speaker(cfg, spk, gender, domain, split, np.random.default_rng([seed, 1, dom_idx, spk_idx]))
        rng = np.random.default_rng([seed, 2, dom_idx, spk_idx])
        specs += speaker_specs(cfg, sentences, profile, int(cfg["domains"][domain]["utts_per_speaker"]), rng,
                               [domain])
    return specs


def plan_pool(cfg: dict) -> list[UttSpec]:
    """Every utterance of the pre-training pool, in a fixed order (speaker, number).

    Its speakers are drawn from the same population on their own RNG streams
    (``[seed, 11 | 12, idx]``), so adding or resizing the pool leaves the
    evaluation corpus byte-identical.
    """
    pool = pool_config(cfg)
    seed = int(cfg["seed"])
    sentences = sentences_of(cfg)
    specs = []
    for idx, (spk, gender) in enumerate(pool_roster(int(pool["speakers"]))):
        profile = draw_speaker(cfg, spk, gender, POOL, POOL, np.random.default_rng([seed, 11, idx]))
        rng = np.random.default_rng([seed, 12, idx])
        specs += speaker_specs(cfg, sentences, profile, int(pool["utts_per_speaker"]), rng, list(pool["domains"]),
                               pool.get("variety") or {}, rotate=idx)
    return specs


def caption_of(spec: UttSpec, cfg: dict) -> str:
    tg = acoustic_targets(spec, random_streams(spec.seed)["targets"])
    f0 = {g: float(v[0]) for g, v in cfg["speakers"]["f0_hz"].items()}
    return describe(spec, tg, f0, float(cfg["speakers"]["syllable_s"][0]))


def wav_path(out_audio: Path, spec: UttSpec) -> Path:
    """``<out-audio>/<speaker's home>/<speaker>/<utt>.wav``: a domain for evaluation speakers, ``pretrain``
    for the pool's, so that each part owns its folders."""
    return out_audio / spec.speaker.domain / spec.speaker.spk / f"{spec.utt}.wav"


def set_name(spec: UttSpec) -> str:
    """The data dir of an utterance: ``<domain>_<split>``, or ``pretrain`` for the whole pool."""
    split = spec.speaker.split
    return split if split == POOL else f"{spec.domain}_{split}"


def _render_to_file(job: tuple[UttSpec, str]) -> tuple[str, float]:
    spec, path = job
    wav = render_utterance(spec)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wav, int(spec.sample_rate), subtype="PCM_16", format="WAV")
    return spec.utt, wav.size / spec.sample_rate


def data_dirs(specs: list[UttSpec], cfg: dict, out_audio: Path) -> dict[str, DataDir]:
    """``<domain>_<split>`` (or ``pretrain``) -> DataDir with every per-utterance file."""
    out: dict[str, DataDir] = {}
    for spec in specs:
        name = set_name(spec)
        d = out.setdefault(name, DataDir({k: {} for k in (
            "wav.scp", "utt2spk", "utt2emo", "utt2avd", "utt2gender", "utt2domain", "text", "utt2caption")}))
        t = d.tables
        u = spec.utt
        t["wav.scp"][u] = str(wav_path(out_audio, spec))
        t["utt2spk"][u] = spec.speaker.spk
        t["utt2emo"][u] = spec.emotion
        t["utt2avd"][u] = " ".join(f"{v:.3f}" for v in spec.avd)
        t["utt2gender"][u] = spec.speaker.gender
        t["utt2domain"][u] = spec.domain
        t["text"][u] = " ".join(spec.words)
        t["utt2caption"][u] = caption_of(spec, cfg)
    return out


def remove_stale_audio(out_audio: Path, folders: set[str], keep: set[str]) -> int:
    """Delete wavs under this part's folders that the current corpus does not use."""
    removed = 0
    for folder in sorted(folders):
        for p in sorted((out_audio / folder).glob("*/*.wav")):
            if str(p) not in keep:
                p.unlink()
                removed += 1
    return removed


def source_digest() -> str:
    """Digest of the generator's own code: a changed synthesiser regenerates the corpus."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(here.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


PARTS = {"eval": plan_corpus, POOL: plan_pool}


def part_config(cfg: dict, part: str) -> dict:
    """The config a part depends on: the pool's settings never make the evaluation corpus stale."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {sorted(PARTS)}")
    if part == POOL:
        pool_config(cfg)
        return cfg
    return {k: v for k, v in cfg.items() if k != POOL}


def manifest_path(out_data: Path, part: str) -> Path:
    """Each part has its own manifest, so generating one never makes the other stale."""
    return out_data / POOL / MANIFEST if part == POOL else out_data / MANIFEST


def corpus_hash(cfg: dict, out_audio: Path) -> str:
    return hash_obj({"config": cfg, "code": source_digest(), "audio": str(out_audio)})


def is_up_to_date(cfg: dict, out_audio: Path, out_data: Path, part: str = "eval") -> bool:
    manifest = manifest_path(Path(out_data), part)
    if not manifest.is_file():
        return False
    try:
        m = json.loads(manifest.read_text())
    except ValueError:
        return False
    if m.get("hash") != corpus_hash(part_config(cfg, part), out_audio):
        return False
    for s in m.get("sets", []):
        scp = out_data / s / "wav.scp"
        if not scp.is_file():
            return False
        for line in scp.read_text().splitlines():
            if not os.path.exists(line.split(maxsplit=1)[1]):
                return False
    return True


def _render_all(specs: list[UttSpec], out_audio: Path, nj: int) -> dict[str, float]:
    """utt -> seconds, writing every wav (the same bytes for any ``nj``)."""
    jobs = [(s, str(wav_path(out_audio, s))) for s in specs]
    if nj > 1:
        with ProcessPoolExecutor(max_workers=nj) as ex:
            return dict(ex.map(_render_to_file, jobs, chunksize=8))
    return dict(map(_render_to_file, jobs))


def generate_corpus(cfg: dict, out_audio: str | Path, out_data: str | Path, nj: int = 1,
                    force: bool = False, part: str = "eval") -> dict:
    """Write one part of the corpus; return a summary (sets, utterance counts, seconds of audio, wall time).

    ``eval``: the ``<domain>_<split>`` data dirs; ``pretrain``: the pool's one
    data dir. Each part has its own manifest and audio folders and leaves the
    other's files alone.
    """
    validate_config(cfg)
    out_audio, out_data = Path(out_audio).resolve(), Path(out_data)
    pcfg = part_config(cfg, part)
    if not force and is_up_to_date(cfg, out_audio, out_data, part):
        log.info("synthetic %s corpus in %s is up to date (same config and generator); nothing to do", part, out_data)
        return {"skipped": True}
    start = time.time()
    specs = PARTS[part](cfg)
    durations = _render_all(specs, out_audio, nj)
    dirs = data_dirs(specs, cfg, out_audio)
    for name, d in dirs.items():
        d.write(out_data / name)
    keep = {str(wav_path(out_audio, s)) for s in specs}
    removed = remove_stale_audio(out_audio, {s.speaker.domain for s in specs}, keep)
    if removed:
        log.info("removed %d wav files of an earlier corpus from %s", removed, out_audio)
    dur = np.array(list(durations.values()))
    summary = {
        "part": part, "hash": corpus_hash(pcfg, out_audio), "sets": sorted(dirs), "audio_dir": str(out_audio),
        "utterances": {k: len(v) for k, v in sorted(dirs.items())}, "hours": round(float(dur.sum()) / 3600, 4),
        "duration_s": {"min": round(float(dur.min()), 3), "mean": round(float(dur.mean()), 3),
                       "max": round(float(dur.max()), 3)},
        "wall_s": round(time.time() - start, 2), "nj": nj, "config": pcfg,
    }
    write_json_atomic(manifest_path(out_data, part), summary)
    log.info("wrote %d utterances (%.1f min of audio) in %s in %.1fs with nj=%d",
             len(specs), dur.sum() / 60, ", ".join(sorted(dirs)), summary["wall_s"], nj)
    return summary
