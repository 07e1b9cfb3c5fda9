"""test_export's tone corpus as a one-protocol recipe: what tests that run `sertk train`/`evaluate` need."""
from pathlib import Path

import numpy as np
import yaml

from test_export import _toy_corpus

SETS = ("train", "dev", "test")


def toy_recipe(root: Path, labels: list[str]) -> Path:
    """Data dirs with a class per pitch quantile (utt2emo from utt2avd), labels.yaml and protocols.yaml."""
    _toy_corpus(root / "data", np.random.default_rng(0))
    for d in (root / "data" / s for s in SETS):
        rows = [line.split() for line in (d / "utt2avd").read_text().splitlines()]
        n = len(labels)
        (d / "utt2emo").write_text("".join(f"{u} {labels[min(n - 1, int(float(a) * n))]}\n" for u, a, *_ in rows))
    (root / "labels.yaml").write_text(yaml.safe_dump({"labels": labels}))
    (root / "protocols.yaml").write_text(yaml.safe_dump({
        "corpus": "toy", "label_map": "labels.yaml",
        "protocols": {"p": {"scheme": "speaker-independent", "train": "train", "dev": "dev", "test": ["test"]}}}))
    return root
