"""Cross-corpus eGeMAPS baseline: train on one corpus (or all but one), test on the others; one matrix.

  sertk cross-corpus --recipes egs/ravdess egs/cremad egs/iemocap egs/emodb --out exp/cross_corpus
  sertk cross-corpus --recipes egs/* --labels angry neutral --loco --speaker-norm
  sertk cross-corpus --train egs/iemocap egs/msp_podcast --test egs/ravdess egs/cremad --out exp/xc

Each recipe must have run stage 1 (its data/all holds the whole corpus) and
has conf/labels_canonical.yaml mapping its label codes onto sertk's
canonical vocabulary (sertk.data.labels.CANONICAL_EMOTIONS). Utterances
whose label maps outside --labels are left out (counted in the log). eGeMAPS
functionals are taken from the recipe's stage-2 stores (dump/egemaps/*/)
when they hold an utterance, and extracted into OUT otherwise.

Writes OUT/data/<corpus> (canonical labels), OUT/conf/protocols.yaml (one
protocol per training corpus, train_<A>, and with --loco one per held-out
corpus, loco_<B>; with --train/--test one protocol, trained on the union of
the --train corpora), OUT/exp/<protocol>/eval/<test>/results.json (protocol id,
UAR, WA, confusion) and the matrix OUT/matrix.md and OUT/matrix.json (rows:
training data, columns: test corpus; UAR, WA in parentheses). Classes a test
corpus lacks are not scored (UAR averages the classes present in its labels).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from sertk.common.config import ConfigError, load_yaml
from sertk.common.fileio import write_json_atomic, write_text_atomic
from sertk.common.logging import setup_logging
from sertk.common.protocol import load_protocols
from sertk.data.datadir import DataDir, DataDirError, byte_sorted
from sertk.data.labels import CANONICAL_EMOTIONS, LabelError, LabelMap
from sertk.data.multicorpus import CorpusSetError, canonical_datadir  # noqa: F401 (re-exported)
from sertk.features.egemaps import EgemapsExtractor, extract_datadir
from sertk.features.store import FeatureStoreError, read_scp_index
from sertk.tasks import TaskContext
from sertk.tasks import egemaps_linear

log = logging.getLogger("sertk.cross_corpus")
DEFAULT_CONFIG = {"task": "egemaps_linear", "baseline": True,
                  "model": {"C": 1.0, "class_weight": "balanced", "speaker_norm": False, "regression": False},
                  "eval": {"bootstrap": 200}}


class CrossCorpusError(CorpusSetError):
    """A recipe is not ready (no data, no canonical map) or the request cannot be met."""


def feature_index(recipe: Path, utts: list[str], out_dir: Path, datadir: DataDir, sample_rate: int) -> dict[str, str]:
    """utt -> 'ark:offset' for ``utts``: the recipe's stage-2 stores first, then fresh extraction."""
    want_cfg = EgemapsExtractor(sample_rate).config()
    index: dict[str, str] = {}
    for scp in sorted((recipe / "dump" / "egemaps").glob("*/feats.scp")):
        meta = scp.parent / "meta.json"
        try:
            cfg = json.loads(meta.read_text()).get("config") if meta.is_file() else None
        except json.JSONDecodeError:
            cfg = None
        if cfg is not None and cfg != want_cfg:
            log.info("%s: made with other settings (%s), not reused", scp, cfg)
            continue
        try:
            for u, loc in read_scp_index(scp).items():
                index.setdefault(u, loc)
        except FeatureStoreError as e:
            log.warning("%s: unreadable, not reused (%s)", scp, e)
    missing = [u for u in utts if u not in index]
    if missing:
        part = out_dir / "missing_data"
        datadir.subset(missing).write(part)
        log.info("%s: extracting eGeMAPS for %d utterance(s) without a stage-2 feature", recipe.name, len(missing))
        index.update(read_scp_index(extract_datadir(part, out_dir / "extra", sample_rate)))
    return {u: index[u] for u in utts}


def write_scp(path: Path, index: dict[str, str]) -> None:
    write_text_atomic(path, "".join(f"{u} {index[u]}\n" for u in byte_sorted(index)))


def _write_union(out: Path, name: str, members: list[str], corpora: dict[str, DataDir],
                 scp: dict[str, dict[str, str]]) -> None:
    """A training set made of several corpora: their data dirs combined and their feature indexes joined."""
    DataDir.combine([corpora[a] for a in members]).write(out / "data" / name)
    write_scp(out / "dump" / "egemaps" / name / "feats.scp", {u: loc for a in members for u, loc in scp[a].items()})


def run_cell(cfg: dict, split, ctx: TaskContext) -> list[Path]:
    egemaps_linear.train(cfg, split, ctx)
    return egemaps_linear.evaluate(cfg, split, ctx)


