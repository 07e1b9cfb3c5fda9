"""Stage completion markers that know what they were computed from.

A marker stores a digest of a stage's inputs (file contents of small text
inputs, size+mtime of large trees), its options and its config. A stage whose
digest is unchanged and whose outputs still exist is reported "up to date" and
skipped; any change re-runs it, so stale outputs are never silently reused.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from sertk.common.fileio import hash_obj, hash_paths, write_json_atomic

# Inputs larger than this (bytes, per file) are hashed by size and mtime only.
CONTENT_HASH_LIMIT = 4 << 20


def _ignored(rel: Path) -> bool:
    """Derived or bookkeeping files inside an input dir: job splits, hidden files, logs, bytecode."""
    return any(re.fullmatch(r"split\d+", part) or part.startswith(".") or part in ("log", "__pycache__")
               for part in rel.parts)


def digest_inputs(inputs: list[str]) -> dict[str, str]:
    """Per-input digest: file contents for small files, metadata for large ones."""
    out = {}
    for item in sorted(inputs):
        p = Path(item)
        if p.is_file() and p.stat().st_size > CONTENT_HASH_LIMIT:
            out[item] = hash_paths([p], content=False)
        elif p.is_dir():
            files = [q for q in p.rglob("*") if q.is_file() and not _ignored(q.relative_to(p))]
            small = [q for q in files if q.stat().st_size <= CONTENT_HASH_LIMIT]
            large = [q for q in files if q.stat().st_size > CONTENT_HASH_LIMIT]
            out[item] = hash_obj([hash_paths(small, content=True), hash_paths(large, content=False)])
        else:
            out[item] = hash_paths([p], content=True)
    return out


@dataclass
class StageMarker:
    path: Path

    @classmethod
    def for_stage(cls, exp: str | Path, num: int, name: str) -> "StageMarker":
        return cls(Path(exp) / ".stages" / f"stage{num}_{name}.json")

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def signature(self, inputs: list[str], options: str, command: list[str]) -> dict:
        return {"inputs": digest_inputs(inputs), "options": options, "command": command}

    def why_stale(self, signature: dict, outputs: list[str]) -> str | None:
        """None when up to date; otherwise a short human reason."""
        old = self.read()
        if old is None:
            return "never completed"
        if old.get("digest") != hash_obj(signature):
            changed = [k for k in signature["inputs"] if old.get("signature", {}).get("inputs", {}).get(k) != signature["inputs"][k]]
            if changed:
                return "inputs changed: " + ", ".join(changed[:5])
            if old.get("signature", {}).get("options") != signature["options"]:
                return "options changed"
            return "command changed"
        missing = [o for o in outputs if not Path(o).exists()]
        if missing:
            return "outputs missing: " + ", ".join(missing[:5])
        return None

    def invalidate(self) -> None:
        self.path.unlink(missing_ok=True)

    def complete(self, signature: dict, seconds: float) -> None:
        write_json_atomic(self.path, {
            "digest": hash_obj(signature), "signature": signature,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(seconds, 2),
        })
