"""Run digests: when a split's experiment dir is resumed, retrained or moved aside.

Resume, retrain or move aside (the rule every task follows, whether it trains
with the Trainer or not): before a split trains, its run digest -- the task
config without the keys that cannot change the model (``eval``, ``fewshot``,
``train.progress/log_interval/num_workers/keep_checkpoints``), the split and
its label map, the data dirs it trains on (content), the sample rate, the
models and files the config names (a teacher's or encoder's own run digest),
the CPU thread count (float results of another count differ in the last bits,
so a model trained on another is another model) and the code (sertk version,
task module source) -- is compared with the one
recorded in ``<expdir>/run_digest.json``. The same digest resumes (an
interrupted run continues exactly; a finished one has nothing left to do).
Any difference, or ``--fresh``, moves the split's dir aside to
``<expdir>.old-<n>`` (kept, never deleted; a teacher's members and SELM's
few-shot runs live inside it) and trains from scratch; the log names what
changed. Evaluation refuses a model trained under other settings or data (other code, or
another thread count, only draws a warning: the model is what it was).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import sertk
from sertk.common.fileio import hash_obj, listing_digest, move_aside, sha256_file, write_json_atomic
from sertk.common.stage import digest_inputs
from sertk.common.threads import current_threads
from sertk.tasks import TaskContext, get_task

RUN_FILE = "run_digest.json"
# task-config keys that cannot change the trained model: not part of the run digest (they are
# evaluation settings; SELM's few-shot adaptation runs at evaluation, under the evaluation digest)
NOT_THE_MODEL = ("eval", "fewshot")
NOT_THE_MODEL_TRAIN = ("progress", "log_interval", "num_workers", "keep_checkpoints")
# parts of a run digest that evaluation may differ in (a WARNING, not a refusal): the model stays what it was
EVALUATION_MAY_DIFFER = {"code": "by other code", "threads": "on another CPU thread count"}


def model_config(cfg: dict) -> dict:
    """The task config without the keys that cannot change the trained model."""
    out = {k: v for k, v in cfg.items() if k not in NOT_THE_MODEL}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in NOT_THE_MODEL_TRAIN}
    return out


def _strings(node):
    """Every string value in a nested config."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _ref_digest(path: Path, tag: str) -> str:
    """A file or model dir a config names: a trained sertk run by its run digest, a file by content,
    any other dir (a zoo or local hub model) by its listing."""
    for rec in (path / tag / RUN_FILE, path / RUN_FILE):
        if rec.is_file():
            return (read_run(rec.parent) or {}).get("digest", f"unreadable {rec}")
    if path.is_dir():
        return listing_digest([path])[str(path)]["digest"]
    return digest_inputs([str(path)])[str(path)]


def code_version(task_name: str) -> dict:
    """sertk's version and the source digest of the task module that trains the model."""
    mod = get_task(task_name)
    source = getattr(mod, "__file__", None)
    return {"sertk": sertk.__version__, "task_module": mod.__name__,
            "task_source": sha256_file(source) if source and Path(source).is_file() else None}


def _named_paths(cfg: dict, ctx: TaskContext) -> tuple[list[str], list[str]]:
    """Data sets (a name under ``ctx.data``) and files or dirs (a path with '/') that config values name.

    A path holding this run's own experiment dir is left out: training changes it.
    """
    sets, refs = [], []
    own = os.path.abspath(ctx.expdir)
    for s in dict.fromkeys(_strings(cfg)):
        if "/" not in s and s not in ("", ".", "..") and os.path.isdir(ctx.data / s):
            sets.append(s)
        elif "/" in s and os.path.exists(s) and not (own + os.sep).startswith(os.path.abspath(s) + os.sep):
            refs.append(s)
    return sets, sorted(refs)