def matrix_tables(results: dict[str, dict[str, dict]], rows: list[str], cols: list[str]) -> str:
    head = "| train \\ test | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = []
        for c in cols:
            m = results.get(r, {}).get(c)
            cells.append("—" if m is None else f"{100 * m['uar']:.1f} ({100 * m['wa']:.1f})")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sertk cross-corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=[], help="recipe dirs (egs/<corpus>): the full matrix")
    p.add_argument("--train", nargs="+", default=[], help="instead of --recipes: train on these recipes together")
    p.add_argument("--test", nargs="+", default=[], help="... and test on each of these")
    p.add_argument("--out", required=True, help="output dir")
    p.add_argument("--labels", nargs="+", default=["angry", "happy", "neutral", "sad"],
                   help="canonical classes to train and score (default: the usual four)")
    p.add_argument("--set", default="all", help="data dir of each recipe to use (default: the whole corpus)")
    p.add_argument("--loco", action="store_true", help="also train on all corpora but one, test on that one")
    p.add_argument("--config", default=None, help="egemaps_linear config (default: LR, balanced, C=1)")
    p.add_argument("--speaker-norm", action="store_true", help="per-speaker z-normalisation of the features")
    p.add_argument("--sample-rate", type=int, default=16000)
    args = p.parse_args(argv)
    out = Path(args.out)
    setup_logging(out / "cross_corpus.log")
    try:
        return _run(args, out)
    except (CorpusSetError, ConfigError, LabelError, DataDirError, FeatureStoreError) as e:
        print(f"sertk cross-corpus: {e}", file=sys.stderr)
        return 1


def _run(args, out: Path) -> int:
    bad = [lab for lab in args.labels if lab not in CANONICAL_EMOTIONS]
    if bad:
        raise CrossCorpusError(f"--labels {bad} are not canonical; choose from {', '.join(CANONICAL_EMOTIONS)}")
    if bool(args.train) != bool(args.test) or (args.train and args.recipes):
        raise CrossCorpusError("give either --recipes (the matrix) or both --train and --test")
    overlap = {Path(r).resolve() for r in args.train} & {Path(r).resolve() for r in args.test}
    if overlap:
        raise CrossCorpusError(f"{sorted(map(str, overlap))} are in both --train and --test")
    recipes = list(dict.fromkeys(args.recipes or [*args.train, *args.test]))
    if len(recipes) < 2:
        raise CrossCorpusError("give at least two recipes")
    cfg = load_yaml(args.config) if args.config else json.loads(json.dumps(DEFAULT_CONFIG))
    if cfg.get("task") != "egemaps_linear":
        raise CrossCorpusError(f"{args.config}: the cross-corpus matrix runs the egemaps_linear task")
    cfg.setdefault("model", {})["speaker_norm"] = bool(args.speaker_norm or cfg["model"].get("speaker_norm"))
    egemaps_linear.check_config(cfg, args.config or "default config")
    labels = list(dict.fromkeys(args.labels))
    corpora: dict[str, DataDir] = {}
    scp: dict[str, dict[str, str]] = {}
    for r in recipes:
        recipe = Path(r)
        name, dd = canonical_datadir(recipe, args.set, labels)
        if name in corpora:
            raise CrossCorpusError(f"recipe {name} is given twice")
        if len(set(dd.utt2emo.values())) < 2:
            raise CrossCorpusError(f"{name}: fewer than two of the classes {labels}; it cannot train a classifier")
        corpora[name] = dd
        dd.write(out / "data" / name)
        scp[name] = feature_index(recipe, dd.utts, out / "features" / name, dd, args.sample_rate)
        write_scp(out / "dump" / "egemaps" / name / "feats.scp", scp[name])
    names = list(corpora)
    if args.train:
        train_names = [Path(r).resolve().name for r in args.train]
        test_names = [Path(r).resolve().name for r in args.test]
        train = "+".join(train_names)
        _write_union(out, train, train_names, corpora, scp)
        protos = {f"train_{train}": {"scheme": "cross-corpus (train on a set of corpora)", "train": train,
                                     "test": test_names}}
        names = test_names
    else:
        protos = {f"train_{a}": {"scheme": "cross-corpus (train on one corpus)", "train": a,
                                 "test": [b for b in names if b != a]} for a in names}
    if args.loco and not args.train and len(names) > 2:
        for b in names:
            others = [a for a in names if a != b]
            train = f"not_{b}"
            _write_union(out, train, others, corpora, scp)
            protos[f"loco_{b}"] = {"scheme": "cross-corpus (leave one corpus out)", "train": train, "test": [b]}
    LabelMap(labels, name=f"canonical{len(labels)}").save(out / "conf" / "labels.yaml")
    write_text_atomic(out / "conf" / "protocols.yaml", yaml.safe_dump(
        {"corpus": "cross_corpus", "label_map": "labels.yaml", "protocols": protos}, sort_keys=False))
    results: dict[str, dict[str, dict]] = {}
    for split in load_protocols(out / "conf" / "protocols.yaml"):
        ctx = TaskContext(data=out / "data", dump=out / "dump", expdir=out / "exp" / split.tag, name="egemaps_lr",
                          stage=4, sample_rate=args.sample_rate)
        for path in run_cell(cfg, split, ctx):
            res = json.loads(Path(path).read_text())
            if res.get("task") != "classification":
                continue
            row = f"all but {split.tests[0]}" if split.protocol.startswith("loco_") else split.train
            test = res["protocol"]["test"]
            results.setdefault(row, {})[test] = {"uar": res["metrics"]["uar"], "wa": res["metrics"]["wa"],
                                                 "results": str(path)}
    rows = list(results)
    table = matrix_tables(results, rows, names)
    write_text_atomic(out / "matrix.md", "# Cross-corpus eGeMAPS + logistic regression\n\n"
                      f"Classes: {', '.join(labels)}. Cells: UAR % (WA %); rows train, columns test.\n\n"
                      + table + "\n")
    write_json_atomic(out / "matrix.json", {"labels": labels, "corpora": names, "results": results})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
