"""The pre-training pool as zoo trainers see it: a data dir held in memory.

Stage 0 reads the pool's audio once per model (decoded, mono, resampled),
keeps its labels, text and captions, and holds out a few speakers as the
pool's own dev set for checkpoint selection. No mini_emo evaluation set is
ever read here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sertk.common.fileio import hash_obj, hash_paths
from sertk.data.audio import read_utterance
from sertk.data.datadir import DataDir

MANIFEST = "synth_manifest.json"


@dataclass
class Pool:
    datadir: DataDir
    path: Path
    digest: str
    _audio: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "Pool":
        path = Path(path)
        d = DataDir.read(path)
        # the tables, not the manifest (it records wall time and nj); the audio is named by the generator hash
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name != MANIFEST)
        generator = json.loads((path / MANIFEST).read_text()).get("hash") if (path / MANIFEST).is_file() else None
        for need in ("utt2emo", "utt2avd", "text", "utt2caption"):
            if not d.has(need):
                raise ValueError(f"{path}: the pre-training pool needs {need} (generate it with "
                                 f"`sertk make-synth-corpus --part pretrain`)")
        return cls(d, path, hash_obj([hash_paths(files, content=True), generator]))

    @property
    def utts(self) -> list[str]:
        return self.datadir.utts

    @property
    def speakers(self) -> list[str]:
        return sorted(self.datadir.spk2utt)

    @property
    def emotions(self) -> list[str]:
        return sorted(set(self.datadir.utt2emo.values()))

    def field(self, name: str) -> dict[str, str]:
        return self.datadir.field(name)

    def split(self, dev_speakers: int) -> tuple[list[str], list[str]]:
        """(train utts, dev utts): every k-th speaker is held out, genders and domains stay mixed."""
        spk = self.speakers
        if dev_speakers <= 0:
            return self.utts, []
        if dev_speakers >= len(spk):
            raise ValueError(f"{self.path}: {dev_speakers} dev speakers of only {len(spk)}")
        step = len(spk) / dev_speakers
        held = {spk[int(i * step)] for i in range(dev_speakers)}
        u2s = self.datadir.utt2spk
        return [u for u in self.utts if u2s[u] not in held], [u for u in self.utts if u2s[u] in held]

    def audio(self, sample_rate: int) -> dict[str, np.ndarray]:
        """utt -> float32 waveform at ``sample_rate``, decoded once and kept."""
        if sample_rate not in self._audio:
            self._audio[sample_rate] = {u: read_utterance(self.datadir, u, sample_rate)[0].astype(np.float32)
                                        for u in self.utts}
        return self._audio[sample_rate]

    def summary(self) -> dict:
        dom = self.datadir.field("utt2domain") if self.datadir.has("utt2domain") else {}
        import soundfile as sf
        minutes = sum(sf.info(self.datadir.audio_source(u)[0]).duration for u in self.utts) / 60
        return {"path": str(self.path), "utterances": len(self.utts), "speakers": len(self.speakers),
                "domains": sorted(set(dom.values())), "minutes": round(minutes, 2), "digest": self.digest[:16]}
