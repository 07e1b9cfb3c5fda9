"""Multi-corpus data dirs made from sibling recipes' prepared data (SELM's out-of-corpus protocol).

A protocols file may carry a ``build:`` section; stage 1 of the recipe turns
it into data dirs (``sertk build-multicorpus``), so no set is made by hand::

    build:
      recipes: [../cremad, ../iemocap]   # sibling recipes, relative to this recipe (the dir above conf/)
      set: all                           # which data dir of each (default: the whole corpus)
      labels: [neutral, happy, sad, angry]   # canonical classes kept (default: the protocols' label map)
      train: selm_multi_train            # the union of the siblings, less dev
      dev: selm_multi_dev                # speaker-disjoint from train (dev_fraction of the utterances)
      dev_fraction: 0.1
      seed: 0
      test: selm_test                    # optional: this corpus's own set, labels made canonical
      test_mapping: {calm: neutral}      # canonical classes of the test corpus merged into kept ones
      avd_range: [1, 5]                  # A/V/D of every corpus rescaled onto this scale ...
      avd_ranges: {iemocap: [1, 5]}      # ... from each corpus's own (needed for each corpus with utt2avd)

Labels go onto sertk's canonical vocabulary through each recipe's
``conf/labels_canonical.yaml`` (as ``sertk cross-corpus`` does); utterances
whose label maps outside ``labels`` are left out and counted. Utterance and
speaker ids are corpus-prefixed. Label tables are kept where a corpus has them
(``DataDir.combine``), so a corpus without A/V/D leaves the others' in place.
The recipe's own corpus is never a training corpus.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sertk.common.config import load_yaml
from sertk.data.datadir import LABEL_FILES, DataDir
from sertk.data.labels import CANONICAL_EMOTIONS, LabelMap
from sertk.data.split import split_by_speaker

log = logging.getLogger("sertk.multicorpus")
BUILD_KEYS = {"recipes", "set", "labels", "train", "dev", "dev_fraction", "seed", "test", "test_mapping",
              "avd_range", "avd_ranges"}


class CorpusSetError(RuntimeError):
    """A sibling recipe is not ready (no data, no canonical map) or the build section is wrong."""


def prepare_command(recipe: Path) -> str:
    """The command that prepares a recipe's data dirs, from the current directory."""
    return f"(cd {os.path.relpath(recipe)} && ./run.sh --stage 1 --stop-stage 1)"


