"""Stage completion markers that know what they were computed from.

A marker stores a digest of a stage's inputs (file contents of small text
inputs, size+mtime of large trees), the listing of its corpus roots (relative
path, size, mtime of every file, contents unread), its own options and its
command. A stage whose digest is unchanged and whose outputs still exist is
reported "up to date" and skipped; any change re-runs it, so stale outputs are
never silently reused. Logs, job splits, hidden files and moved-aside runs
(``NAME.old-N``) inside an input dir are not inputs: they change on every run.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from sertk.common.fileio import MOVED_ASIDE, hash_obj, hash_paths, listing_digest, write_json_atomic

# Inputs larger than this (bytes, per file) are hashed by size and mtime only.
CONTENT_HASH_LIMIT = 4 << 20


def _ignored(rel: Path) -> bool:
    """Derived or bookkeeping files inside an input dir: job splits, hidden files, logs, bytecode, old runs."""
    return rel.suffix == ".log" or any(
        re.fullmatch(r"split\d+", part) or part.startswith(".") or part in ("log", "__pycache__")
        or MOVED_ASIDE.fullmatch(part) for part in rel.parts)


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


def _corpus_changes(old: dict, new: dict) -> list[str]:
    """One line per corpus root whose listing changed, with the file counts before and after."""
    out = []
    for root in sorted(set(old) | set(new)):
        a, b = old.get(root), new.get(root)
        if a is None or b is None:
            out.append(f"{root} {'added' if a is None else 'no longer listed'}")
        elif b.get("digest") == "missing":
            out.append(f"{root} is missing")
        elif a.get("digest") != b.get("digest"):
            out.append(f"{root} ({a.get('files')} -> {b.get('files')} files, "
                       f"{a.get('bytes')} -> {b.get('bytes')} bytes)")
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

    def signature(self, inputs: list[str], options: str, command: list[str], roots: list[str] = ()) -> dict:
        """What the stage's result depends on; ``roots`` (corpus folders) are digested by listing."""
        sig = {"inputs": digest_inputs(inputs), "options": options, "command": command}
        if roots:  # absent otherwise: markers of stages without roots keep their digest
            sig["corpus"] = listing_digest(sorted(set(roots)))
        return sig

    def why_stale(self, signature: dict, outputs: list[str]) -> str | None:
        """None when up to date; otherwise a short human reason."""
        old = self.read()
        if old is None:
            return "never completed"
        if old.get("digest") != hash_obj(signature):
            before = old.get("signature", {}).get("inputs", {})
            changed = [k for k in signature["inputs"] if before.get(k) != signature["inputs"][k]]
            changed += [f"{k} (no longer an input)" for k in before if k not in signature["inputs"]]
            if changed:
                return "inputs changed: " + ", ".join(changed[:5])
            corpus = _corpus_changes(old.get("signature", {}).get("corpus") or {}, signature.get("corpus") or {})
            if corpus:
                return "corpus changed: " + "; ".join(corpus)
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