def run_parts(cfg: dict, split, ctx: TaskContext, task_name: str) -> dict:
    """Everything that defines the model a split trains (see the module docstring)."""
    named_sets, refs = _named_paths(model_config(cfg), ctx)  # not eval's (e.g. SELM's eval.baseline)
    sets = list(dict.fromkeys(s for s in (split.train, split.dev, *named_sets) if s))
    label_map = digest_inputs([split.label_map])[split.label_map] if split.label_map else None
    parts = {
        "config": model_config(cfg),
        "split": {"corpus": split.corpus, "protocol": split.protocol, "fold": split.fold, "train": split.train,
                  "dev": split.dev, "label_map": label_map, "options": split.options},
        "data": {s: digest_inputs([str(ctx.data / s)])[str(ctx.data / s)] for s in sets},
        "sample_rate": ctx.sample_rate,
        "threads": current_threads(),
        "refs": {r: _ref_digest(Path(r), split.tag) for r in refs},
        "code": code_version(task_name),
    }
    return json.loads(json.dumps(parts, default=str))  # as run_digest.json holds it: comparable with it


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _short(v, width: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def _is_digest(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def changes(old: dict, new: dict, limit: int = 6) -> str:
    """What differs between two run digests' parts, e.g. 'config.train.epochs: 4 -> 2; data.train changed'."""
    a, b = _flat(old), _flat(new)
    lines = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k, "<unset>"), b.get(k, "<unset>")
        if x == y:
            continue
        lines.append(f"{k} changed" if _is_digest(x) or _is_digest(y) else f"{k}: {_short(x)} -> {_short(y)}")
    more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more if lines else "an unknown part"


def read_run(expdir: Path) -> dict | None:
    """The run digest record of a split's experiment dir (None: none, or unreadable)."""
    try:
        rec = json.loads((Path(expdir) / RUN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def write_run(expdir: Path, parts: dict, status: str) -> None:
    """Record the run's digest and status; an unchanged record is left as it is (the evaluation
    stage reads the file as an input: it re-runs after a new or newly finished training only)."""
    old, digest, now = read_run(expdir) or {}, hash_obj(parts), time.strftime("%Y-%m-%dT%H:%M:%S")
    if old.get("digest") == digest and old.get("status") == status:
        return
    same = old.get("digest") == digest
    rec = {"digest": digest, "status": status, "parts": parts, "started": old.get("started") if same else now}
    if status == "finished":
        rec["finished"] = now
    write_json_atomic(Path(expdir) / RUN_FILE, rec)


def stale_reason(expdir: Path, parts: dict, fresh: bool) -> str | None:
    """Why the run in ``expdir`` cannot be resumed (None: empty dir, or the same run)."""
    if not expdir.is_dir() or not any(expdir.iterdir()):
        return None
    if fresh:
        return "--fresh asks for a new run"
    old = read_run(expdir)
    if old is None:
        return f"it has no readable {RUN_FILE} (trained before run digests, or by hand)"
    if old.get("digest") != hash_obj(parts):
        return "the run changed: " + changes(old.get("parts") or {}, parts)
    return None


def prepare_run(expdir: Path, parts: dict, fresh: bool, log) -> None:
    """Resume the same run; move any other run aside (``<expdir>.old-<n>``) so training starts fresh."""
    reason = stale_reason(expdir, parts, fresh)
    if reason:
        dest = move_aside(expdir)
        log.warning("%s: moved aside to %s (kept) and training from scratch, because %s", expdir, dest, reason)
    elif (read_run(expdir) or {}).get("status") == "finished":
        log.info("%s: same run digest as the finished run there: nothing new to train", expdir)
        return
    elif (expdir / RUN_FILE).is_file():
        log.info("%s: same run digest: resuming the interrupted run", expdir)
    write_run(expdir, parts, "training")


def _settings(parts: dict) -> dict:
    """A run digest's parts without those evaluation may differ in."""
    return {k: v for k, v in parts.items() if k not in EVALUATION_MAY_DIFFER}


def check_trained(expdir: Path, parts: dict, log) -> None:
    """Refuse to evaluate a model trained with other settings or data than the current ones.

    Only other code or another thread count is allowed (a WARNING): the model is what it was, and
    evaluation code may change.
    """
    old = read_run(expdir)
    if old is None:
        return  # nothing trained here (zero-shot configs), or trained before run digests
    before = old.get("parts") or {}
    if old.get("digest") != hash_obj(parts):
        if hash_obj(_settings(before)) != hash_obj(_settings(parts)):
            settings = changes(_settings(before), _settings(parts), limit=6)
            raise SystemExit(f"{expdir}: the model there was trained with other settings ({settings}); train it "
                             f"again with these settings (sertk train, e.g. the recipe's training stage) first")
        differ = [k for k in EVALUATION_MAY_DIFFER if before.get(k) != parts.get(k)]
        log.warning("%s: trained %s (%s); evaluating it as it is (train again to retrain it)", expdir,
                    " and ".join(EVALUATION_MAY_DIFFER[k] for k in differ),
                    changes({k: before.get(k) for k in differ}, {k: parts.get(k) for k in differ}))
    if old.get("status") != "finished":
        raise SystemExit(f"{expdir}: its training did not finish ({expdir / RUN_FILE} says {old.get('status')!r}); "
                         f"run training again to resume it")
