#!/usr/bin/env python3
"""Calibrate the mini_emo generator against its stated baseline band.

Generates the corpus from a config (one or more seeds), extracts eGeMAPSv02
functionals with openSMILE, and fits StandardScaler + LogisticRegression
(categories) and Ridge (A/V/D) on each domain's train split. Prints UAR
in-domain and cross-domain, with and without per-speaker z-normalisation,
and A/V/D CCC of ridge regression. The generator's target (docs/mini_emo.md): in-domain UAR in
[0.55, 0.90], clearly lower across domains, clearly higher with per-speaker
normalisation. Nothing here tunes the corpus toward any other method.

  python local/calibrate.py --config conf/synth.yaml --work /tmp/mini_emo_calib --nj 2 [--seeds 1 2 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sertk.common.config import load_config  # noqa: E402
from sertk.common.fileio import hash_paths  # noqa: E402
from sertk.data.audio import read_audio  # noqa: E402
from sertk.data.datadir import DataDir  # noqa: E402
from sertk.data.synth import generate_corpus  # noqa: E402
from sertk.eval.metrics import ccc, classification_metrics  # noqa: E402
from sertk.tasks.egemaps_linear import speaker_normalize  # noqa: E402

_SMILE = None


def _egemaps(path: str) -> np.ndarray:
    """88 eGeMAPSv02 functionals of one file, read at 16 kHz as stage 2 reads it."""
    global _SMILE
    if _SMILE is None:
        import opensmile
        _SMILE = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                 feature_level=opensmile.FeatureLevel.Functionals)
    wav, sr = read_audio(path, target_sr=16000)
    return _SMILE.process_signal(wav, sr).to_numpy()[0]


def features(datadir: Path, cache: Path, nj: int) -> tuple[np.ndarray, float]:
    """Feature matrix in ``DataDir.utts`` order (cached by the data dir's content)."""
    key = hash_paths([datadir])[:16]
    f = cache / f"{datadir.name}.{key}.npy"
    if f.exists():
        return np.load(f), 0.0
    d = DataDir.read(datadir)
    paths = [d.audio_source(u)[0] for u in d.utts]
    start = time.time()
    if nj > 1:
        with ProcessPoolExecutor(nj) as ex:
            x = np.stack(list(ex.map(_egemaps, paths, chunksize=16)))
    else:
        x = np.stack([_egemaps(p) for p in paths])
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, x)
    return x, time.time() - start


def load_set(data: Path, name: str, cache: Path, nj: int):
    d = DataDir.read(data / name)
    x, secs = features(data / name, cache, nj)
    utts = d.utts
    return {"x": x, "spk": [d.utt2spk[u] for u in utts], "emo": [d.utt2emo[u] for u in utts],
            "avd": np.array([d.utt2avd[u] for u in utts]), "secs": secs}


def evaluate(train: dict, test: dict, labels: list[str]) -> dict:
    """UAR of StandardScaler + LogisticRegression (as stage 3's egemaps_lr), without and
    with per-speaker z-normalisation, and CCC of a ridge regressor on z-scores clipped
    to +-5: eGeMAPS' stddevNorm functionals (sd / mean) explode for the odd utterance
    whose mean is near zero, and one such outlier ruins a linear regressor's CCC."""
    out = {}
    for norm in (False, True):
        xtr = speaker_normalize(train["x"], train["spk"]) if norm else train["x"]
        xte = speaker_normalize(test["x"], test["spk"]) if norm else test["x"]
        sc = StandardScaler().fit(xtr)
        clf = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(sc.transform(xtr), train["emo"])
        pred = clf.predict(sc.transform(xte))
        out["uar_spknorm" if norm else "uar"] = classification_metrics(test["emo"], list(pred), labels)["uar"]
        if not norm:
            ztr, zte = np.clip(sc.transform(xtr), -5, 5), np.clip(sc.transform(xte), -5, 5)
            p = Ridge(alpha=10.0).fit(ztr, train["avd"]).predict(zte)
            for i, dim in enumerate(("A", "V", "D")):
                out[f"ccc_{dim}"] = ccc(p[:, i], test["avd"][:, i])
    return out


def calibrate_once(cfg: dict, work: Path, nj: int) -> tuple[dict, dict]:
    t0 = time.time()
    summary = generate_corpus(cfg, work / "audio", work / "data", nj=nj)
    gen_s = time.time() - t0
    labels = list(cfg["emotions"])
    domains = list(cfg["domains"])
    sets = {}
    extract_s = 0.0
    for dom in domains:
        for split in ("train", "dev", "test"):
            sets[f"{dom}_{split}"] = load_set(work / "data", f"{dom}_{split}", work / "feats", nj)
            extract_s += sets[f"{dom}_{split}"]["secs"]
    rows = {}
    for src in domains:
        for tgt in domains:
            rows[f"{src}_train -> {tgt}_test"] = evaluate(sets[f"{src}_train"], sets[f"{tgt}_test"], labels)
        rows[f"{src}_train -> {src}_dev"] = evaluate(sets[f"{src}_train"], sets[f"{src}_dev"], labels)
    n = sum(len(s["emo"]) for s in sets.values())
    timing = {"utterances": n, "generate_s": round(gen_s, 1), "extract_s": round(extract_s, 1),
              "skipped_generation": bool(summary.get("skipped"))}
    return rows, timing


def print_table(rows: dict, title: str) -> None:
    cols = ("uar", "uar_spknorm", "ccc_A", "ccc_V", "ccc_D")
    print(f"\n{title}")
    print(f"{'train -> test':34s} " + " ".join(f"{c:>11s}" for c in cols))
    for name, r in rows.items():
        print(f"{name:34s} " + " ".join(f"{r[c]:11.3f}" for c in cols))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="conf/synth.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", required=True, help="scratch dir for audio, data dirs and features")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="corpus seeds (default: the config's)")
    p.add_argument("--nj", type=int, default=2)
    p.add_argument("--json", help="also write all figures here")
    args = p.parse_args(argv)
    base = load_config(args.config, args.overrides)
    seeds = args.seeds or [int(base["seed"])]
    all_rows = []
    for seed in seeds:
        cfg = load_config(args.config, args.overrides + [f"seed={seed}"])
        rows, timing = calibrate_once(cfg, Path(args.work) / f"seed{seed}", args.nj)
        print_table(rows, f"seed {seed}: {timing}")
        all_rows.append({"seed": seed, "rows": rows, "timing": timing})
    if len(seeds) > 1:
        mean = {k: {c: float(np.mean([r["rows"][k][c] for r in all_rows])) for c in v}
                for k, v in all_rows[0]["rows"].items()}
        sd = {k: {c: float(np.std([r["rows"][k][c] for r in all_rows])) for c in v}
              for k, v in all_rows[0]["rows"].items()}
        print_table(mean, f"mean over seeds {seeds}")
        print_table(sd, "standard deviation over seeds")
    if args.json:
        Path(args.json).write_text(json.dumps(all_rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
