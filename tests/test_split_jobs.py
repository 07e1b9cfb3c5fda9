"""``sertk train/evaluate --split-jobs N``: a config's splits run N at a time, one process each, and every
figure is the one the serial run gives (ser.sh uses it for a stage's lone config)."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

from test_stale_models import LABELS, _config, recipe  # noqa: F401  (the fixture: low/high tones)

ROOT = Path(__file__).resolve().parent.parent


def _two_protocols(root: Path) -> Path:
    p = root / "protocols2.yaml"
    p.write_text(yaml.safe_dump({"corpus": "toy", "label_map": "labels.yaml", "protocols": {
        "p": {"scheme": "speaker-independent", "train": "train", "dev": "dev", "test": ["test"]},
        "q": {"scheme": "speaker-independent", "train": "train", "dev": "test", "test": ["dev", "test"]}}}))
    return p


def _run(root: Path, exp: Path, cfg: Path, protocols: Path, *extra: str) -> subprocess.CompletedProcess:
    for step in ("train", "evaluate"):
        r = subprocess.run([sys.executable, "-m", f"sertk.bin.{step}", "--config", str(cfg), "--protocols",
                            str(protocols), "--data", str(root / "data"), "--dump", str(root / "dump"), "--exp",
                            str(exp), *extra], cwd=root, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _metrics(exp: Path) -> dict:
    return {str(p.relative_to(exp)): json.loads(p.read_text())["metrics"] for p in sorted(exp.rglob("results.json"))}


def test_splits_at_once_give_the_serial_figures(recipe):  # noqa: F811
    cfg, protocols = _config(recipe / "c.yaml", epochs=2), _two_protocols(recipe)
    _run(recipe, recipe / "serial", cfg, protocols)
    r = _run(recipe, recipe / "par", cfg, protocols, "--split-jobs", "2")
    assert "[p] " in r.stderr and "[q] " in r.stderr  # two processes, their lines named
    serial, par = _metrics(recipe / "serial"), _metrics(recipe / "par")
    assert set(serial) == set(par) and len(serial) == 3
    assert serial == par
    # the experiment dir records the command as given (re-running it runs both splits), the log has both
    assert "--split-jobs 2" in (recipe / "par" / "run_train.sh").read_text()
    assert "--split " not in (recipe / "par" / "run_train.sh").read_text()
    log = (recipe / "par" / "log" / "train.log").read_text()
    assert "train c on p" in log and "train c on q" in log


def test_one_split_by_tag_and_a_wrong_tag_is_named(recipe):  # noqa: F811
    cfg, protocols = _config(recipe / "c.yaml", epochs=1), _two_protocols(recipe)
    r = subprocess.run([sys.executable, "-m", "sertk.bin.train", "--config", str(cfg), "--protocols", str(protocols),
                        "--data", str(recipe / "data"), "--exp", str(recipe / "one"), "--split", "x"],
                       cwd=recipe, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "--split x: no such split" in r.stderr and "p, q" in r.stderr