def canonical_datadir(recipe: Path, set_name: str, labels: list[str], mapping: dict[str, str] | None = None,
                      data: Path | None = None) -> tuple[str, DataDir]:
    """(corpus name, the recipe's set with utt2emo on the canonical vocabulary, restricted to ``labels``).

    ``mapping`` merges canonical classes into kept ones (RAVDESS calm -> neutral)
    before the restriction; ``data`` is the recipe's data root (default recipe/data).
    """
    name = recipe.resolve().name
    data = (data if data is not None else recipe / "data") / set_name
    cmap_path = recipe / "conf" / "labels_canonical.yaml"
    if not (data / "utt2spk").is_file():
        raise CorpusSetError(f"{data}: not prepared; run stage 1 first: {prepare_command(recipe)}")
    if not cmap_path.is_file():
        raise CorpusSetError(f"{cmap_path}: missing; a cross-corpus recipe maps its labels onto "
                             f"{', '.join(CANONICAL_EMOTIONS)} there")
    cmap = LabelMap.load(cmap_path)
    mapping = mapping or {}
    dd = DataDir.read(data)
    if not dd.has("utt2emo"):
        raise CorpusSetError(f"{data}: no utt2emo")
    keep, dropped = [], Counter()
    new_emo = {}
    for u in dd.utts:
        raw = dd.utt2emo[u]
        lab = cmap.canonical(raw) if raw in cmap else None
        lab = mapping.get(lab, lab)
        if lab in labels:
            keep.append(u)
            new_emo[u] = lab
        else:
            dropped[raw] += 1
    if dropped:
        log.info("%s: left out %d utterance(s) whose label is outside %s: %s", name, sum(dropped.values()),
                 labels, ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    if not keep:
        raise CorpusSetError(f"{name}: no utterance has one of the labels {labels}")
    sub = dd.subset(keep)
    sub.tables["utt2emo"] = {u: new_emo[u] for u in keep}
    missing = [lab for lab in labels if lab not in set(new_emo.values())]
    if missing:
        log.warning("%s has no utterance of %s: as training data it never predicts them; as test data they "
                    "are not scored", name, missing)
    return name, sub


# ------------------------------------------------------------- build spec --
@dataclass
class BuildSpec:
    """A protocols file's ``build:`` section, resolved."""

    protocols: Path
    corpus: str
    recipe_dir: Path
    recipes: list[Path]
    set: str
    labels: list[str]
    train: str
    dev: str | None = None
    dev_fraction: float = 0.1
    seed: int = 0
    test: str | None = None
    test_mapping: dict[str, str] = field(default_factory=dict)
    avd_range: tuple[float, float] | None = None
    avd_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def sets(self) -> list[str]:
        return [s for s in (self.train, self.dev, self.test) if s]


def _range(value, where: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise CorpusSetError(f"{where}: expected [low, high], got {value!r}") from None
    if not hi > lo:
        raise CorpusSetError(f"{where}: expected low < high, got {value!r}")
    return lo, hi


def read_build(protocols: str | Path) -> BuildSpec | None:
    """The ``build:`` section of a protocols file (None when it has none), checked."""
    protocols = Path(protocols)
    cfg = load_yaml(protocols)
    b = cfg.get("build")
    if b is None:
        return None
    where = f"{protocols}: build"
    if not isinstance(b, dict):
        raise CorpusSetError(f"{where}: must be a mapping")
    unknown = set(b) - BUILD_KEYS
    if unknown:
        raise CorpusSetError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(BUILD_KEYS)}")
    if not b.get("recipes") or not b.get("train"):
        raise CorpusSetError(f"{where}: needs 'recipes' (sibling recipe dirs) and 'train' (the set to write)")
    corpus = cfg.get("corpus")
    recipe_dir = protocols.resolve().parent.parent
    recipes = [recipe_dir / r for r in b["recipes"]]
    for entry, r in zip(b["recipes"], recipes):
        if r.resolve() == recipe_dir or r.resolve().name == corpus:
            raise CorpusSetError(f"{where}: recipes lists {entry}, the test corpus {corpus} itself; a multi-corpus "
                                 "training set never holds the corpus it is tested on")
    names = [r.resolve().name for r in recipes]
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise CorpusSetError(f"{where}: recipes {dup} are listed twice")
    labels = b.get("labels")
    if labels is None:
        if not cfg.get("label_map"):
            raise CorpusSetError(f"{where}: give 'labels' or a top-level label_map")
        labels = LabelMap.load(protocols.resolve().parent / cfg["label_map"]).labels
    bad = [lab for lab in labels if lab not in CANONICAL_EMOTIONS]
    if bad:
        raise CorpusSetError(f"{where}: labels {bad} are not canonical; choose from {', '.join(CANONICAL_EMOTIONS)}")
    frac = float(b.get("dev_fraction", 0.1))
    if b.get("dev") and not 0.0 < frac < 1.0:
        raise CorpusSetError(f"{where}: dev_fraction must be between 0 and 1, got {frac}")
    sets = [s for s in (b["train"], b.get("dev"), b.get("test")) if s]
    if len(set(sets)) < len(sets) or "all" in sets:
        raise CorpusSetError(f"{where}: train, dev and test must be distinct new set names (not 'all'), got {sets}")
    if bool(b.get("avd_ranges")) != bool(b.get("avd_range")):
        raise CorpusSetError(f"{where}: give both avd_range (the common scale) and avd_ranges (each corpus's)")
    return BuildSpec(
        protocols=protocols, corpus=corpus, recipe_dir=recipe_dir, recipes=recipes, set=str(b.get("set", "all")),
        labels=list(labels), train=b["train"], dev=b.get("dev"), dev_fraction=frac, seed=int(b.get("seed", 0)),
        test=b.get("test"), test_mapping=dict(b.get("test_mapping") or {}),
        avd_range=_range(b["avd_range"], f"{where}.avd_range") if b.get("avd_range") else None,
        avd_ranges={k: _range(v, f"{where}.avd_ranges.{k}") for k, v in (b.get("avd_ranges") or {}).items()})


def require_prepared(spec: BuildSpec) -> None:
    """Stop, naming every sibling recipe whose data is not prepared and the command that prepares it."""
    missing = [r for r in spec.recipes if not (r / "data" / spec.set / "utt2spk").is_file()]
    if missing:
        cmds = "\n".join(f"  {prepare_command(r)}" for r in missing)
        raise CorpusSetError(
            f"{spec.protocols}: the multi-corpus training set needs the prepared data of "
            f"{', '.join(r.resolve().name for r in missing)} "
            f"({', '.join(os.path.relpath(r / 'data' / spec.set) for r in missing)}"
            f" missing); set each corpus's path in its db.sh and prepare it:\n{cmds}\n"
            f"then run this recipe's stage 1 again (./run.sh --stage 1). To run without them, leave the "
            f"CONFIG@{spec.protocols} entries out of the recipe's --*-configs.")


def inputs(spec: BuildSpec, data: Path) -> list[str]:
    """Files the build reads: a change in any re-runs it (a re-prepared sibling included)."""
    require_prepared(spec)
    out = [str(spec.protocols)]
    for r in spec.recipes:
        out += [os.path.relpath(r / "data" / spec.set), os.path.relpath(r / "conf" / "labels_canonical.yaml")]
    if spec.test:
        out += [str(data / spec.set), os.path.relpath(spec.recipe_dir / "conf" / "labels_canonical.yaml")]
    return out


# ------------------------------------------------------------------ build --
def rescale_avd(dd: DataDir, corpus: str, spec: BuildSpec) -> DataDir:
    """A/V/D of ``corpus`` onto the build's common scale (MSP-Podcast 1-7 and IEMOCAP 1-5 differ)."""
    if not dd.has("utt2avd"):
        return dd
    if spec.avd_range is None or corpus not in spec.avd_ranges:
        raise CorpusSetError(f"{spec.protocols}: build: {corpus} has utt2avd but its scale is not given; add "
                             f"'{corpus}: [low, high]' to build.avd_ranges (and the common avd_range)")
    (lo, hi), (tlo, thi) = spec.avd_ranges[corpus], spec.avd_range
    if (lo, hi) != (tlo, thi):
        scale = (thi - tlo) / (hi - lo)
        dd.tables["utt2avd"] = {u: " ".join(format(tlo + (float(x) - lo) * scale, ".6g") for x in v.split()[:3])
                                for u, v in dd.tables["utt2avd"].items()}
        log.info("%s: A/V/D rescaled from %g-%g to %g-%g", corpus, lo, hi, tlo, thi)
    return dd


def _corpus_ids(dd: DataDir, corpus: str) -> DataDir:
    """Ids that start with the corpus name (UttTable writes them so); prefixed here otherwise."""
    if not all(u.startswith(f"{corpus}-") for u in dd.utts):
        log.info("%s: utterance ids are not corpus-prefixed; prefixing them with '%s-'", corpus, corpus)
        dd = dd.with_prefix(corpus)
    if not dd.has("utt2domain"):
        dd.tables["utt2domain"] = {u: corpus for u in dd.utts}
    return dd


def describe(name: str, dd: DataDir) -> str:
    by_corpus = Counter(dd.field("utt2domain").get(u) or u.split("-")[0] for u in dd.utts)
    classes = Counter(dd.utt2emo.values())
    return (f"{name}: {len(dd)} utterances, {len(dd.spk2utt)} speakers; corpora "
            + ", ".join(f"{c} {n}" for c, n in sorted(by_corpus.items()))
            + "; classes " + ", ".join(f"{c} {n}" for c, n in sorted(classes.items()))
            + f"; with A/V/D {len(dd.field('utt2avd'))}")


def build(spec: BuildSpec, data: Path) -> dict[str, DataDir]:
    """Write the build's train (and dev, test) data dirs under ``data``; return them by name."""
    require_prepared(spec)
    parts = []
    for r in spec.recipes:
        name, dd = canonical_datadir(r, spec.set, spec.labels)
        parts.append(rescale_avd(_corpus_ids(dd, name), name, spec))
    pool = DataDir.combine(parts)
    if spec.dev:
        split = split_by_speaker(pool, {"train": 1.0 - spec.dev_fraction, "dev": spec.dev_fraction}, seed=spec.seed)
        out = {spec.train: split["train"], spec.dev: split["dev"]}
    else:
        out = {spec.train: pool}
    if spec.test:
        name, dd = canonical_datadir(spec.recipe_dir, spec.set, spec.labels, spec.test_mapping, data=data)
        out[spec.test] = rescale_avd(dd, name, spec)
    for set_name, dd in out.items():
        for n in [n for n in LABEL_FILES if n in dd.tables and not dd.tables[n]]:
            del dd.tables[n]  # a part without any A/V/D gets no empty utt2avd
        dd.write(data / set_name)
        log.info("wrote %s", describe(str(data / set_name), dd))
    return out
