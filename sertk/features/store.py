"""Per-utterance feature stores: Kaldi arks of vectors indexed by scp files.

The scp is the index and the commit marker: it is written last, under its
final name only when the ark it points to is complete, so a reader never sees
a half-written store. Ark paths in the scp are absolute, so a store is read
the same way from any working directory (recipes cd into egs/<corpus>).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Mapping

import kaldiio
import numpy as np

from sertk.common.fileio import atomic_path
from sertk.data.datadir import byte_sorted


class FeatureStoreError(ValueError):
    """A missing, incomplete or malformed feature store; the message names the file or utterances."""


def scp_path_of(path: str | Path) -> Path:
    """Accept either a store directory (holding feats.scp) or the scp file itself."""
    path = Path(path)
    return path / "feats.scp" if path.is_dir() else path


def read_scp_index(scp_path: str | Path) -> dict[str, str]:
    """utt -> 'ark:offset' as written in the scp (no feature is loaded)."""
    scp_path = scp_path_of(scp_path)
    if not scp_path.is_file():
        raise FeatureStoreError(f"{scp_path}: feature index not found; run the feature extraction stage first")
    out: dict[str, str] = {}
    with open(scp_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2:
                raise FeatureStoreError(f"{scp_path}:{lineno}: expected 'utt ark:offset', got {line.rstrip()!r}")
            if parts[0] in out:
                raise FeatureStoreError(f"{scp_path}:{lineno}: duplicate utterance {parts[0]!r}")
            out[parts[0]] = parts[1]
    return out


def write_ark_scp(feats: Mapping[str, np.ndarray], ark_path: str | Path, scp_path: str | Path) -> None:
    """Write ``feats`` (utt -> vector) to ``ark_path`` and its index to ``scp_path``, atomically.

    Keys are written in byte order (as every Kaldi table). An old index is
    removed first, the ark is written under a temporary name and renamed, and
    the new index (pointing at the final ark name) is written last.
    """
    ark_path = Path(ark_path).resolve()
    scp_path = Path(scp_path)
    keys = byte_sorted(feats)
    for k in keys:
        if not k or any(c.isspace() for c in k):
            raise FeatureStoreError(f"utterance id {k!r} is empty or contains whitespace")
    scp_path.unlink(missing_ok=True)  # an old index must never point into the new ark
    buf = io.StringIO()
    with atomic_path(ark_path) as tmp_ark:
        kaldiio.save_ark(str(tmp_ark), {k: np.asarray(feats[k], dtype=np.float32) for k in keys}, scp=buf)
    lines = []
    for line in buf.getvalue().splitlines():
        key, loc = line.split(" ", 1)
        lines.append(f"{key} {ark_path}:{loc.rsplit(':', 1)[1]}\n")
    with atomic_path(scp_path) as tmp_scp:
        tmp_scp.write_text("".join(lines), encoding="utf-8")


def load_feats(scp_path: str | Path) -> dict[str, np.ndarray]:
    """All vectors of a store, utt -> np.ndarray (accepts the store dir or its feats.scp)."""
    scp_path = scp_path_of(scp_path)
    read_scp_index(scp_path)  # clear errors for a missing or malformed index
    reader = kaldiio.load_scp(str(scp_path))
    out = {}
    for utt in reader:
        try:
            out[utt] = np.asarray(reader[utt])
        except Exception as e:  # kaldiio raises several types for a truncated/missing ark
            raise FeatureStoreError(f"{scp_path}: cannot load utterance {utt}: {e}") from e
    return out


def feats_matrix(scp_path: str | Path, utts: Iterable[str]) -> np.ndarray:
    """Stack the vectors of ``utts`` (in that order) into [N, D]; error names missing utterances."""
    scp_path = scp_path_of(scp_path)
    utts = list(utts)
    index = read_scp_index(scp_path)
    missing = [u for u in utts if u not in index]
    if missing:
        raise FeatureStoreError(
            f"{scp_path}: {len(missing)} of {len(utts)} utterance(s) have no features, e.g. {missing[:5]}; "
            f"re-run feature extraction for this data dir")
    if not utts:
        raise FeatureStoreError(f"{scp_path}: no utterances requested")
    reader = kaldiio.load_scp(str(scp_path))
    rows = []
    for u in utts:
        try:
            v = np.asarray(reader[u]).reshape(-1)
        except Exception as e:
            raise FeatureStoreError(f"{scp_path}: cannot load utterance {u}: {e}") from e
        if rows and v.shape != rows[0].shape:
            raise FeatureStoreError(f"{scp_path}: utterance {u} has {v.size} values, {utts[0]} has {rows[0].size}")
        rows.append(v)
    return np.stack(rows)


def merge_scps(parts: Iterable[str | Path], out_scp: str | Path, expected: Iterable[str] | None = None) -> int:
    """Concatenate per-job scp files into one byte-sorted index; returns the number of entries.

    Every part must exist and no utterance may appear twice. With ``expected``
    (the utterances of the full data dir), the merged index must cover exactly those.
    """
    merged: dict[str, str] = {}
    for part in parts:
        part = scp_path_of(part)
        for utt, loc in read_scp_index(part).items():
            if utt in merged:
                raise FeatureStoreError(f"{part}: utterance {utt!r} is also in another part")
            merged[utt] = loc
    if expected is not None:
        expected = set(expected)
        missing = byte_sorted(expected - set(merged))
        extra = byte_sorted(set(merged) - expected)
        if missing:
            raise FeatureStoreError(
                f"{out_scp}: {len(missing)} utterance(s) missing from the parts, e.g. {missing[:5]}; "
                f"a job failed or did not run")
        if extra:
            raise FeatureStoreError(f"{out_scp}: {len(extra)} utterance(s) in the parts are not in the data dir, "
                                    f"e.g. {extra[:5]}")
    with atomic_path(out_scp) as tmp:
        tmp.write_text("".join(f"{u} {merged[u]}\n" for u in byte_sorted(merged)), encoding="utf-8")
    return len(merged)



# ------------------------------------------------------- shared content store
# A directory of shards, each ``shard-<h>.ark`` with its index ``shard-<h>.scp``
# (content key -> ark:offset) and ``shard-<h>.src`` (where each key's audio came
# from). Keys name content, not utterances, so one store serves every data dir
# that holds the same audio; a data dir reads it through a view: an scp of its
# own utterance ids pointing into the shards.
SHARD_PREFIX = "shard-"


def shard_name(keys: Iterable[str]) -> str:
    """A shard's name from its keys: the same part written twice lands on the same files."""
    import hashlib

    return SHARD_PREFIX + hashlib.sha256("\n".join(byte_sorted(keys)).encode()).hexdigest()[:16]


