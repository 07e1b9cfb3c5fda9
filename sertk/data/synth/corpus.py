"""Plan, render and write a synthetic corpus: wav files + one data dir per domain and split.

Planning (speakers, labels, sentences, channel draws, per-utterance seeds)
happens in one process from the config seed; rendering is a pure function of
each utterance's spec, so the corpus is byte-identical for any ``nj``.
A manifest with the config hash makes a second run with the same config a
no-op.
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
from sertk.data.synth.config import validate_config
from sertk.data.synth.lexicon import make_lexicon, make_sentences
from sertk.data.synth.prosody import acoustic_targets
from sertk.data.synth.render import random_streams, render_utterance
from sertk.data.synth.spec import UttSpec
from sertk.data.synth.speakers import draw_speaker, speaker_roster

log = logging.getLogger(__name__)
MANIFEST = "synth_manifest.json"


def utt_seed(seed: int, utt: str) -> int:
    """A per-utterance seed that depends only on the corpus seed and the id."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{utt}".encode()).digest()[:8], "little")


def sentences_of(cfg: dict) -> list[list[str]]:
    lex = cfg["lexicon"]
    words = make_lexicon(int(lex["words"]), tuple(lex["syllables"]), int(lex["seed"]))
    return make_sentences(words, int(lex["sentences"]), tuple(lex["sentence_syllables"]), int(lex["seed"]))


def plan_corpus(cfg: dict) -> list[UttSpec]:
    """Every utterance of the corpus, in a fixed order (domain, split, speaker, number)."""
    validate_config(cfg)
    seed = int(cfg["seed"])
    sentences = sentences_of(cfg)
    emotions = list(cfg["emotions"])
    ref = tuple(float(x) for x in cfg["avd_reference"])
    var = cfg["variation"]
    domains = list(cfg["domains"])
    specs = []
    for spk_idx, (spk, gender, domain, split) in enumerate(speaker_roster(cfg)):
        d = cfg["domains"][domain]
        dom_idx = domains.index(domain)
        profile = draw_speaker(cfg, spk, gender, domain, split, np.random.default_rng([seed, 1, dom_idx, spk_idx]))
        rng = np.random.default_rng([seed, 2, dom_idx, spk_idx])
        n = int(d["utts_per_speaker"])
        order = np.repeat(np.arange(len(emotions)), n // len(emotions))
        rng.shuffle(order)
        ch = d["channel"]
        for j, e_idx in enumerate(order):
            emotion = emotions[int(e_idx)]
            centroid = np.asarray(cfg["emotions"][emotion]["avd"], dtype=np.float64)
            intensity = float(rng.uniform(*var["intensity"]))
            avd = np.asarray(ref) + intensity * (centroid - np.asarray(ref)) + rng.normal(0.0, var["avd_sd"], 3)
            avd = np.clip(np.round(avd, 3), 0.02, 0.98)
            sentence = sentences[int(rng.integers(len(sentences)))]
            snr = float(rng.uniform(*ch["snr_db"]))
            rt60 = float(rng.uniform(*ch["rt60"])) if ch.get("rt60") else None
            gain = float(rng.normal(0.0, ch["gain_db_sd"]))
            utt = f"{spk}-{j + 1:04d}"
            specs.append(UttSpec(
                utt=utt, speaker=profile, emotion=emotion, avd=tuple(float(x) for x in avd),
                intensity=intensity, words=tuple(sentence), seed=utt_seed(seed, utt), avd_reference=ref,
                cues=cfg["cues"], voice=dict(cfg["emotions"][emotion].get("voice") or {}),
                utterance_sd=var["utterance"], expression=float(d["expression"]), channel=ch, snr_db=snr,
                rt60=rt60, gain_db=gain, synth_rate=int(cfg["synth_rate"]), sample_rate=int(d["sample_rate"]),
                duration=(float(cfg["duration"][0]), float(cfg["duration"][1]))))
    return specs


def caption_of(spec: UttSpec, cfg: dict) -> str:
    tg = acoustic_targets(spec, random_streams(spec.seed)["targets"])
    f0 = {g: float(v[0]) for g, v in cfg["speakers"]["f0_hz"].items()}
    return describe(spec, tg, f0, float(cfg["speakers"]["syllable_s"][0]))


def wav_path(out_audio: Path, spec: UttSpec) -> Path:
    return out_audio / spec.domain / spec.speaker.spk / f"{spec.utt}.wav"


def _render_to_file(job: tuple[UttSpec, str]) -> tuple[str, float]:
    spec, path = job
    wav = render_utterance(spec)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wav, int(spec.sample_rate), subtype="PCM_16", format="WAV")
    return spec.utt, wav.size / spec.sample_rate


