"""Atomic writes and content hashing.

Every stage writes through these helpers so that an interrupted run never
leaves a half-written file under its final name, and never overwrites an
earlier result with a partial one.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def hash_paths(paths, content: bool = True) -> str:
    """One digest over files and directories (recursively, in byte order).

    With ``content=False`` only names, sizes and mtimes are hashed, which is
    cheap for large audio trees; small text inputs (data dirs, configs) should
    be hashed by content so that an edit always shows.
    """
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        if not p.exists():
            h.update(f"missing:{p}".encode())
            continue
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        for f in files:
            h.update(str(f).encode())
            if content:
                h.update(sha256_file(f).encode())
            else:
                st = f.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def hash_obj(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def listing_digest(roots) -> dict[str, dict]:
    """Per root: the digest, file count and bytes of its listing (relative path, size, mtime_ns).

    Contents are never read, so 100k files are listed in about a second;
    adding, removing or replacing a file changes the digest. Hidden files are
    left out (desktop bookkeeping such as .DS_Store). A missing root is
    recorded as missing.
    """
    out = {}
    for root in roots:
        root = str(root)
        if not os.path.isdir(root):
            out[root] = {"digest": "missing", "files": 0, "bytes": 0}
            continue
        h, files, size = hashlib.sha256(), 0, 0
        for rel, st in _walk_files(root):
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            files, size = files + 1, size + st.st_size
        out[root] = {"digest": h.hexdigest(), "files": files, "bytes": size}
    return out


def _walk_files(root: str):
    """(relative path, stat) of every non-hidden file below root, in a fixed order; linked folders once."""
    seen = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        path = os.path.join(root, rel_dir) if rel_dir else root
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop or a second link to the same folder
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name.encode("utf-8", "surrogateescape"))
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                if e.is_dir():
                    subdirs.append(rel)
                elif e.is_file():
                    yield rel, e.stat()
            except FileNotFoundError:  # a dangling link, or removed while listing
                continue
        stack.extend(reversed(subdirs))


MOVED_ASIDE = re.compile(r".+\.old-\d+")


def is_moved_aside(path: str | os.PathLike) -> bool:
    """True for a path inside a run that was moved aside (a ``NAME.old-N`` dir): never current results."""
    return any(MOVED_ASIDE.fullmatch(part) for part in Path(path).parts)


def move_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` to ``path.old-N`` (the next free N) and return the new name; nothing is deleted."""
    path = Path(path)
    taken = [int(m.group(1)) for p in path.parent.glob(f"{glob.escape(path.name)}.old-*")
             if (m := re.fullmatch(re.escape(path.name) + r"\.old-(\d+)", p.name))]
    dest = path.with_name(f"{path.name}.old-{max(taken, default=0) + 1}")
    os.rename(path, dest)
    return dest