def write_shard(store_dir: str | Path, feats: Mapping[str, np.ndarray],
                sources: Mapping[str, str] | None = None) -> dict[str, str]:
    """Add ``feats`` (content key -> vector) to the store as one shard; returns key -> 'ark:offset'.

    ``sources`` (key -> one line of provenance) goes to ``shard-<h>.src`` before
    the shard's scp, which is written last and marks the shard complete.
    """
    if not feats:
        raise FeatureStoreError(f"{store_dir}: a shard needs at least one vector")
    store_dir = Path(store_dir)
    name = shard_name(feats)
    if sources is not None:
        with atomic_path(store_dir / f"{name}.src") as tmp:
            tmp.write_text("".join(f"{k}\t{sources[k]}\n" for k in byte_sorted(feats)), encoding="utf-8")
    write_ark_scp(feats, store_dir / f"{name}.ark", store_dir / f"{name}.scp")
    return read_scp_index(store_dir / f"{name}.scp")


def read_store_index(store_dir: str | Path) -> dict[str, str]:
    """key -> 'ark:offset' over every complete shard of a store (empty when the store is new).

    A key in several shards (extracted twice by concurrent runs) maps to the
    first shard in name order; its vectors are equal.
    """
    index: dict[str, str] = {}
    for scp in sorted(Path(store_dir).glob(f"{SHARD_PREFIX}*.scp")):
        for key, loc in read_scp_index(scp).items():
            index.setdefault(key, loc)
    return index


def write_view(locations: Mapping[str, str], scp_path: str | Path) -> None:
    """Write an scp of utterance ids pointing into a shared store (byte-sorted, atomic)."""
    for utt in locations:
        if not utt or any(c.isspace() for c in utt):
            raise FeatureStoreError(f"utterance id {utt!r} is empty or contains whitespace")
    with atomic_path(scp_path) as tmp:
        tmp.write_text("".join(f"{u} {locations[u]}\n" for u in byte_sorted(locations)), encoding="utf-8")


def count_entries(store_dir: str | Path) -> int:
    """Vectors written to a store's complete shards, duplicates included: the extractions it took."""
    return sum(len(read_scp_index(scp)) for scp in Path(store_dir).glob(f"{SHARD_PREFIX}*.scp"))