def data_dirs(specs: list[UttSpec], cfg: dict, out_audio: Path) -> dict[str, DataDir]:
    """``<domain>_<split>`` -> DataDir with every per-utterance file."""
    out: dict[str, DataDir] = {}
    for spec in specs:
        name = f"{spec.domain}_{spec.speaker.split}"
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


def remove_stale_audio(out_audio: Path, cfg: dict, keep: set[str]) -> int:
    """Delete wavs under this config's domain folders that the current corpus does not use."""
    removed = 0
    for domain in cfg["domains"]:
        for p in sorted((out_audio / domain).glob("*/*.wav")):
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


def corpus_hash(cfg: dict, out_audio: Path) -> str:
    return hash_obj({"config": cfg, "code": source_digest(), "audio": str(out_audio)})


def is_up_to_date(cfg: dict, out_audio: Path, out_data: Path) -> bool:
    manifest = out_data / MANIFEST
    if not manifest.is_file():
        return False
    try:
        m = json.loads(manifest.read_text())
    except ValueError:
        return False
    if m.get("hash") != corpus_hash(cfg, out_audio):
        return False
    for s in m.get("sets", []):
        scp = out_data / s / "wav.scp"
        if not scp.is_file():
            return False
        for line in scp.read_text().splitlines():
            if not os.path.exists(line.split(maxsplit=1)[1]):
                return False
    return True


def generate_corpus(cfg: dict, out_audio: str | Path, out_data: str | Path, nj: int = 1,
                    force: bool = False) -> dict:
    """Write the corpus; return a summary (sets, utterance counts, seconds of audio, wall time)."""
    validate_config(cfg)
    out_audio, out_data = Path(out_audio).resolve(), Path(out_data)
    if not force and is_up_to_date(cfg, out_audio, out_data):
        log.info("synthetic corpus in %s is up to date (same config and generator); nothing to do", out_data)
        return {"skipped": True}
    start = time.time()
    specs = plan_corpus(cfg)
    jobs = [(s, str(wav_path(out_audio, s))) for s in specs]
    if nj > 1:
        with ProcessPoolExecutor(max_workers=nj) as ex:
            durations = dict(ex.map(_render_to_file, jobs, chunksize=8))
    else:
        durations = dict(map(_render_to_file, jobs))
    dirs = data_dirs(specs, cfg, out_audio)
    for name, d in dirs.items():
        d.write(out_data / name)
    removed = remove_stale_audio(out_audio, cfg, {p for _, p in jobs})
    if removed:
        log.info("removed %d wav files of an earlier corpus from %s", removed, out_audio)
    dur = np.array(list(durations.values()))
    summary = {
        "hash": corpus_hash(cfg, out_audio), "sets": sorted(dirs), "audio_dir": str(out_audio),
        "utterances": {k: len(v) for k, v in sorted(dirs.items())}, "hours": round(float(dur.sum()) / 3600, 4),
        "duration_s": {"min": round(float(dur.min()), 3), "mean": round(float(dur.mean()), 3),
                       "max": round(float(dur.max()), 3)},
        "wall_s": round(time.time() - start, 2), "nj": nj, "config": cfg,
    }
    write_json_atomic(out_data / MANIFEST, summary)
    log.info("wrote %d utterances (%.1f min of audio) in %s in %.1fs with nj=%d",
             len(specs), dur.sum() / 60, ", ".join(sorted(dirs)), summary["wall_s"], nj)
    return summary
