"""Split, subset and combine data dirs (Kaldi's split_data.sh, subset_data_dir.sh, combine_data.sh).

Protocol splits and folds are speaker-independent: a speaker's utterances go
to one side only. Every random choice takes a seed, so the same call gives the
same split on every machine.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from sertk.common.fileio import atomic_dir
from sertk.data.datadir import DataDir, DataDirError, byte_sorted, write_table
from sertk.data.folds import stratified_group_folds


def _as_datadir(d: str | Path | DataDir) -> DataDir:
    return d if isinstance(d, DataDir) else DataDir.read(d)


def _group_sizes(dd: DataDir, groups: Mapping[str, str] | None) -> tuple[dict[str, str], dict[str, int]]:
    """utt -> group (speaker by default) and group -> number of utterances."""
    if groups is None:
        u2g = dict(dd.utt2spk)
    else:
        missing = [u for u in dd.utts if u not in groups]
        if missing:
            raise DataDirError(f"groups: {len(missing)} utterance(s) have no group, e.g. {missing[:3]}")
        u2g = {u: groups[u] for u in dd.utts}
    sizes: dict[str, int] = {}
    for g in u2g.values():
        sizes[g] = sizes.get(g, 0) + 1
    return u2g, sizes


def _assign(sizes: dict[str, int], targets: list[float], seed: int) -> dict[str, int]:
    """Groups -> part index; each group goes to the part furthest (relatively) below its target.

    Largest groups are placed first, which keeps parts balanced (as in
    sklearn's GroupKFold); the seed perturbs the order by up to +-25% of a
    group's size, so different seeds give different, still balanced, splits.
    """
    rng = random.Random(seed)
    order = byte_sorted(sizes)
    jitter = {g: rng.uniform(0.75, 1.25) for g in order}
    order.sort(key=lambda g: -sizes[g] * jitter[g])
    total = sum(sizes.values())
    want = [t * total for t in targets]
    have = [0.0] * len(targets)
    out = {}
    for g in order:
        k = max(range(len(targets)), key=lambda i: (want[i] - have[i]) / max(want[i], 1e-9))
        out[g] = k
        have[k] += sizes[g]
    return out


def split_by_speaker(datadir: str | Path | DataDir, fractions: Mapping[str, float] | Sequence[float] | None = None,
                     n_parts: int | None = None, seed: int = 0,
                     groups: Mapping[str, str] | None = None) -> dict[str, DataDir]:
    """Speaker-disjoint parts with about the given fractions of utterances.

    ``fractions`` is ``{"train": 0.8, "dev": 0.1, "test": 0.1}`` (or a list,
    parts then named ``"1".."n"``); ``n_parts`` gives equal parts. ``groups``
    (utt -> group, e.g. session) replaces speakers as the unit kept whole.
    """
    dd = _as_datadir(datadir)
    if (fractions is None) == (n_parts is None):
        raise ValueError("split_by_speaker: give either fractions or n_parts")
    if fractions is None:
        fractions = [1.0 / n_parts] * n_parts
    if not isinstance(fractions, Mapping):
        fractions = {str(i + 1): f for i, f in enumerate(fractions)}
    if any(f <= 0 for f in fractions.values()):
        raise ValueError(f"split_by_speaker: fractions must be positive, got {dict(fractions)}")
    names = list(fractions)
    total = sum(fractions.values())
    u2g, sizes = _group_sizes(dd, groups)
    if len(sizes) < len(names):
        raise DataDirError(f"{dd.path}: {len(sizes)} speaker(s)/group(s) cannot fill {len(names)} disjoint parts")
    part = _assign(sizes, [fractions[n] / total for n in names], seed)
    out = {}
    for k, name in enumerate(names):
        utts = [u for u in dd.utts if part[u2g[u]] == k]
        if not utts:
            raise DataDirError(f"{dd.path}: part {name!r} came out empty; use fewer parts or larger fractions")
        out[name] = dd.subset(utts)
    return out


def make_folds(datadir: str | Path | DataDir, n_folds: int, seed: int = 0, by: str = "speaker",
               groups: Mapping[str, str] | None = None, stratify: bool = True) -> list[tuple[DataDir, DataDir]]:
    """Cross-validation folds: (train, test) per fold, test sets partition the utterances.

    ``by="speaker"`` keeps each speaker in one test fold (speaker-independent);
    ``by="group"`` does the same for ``groups`` (e.g. IEMOCAP sessions for
    leave-one-session-out); ``by="utterance"`` folds utterances (not speaker-independent).
    ``stratify`` (default, when every utterance has a label) also matches each
    test fold's label mix to the corpus's (:mod:`sertk.data.folds`), so no test
    fold loses a class that another could have held; otherwise groups are
    dealt by size only.
    """
    dd = _as_datadir(datadir)
    if n_folds < 2:
        raise ValueError("make_folds: need at least 2 folds")
    if by == "speaker":
        u2g, sizes = _group_sizes(dd, None)
    elif by == "group":
        if groups is None:
            raise ValueError("make_folds: by='group' needs groups (utt -> group)")
        u2g, sizes = _group_sizes(dd, groups)
    elif by == "utterance":
        u2g, sizes = _group_sizes(dd, {u: u for u in dd.utts})
    else:
        raise ValueError(f"make_folds: by must be speaker, group or utterance, got {by!r}")
    if len(sizes) < n_folds:
        raise DataDirError(f"{dd.path}: {len(sizes)} {by}(s) cannot make {n_folds} disjoint folds")
    labels = dd.tables.get("utt2emo") or {}
    if stratify and labels and all(u in labels for u in dd.utts):
        try:
            parts = stratified_group_folds([u2g[u] for u in dd.utts], [labels[u] for u in dd.utts], n_folds, seed)
        except ValueError as e:
            raise DataDirError(f"{dd.path}: {e}") from e
        fold = {g: k for k, part in enumerate(parts) for g in part}
    else:
        fold = _assign(sizes, [1.0 / n_folds] * n_folds, seed)
    out = []
    for k in range(n_folds):
        test = [u for u in dd.utts if fold[u2g[u]] == k]
        train = [u for u in dd.utts if fold[u2g[u]] != k]
        out.append((dd.subset(train), dd.subset(test)))
    return out


def write_folds(folds: list[tuple[DataDir, DataDir]], out: str | Path) -> list[Path]:
    """Write ``out/fold{k}/train`` and ``out/fold{k}/test`` (k from 1)."""
    out = Path(out)
    paths = []
    for k, (train, test) in enumerate(folds, 1):
        train.write(out / f"fold{k}" / "train")
        test.write(out / f"fold{k}" / "test")
        paths.append(out / f"fold{k}")
    return paths


def split_into_parts(datadir: str | Path, n: int) -> list[Path]:
    """Split for ``--nj n`` jobs into ``DIR/split{n}/{1..n}``: contiguous blocks of utterances.

    Cuts fall on speaker boundaries when one lies within half a block of the
    even cut point (so per-speaker work stays in one job), otherwise mid-speaker.
    Together the parts hold every utterance exactly once, in order.
    """
    datadir = Path(datadir)
    dd = DataDir.read(datadir)
    utts = dd.utts
    if n < 1:
        raise ValueError("split_into_parts: n must be >= 1")
    if len(utts) < n:
        raise DataDirError(f"{datadir}: {len(utts)} utterance(s) cannot fill {n} parts; use --nj {len(utts)} or less")
    spk = [dd.utt2spk[u] for u in utts]
    boundaries = [i for i in range(1, len(utts)) if spk[i] != spk[i - 1]]
    block = len(utts) / n
    cuts = [0]
    for k in range(1, n):
        ideal = round(k * block)
        lo, hi = cuts[-1] + 1, len(utts) - (n - k)  # every part keeps at least one utterance
        near = [b for b in boundaries if lo <= b <= hi and abs(b - ideal) <= block / 2]
        cut = min(near, key=lambda b: (abs(b - ideal), b)) if near else min(max(ideal, lo), hi)
        cuts.append(cut)
    cuts.append(len(utts))
    root = datadir / f"split{n}"
    paths = []
    with atomic_dir(root) as tmp:
        for k in range(n):
            part = dd.subset(utts[cuts[k]:cuts[k + 1]])
            d = tmp / str(k + 1)
            d.mkdir()
            for name, table in part.tables.items():
                write_table(d / name, table)
            write_table(d / "spk2utt", {s: " ".join(u) for s, u in part.spk2utt.items()})
            paths.append(root / str(k + 1))
    return paths


def subset(datadir: str | Path | DataDir, utt_list: Sequence[str] | str | Path | None = None,
           spk_list: Sequence[str] | str | Path | None = None, first: int | None = None,
           last: int | None = None, per_spk: int | None = None, random_n: int | None = None,
           seed: int = 0) -> DataDir:
    """A subset chosen by exactly one rule: a list of utterances or speakers (file or list),
    the first/last N utterances, the first N of each speaker, or N at random (seeded)."""
    dd = _as_datadir(datadir)
    rules = {"utt_list": utt_list, "spk_list": spk_list, "first": first, "last": last,
             "per_spk": per_spk, "random_n": random_n}
    given = [k for k, v in rules.items() if v is not None]
    if len(given) != 1:
        raise ValueError(f"subset: give exactly one of {list(rules)}, got {given}")
    utts = dd.utts
    if utt_list is not None:
        want = _read_list(utt_list)
        unknown = [u for u in want if u not in dd.utt2spk]
        if unknown:
            raise DataDirError(f"subset: {len(unknown)} listed utterance(s) are not in {dd.path}, e.g. {unknown[:3]}")
        keep = want
    elif spk_list is not None:
        want = set(_read_list(spk_list))
        s2u = dd.spk2utt
        unknown = sorted(want - set(s2u))
        if unknown:
            raise DataDirError(f"subset: {len(unknown)} listed speaker(s) are not in {dd.path}, e.g. {unknown[:3]}")
        keep = [u for s in want for u in s2u[s]]
    elif first is not None:
        keep = utts[:first]
    elif last is not None:
        keep = utts[len(utts) - last:] if last > 0 else []
    elif per_spk is not None:
        keep = [u for us in dd.spk2utt.values() for u in us[:per_spk]]
    else:
        keep = random.Random(seed).sample(utts, min(random_n, len(utts)))
    if not keep:
        raise DataDirError(f"subset of {dd.path} is empty")
    return dd.subset(keep)


def _read_list(x: Sequence[str] | str | Path) -> list[str]:
    if isinstance(x, (str, Path)):
        with open(x, encoding="utf-8") as f:
            return [line.split()[0] for line in f if line.strip()]
    return list(x)


def combine(dirs: Sequence[str | Path | DataDir]) -> DataDir:
    """Union of data dirs (ids must not collide: prefix them per corpus in data prep)."""
    if not dirs:
        raise ValueError("combine: no data dirs given")
    return DataDir.combine([_as_datadir(d) for d in dirs])
