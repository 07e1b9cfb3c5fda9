"""Result records: one ``results.json`` per evaluated test set.

A figure is only comparable with another computed under the same protocol
(corpus, training and test sets, split or fold scheme, label map), so every
record carries that protocol and an id derived from it; the stage-11 report
prints the id beside each figure and aggregates folds by it. A record also
names the CPU thread count it was computed with (``threads``): figures of
another count can differ in the last digits (sertk.common.threads), and the
training seed of the model it scores (``seed``, set by the runner through
:func:`run_seed`): results of several seeds of one protocol are aggregated
over seeds by the report and paired seed by seed by ``sertk compare``.
"""
from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import sertk
from sertk.common import stand_ins
from sertk.common.fileio import hash_obj, is_moved_aside, write_json_atomic
from sertk.common.threads import current_threads

REQUIRED_PROTOCOL_KEYS = ("corpus", "train", "test", "scheme", "label_map")
REQUIRED_FIELDS = ("stage", "name", "task", "protocol", "protocol_id", "metrics")
RESULT_FILE = "results.json"
SCHEMA_VERSION = 1
_RUN_SEED: list[int | None] = [None]  # the seed of the run whose results are being written (run_seed)


@contextmanager
def run_seed(seed: int | None):
    """Record ``seed`` in every result written inside (the runner wraps each split's run)."""
    _RUN_SEED.append(None if seed is None else int(seed))
    try:
        yield
    finally:
        _RUN_SEED.pop()


class ResultsError(ValueError):
    """A malformed or incomplete results.json (the message names the file)."""


def _jsonable(obj):
    """Plain JSON types: numpy scalars/arrays unpacked, NaN/inf stored as null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check_protocol(protocol: dict) -> None:
    if not isinstance(protocol, dict):
        raise ValueError(f"protocol must be a dict with keys {list(REQUIRED_PROTOCOL_KEYS)}, got {type(protocol).__name__}")
    missing = [k for k in REQUIRED_PROTOCOL_KEYS if protocol.get(k) in (None, "")]
    if missing:
        raise ValueError(f"protocol is missing required key(s) {missing} (has {sorted(protocol)})")


def protocol_hash(protocol: dict) -> str:
    """Short digest: the split's own data digest when recorded, else one of the protocol fields."""
    if protocol.get("hash"):
        return str(protocol["hash"])[:8]
    return hash_obj({k: protocol[k] for k in sorted(protocol) if k != "hash"})[:8]


def protocol_id(protocol: dict) -> str:
    """Readable, stable id of a protocol, e.g. ``corpus=x;train=a;test=b;scheme=s;labels=m#1a2b3c4d``."""
    check_protocol(protocol)
    parts = [f"corpus={protocol['corpus']}"]
    if protocol.get("protocol"):
        parts.append(f"protocol={protocol['protocol']}")
    if protocol.get("fold") is not None:
        parts.append(f"fold={protocol['fold']}")
    parts += [f"train={protocol['train']}", f"test={protocol['test']}",
              f"scheme={protocol['scheme']}", f"labels={protocol['label_map']}"]
    return ";".join(parts) + "#" + protocol_hash(protocol)


def write_result(path, *, stage: int, name: str, task: str, protocol: dict, metrics: dict,
                 labels: list[str] | None = None, confusion=None, extra: dict | None = None) -> dict:
    """Write one result record atomically to ``path`` (a results.json) and return it."""
    check_protocol(protocol)
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)):
        raise ValueError(f"stage must be an int, got {stage!r}")
    if not name or not task:
        raise ValueError("write_result: name and task must be non-empty")
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}")
    if confusion is None:
        confusion = metrics.get("confusion")
    if confusion is not None:
        cm = np.asarray(confusion)
        if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
            raise ValueError(f"confusion must be a square matrix, got shape {cm.shape}")
        if labels is not None and cm.shape[0] != len(labels):
            raise ValueError(f"confusion is {cm.shape[0]}x{cm.shape[1]} but there are {len(labels)} labels")
    record = {
        "schema": SCHEMA_VERSION,
        "stage": int(stage),
        "name": str(name),
        "task": str(task),
        "protocol": protocol,
        "protocol_id": protocol_id(protocol),
        "metrics": metrics,
        "labels": list(labels) if labels is not None else None,
        "confusion": confusion,
        "extra": extra or {},
        "threads": current_threads(),
        **({"seed": _RUN_SEED[-1]} if _RUN_SEED[-1] is not None else {}),
        **({"stand_ins": stand_ins.applied()} if stand_ins.applied() else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sertk_version": sertk.__version__,
    }
    record = _jsonable(record)
    write_json_atomic(path, record)
    return record


def load_result(path) -> dict:
    """Read and check one results.json; errors name the file."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e}") from None
    if not isinstance(record, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise ResultsError(f"{path}: missing field(s) {missing}; was it written by sertk.eval.results.write_result?")
    if isinstance(record["stage"], bool) or not isinstance(record["stage"], int):
        raise ResultsError(f"{path}: 'stage' must be an integer, got {record['stage']!r}")
    if not isinstance(record["metrics"], dict):
        raise ResultsError(f"{path}: 'metrics' must be an object")
    if not isinstance(record["protocol"], dict):
        raise ResultsError(f"{path}: 'protocol' must be an object")
    try:
        check_protocol(record["protocol"])
    except ValueError as e:
        raise ResultsError(f"{path}: {e}") from None
    if not isinstance(record.get("extra") or {}, dict):
        raise ResultsError(f"{path}: 'extra' must be an object")
    record["path"] = str(path)
    return record


def read_results(root) -> list[dict]:
    """Every current results.json under ``root`` (sorted by path), each with its ``path`` added.

    Runs moved aside (``NAME.old-N`` dirs, kept when a changed run retrained) are not current.
    """
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root}: no such directory")
    files = sorted(p for p in root.rglob(RESULT_FILE) if p.is_file() and not is_moved_aside(p.relative_to(root)))
    return [load_result(p) for p in files]


def fold_order(fold) -> tuple:
    """Sort key of fold ids: numeric folds in numeric order (fold 10 after fold 9), then named ones."""
    return (0, fold, "") if isinstance(fold, (int, float)) else (1, 0, str(fold))


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "result"
