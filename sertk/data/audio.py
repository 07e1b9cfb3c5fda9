"""Audio reading: soundfile decode, optional segment cut, mono mix, resampling.

The file's own sample rate is always read from the file and the signal is
resampled to the rate the caller asks for; nothing assumes 16 kHz.

One resampler serves every read: soxr's high-quality polyphase filter (via
audresample, installed with opensmile). Its cost does not grow with the
reduced rate ratio, unlike a windowed-sinc kernel (24,414 -> 16,000 Hz reduces
to 12,207 : 8,000), and it matches torchaudio's default to ~1e-4 (1e-3 upsampling) on a tone.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """Unusable audio; the message names the utterance and the file."""


# Part of every cached feature's content key: features computed from audio that
# another resampler produced are never served.
RESAMPLER = "soxr-hq/1"


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Mono float32 ``wav`` at ``target_sr``; ceil(n * target / orig) samples, as torchaudio gives."""
    if orig_sr == target_sr:
        return wav
    import audresample  # imported on first use: validation and listing never pay for it

    out = audresample.resample(np.ascontiguousarray(wav, dtype=np.float32), int(orig_sr), int(target_sr))[0]
    n = -(-wav.size * int(target_sr) // int(orig_sr))
    if out.size < n:  # soxr rounds the length; keep the convention lengths and frame counts rely on
        out = np.pad(out, (0, n - out.size))
    return np.ascontiguousarray(out[:n], dtype=np.float32)


def read_audio(path: str, target_sr: int | None = None, start: float | None = None,
               end: float | None = None, utt: str | None = None,
               min_duration: float = 0.0) -> tuple[np.ndarray, int]:
    """Return (mono float32 waveform, sample rate).

    ``start``/``end`` are seconds (a ``segments`` entry); ``target_sr`` None
    keeps the file's rate. Raises :class:`AudioError` naming ``utt`` and the path.
    """
    who = f"utterance {utt} ({path})" if utt else str(path)
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises several types for bad files
        raise AudioError(f"{who}: cannot read audio: {e}") from e
    sr = info.samplerate
    first = int(round(start * sr)) if start is not None else 0
    last = int(round(end * sr)) if end is not None else -1
    if start is not None and end is not None and end <= start:
        raise AudioError(f"{who}: segment end {end} is not after start {start}")
    try:
        wav, sr = sf.read(path, start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{who}: cannot decode audio: {e}") from e
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if wav.size == 0:
        raise AudioError(f"{who}: audio is empty")
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{who}: audio contains NaN or Inf samples")
    if target_sr is not None and target_sr != sr:
        wav = resample(wav, sr, target_sr)
        sr = target_sr
    if wav.size / sr < min_duration:
        raise AudioError(f"{who}: audio is {wav.size / sr:.3f}s, shorter than the minimum {min_duration}s")
    return np.ascontiguousarray(wav, dtype=np.float32), sr


def read_utterance(datadir, utt: str, target_sr: int | None = None, min_duration: float = 0.0):
    path, start, end = datadir.audio_source(utt)
    return read_audio(path, target_sr, start, end, utt=utt, min_duration=min_duration)


def write_audio(path, wav: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write a waveform (float in [-1, 1]) with soundfile; the format follows the suffix."""
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sr, subtype=subtype)


@dataclass(frozen=True)
class Source:
    """An utterance's audio (file, segment span) and the content key its features are stored under."""

    utt: str
    path: str
    start: float | None
    end: float | None
    key: str

    def describe(self) -> str:
        """One provenance line for the shard's .src file."""
        return f"{self.utt}\t{self.path}\t{self.start}\t{self.end}"


def _file_stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # unreadable: the extraction names the utterance when it gets there
    return st.st_size, st.st_mtime_ns


def content_key(real_path: str, start: float | None, end: float | None, stat: tuple[int, int] | None) -> str:
    """Digest of what an utterance's audio is: resampler, file, span, size and mtime (stat only, no decoding)."""
    text = f"{RESAMPLER}\t{real_path}\t{start}\t{end}\t{stat}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def utterance_sources(datadir) -> list[Source]:
    """Every utterance of a data dir with its content key, in data dir order."""
    stats: dict[str, tuple[int, int] | None] = {}
    out = []
    for utt in datadir.utts:
        path, start, end = datadir.audio_source(utt)
        real = os.path.realpath(path)
        if real not in stats:
            stats[real] = _file_stat(real)
        out.append(Source(utt, path, start, end, content_key(real, start, end, stats[real])))
    return out
