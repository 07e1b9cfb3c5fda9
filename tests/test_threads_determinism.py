"""Figures that depend neither on job order nor on how many jobs run at once (issue 20).

A job's CPU thread count is its own setting (``--job-threads``, ``sertk ... --threads``),
recorded in every results.json and run digest, never a share of the cores that
``--config-jobs`` hands out; shared caches (encoder features, teacher labels) hold values
that do not depend on which job filled them. So a reduced mini_emo recipe gives the same
figures and byte-identical zoo weights at ``--config-jobs 1`` and ``--config-jobs 2``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sertk.common.entry import base_parser
from sertk.data.audio import write_audio
from sertk.eval.results import write_result
from sertk.tasks.run_digest import check_trained, write_run
from sertk.train.distill import AugmentConfig, cache_dir, label_with_teacher
from sertk.zoo.common import shrink_zoo_config

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "egs" / "mini_emo"
# SELM first: with one job at a time it fills the encoder store it shares with the probe; with two,
# the probe starts while SELM is still filling it
SER = ["selm", "egemaps_lr", "probe_w2v"]
CORPUS = ["domains.studio.speakers.train=3", "domains.studio.speakers.dev=2", "domains.studio.speakers.test=2",
          "domains.studio.utts_per_speaker=4", "domains.phone.speakers.train=3", "domains.phone.speakers.dev=2",
          "domains.phone.speakers.test=2", "domains.phone.utts_per_speaker=4",
          "domains.studio.added_speakers.test=0", "domains.phone.added_speakers.test=0"]
POOL = ["pretrain.speakers=4", "pretrain.utts_per_speaker=4"]
TIMING = re.compile(r"(seconds|_s|_ms|rtf.*|latency.*|ram.*)$")  # wall-clock figures: never comparable


# ------------------------------------------------ the thread count: set, recorded --
PROTOCOL = {"corpus": "c", "train": "tr", "test": "te", "scheme": "s", "label_map": "m"}


@pytest.fixture
def threads_restored():
    yield
    from sertk.common.threads import set_threads

    set_threads(1)  # the test session's count (conftest: OMP_NUM_THREADS=1)


def test_threads_option_sets_the_process_and_results_record_it(tmp_path, threads_restored):
    base_parser("an entry point").parse_args(["--threads", "2"])
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    rec = write_result(tmp_path / "results.json", stage=4, name="n", task="classification", protocol=PROTOCOL,
                       metrics={"uar": 0.5})
    assert rec["threads"] == 2 and json.loads((tmp_path / "results.json").read_text())["threads"] == 2
    base_parser("an entry point").parse_args([])  # the default: one thread, whatever the machine has
    assert torch.get_num_threads() == 1
    with pytest.raises(SystemExit):
        base_parser("an entry point").parse_args(["--threads", "0"])


def test_a_model_trained_on_another_thread_count_is_evaluated_with_a_warning(tmp_path, caplog):
    parts = {"config": {"task": "x"}, "threads": 1, "code": {"sertk": "1"}}
    write_run(tmp_path, parts, "finished")
    log = logging.getLogger("test")
    with caplog.at_level(logging.WARNING):
        check_trained(tmp_path, {**parts, "threads": 2}, log)
    assert "trained on another CPU thread count (threads: 1 -> 2)" in caplog.text
    with pytest.raises(SystemExit, match="other settings"):  # a setting still refuses
        check_trained(tmp_path, {**parts, "threads": 2, "config": {"task": "y"}}, log)


def test_recipe_job_threads_must_be_a_positive_integer(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "egs/TEMPLATE/ser.sh"), "--job-threads", "0"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "--job-threads must be a positive integer, got '0'" in r.stderr


# ------------------------------------------------------------ teacher-label cache --
class _Teacher(torch.nn.Module):
    """A tiny A/V/D teacher over 10 ms frames: float32 and bf16 outputs differ visibly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.frame, self.out = torch.nn.Linear(160, 32), torch.nn.Linear(32, 3)

    def forward(self, wav, lengths):
        n = wav.shape[1] // 160
        h = torch.tanh(self.frame(wav[:, :n * 160].reshape(len(wav), n, 160)))
        mask = (torch.arange(n)[None] < (lengths // 160)[:, None]).to(h.dtype)[..., None]
        return self.out((h * mask).sum(1) / mask.sum(1))


def _wav_dir(root: Path, name: str, idx) -> Path:
    """A data dir over some of eight fixed audio files (utterance u<i> is always the same file)."""
    d = root / name
    d.mkdir(parents=True)
    rows = []
    for i in idx:
        p = root / "wav" / f"u{i}.wav"
        if not p.exists():
            p.parent.mkdir(exist_ok=True)
            rng = np.random.default_rng(i)
            write_audio(p, (0.1 * rng.standard_normal(1600 * (2 + i % 3))).astype(np.float32), 16000)
        rows.append(f"u{i} {p}")
    (d / "wav.scp").write_text("".join(f"{r}\n" for r in rows))
    (d / "utt2spk").write_text("".join(f"u{i} s\n" for i in idx))
    return d


def test_teacher_labels_do_not_depend_on_what_filled_the_cache(tmp_path):
    """Issue 20: two sets sharing utterances, labelled in either order, and after a job that labels in
    another precision (train.amp: bf16), give each (utterance, copy) the labels it gets alone."""
    aug, teacher, seeds = AugmentConfig(), _Teacher(), [0, 1]
    first, second = _wav_dir(tmp_path, "first", range(0, 6)), _wav_dir(tmp_path, "second", range(3, 8))

    def labels(name, *jobs):
        cache = cache_dir(tmp_path / name, "teacher", aug)
        out = {}
        for d, amp in jobs:
            got = label_with_teacher(teacher, d, cache, seeds, aug, amp=amp)
            if amp is False:
                out.update(got)
        return out

    one = labels("one", (first, False), (second, False))
    other = labels("other", (second, False), (first, False))
    after_bf16 = labels("after_bf16", (first, "bf16"), (second, False), (first, False))
    alone = {k: v for i in range(8) for k, v in labels(f"alone{i}", (_wav_dir(tmp_path / "single", f"u{i}", [i]),
                                                                    False)).items()}
    assert sorted(alone) == sorted(one) == sorted(other) == sorted(after_bf16)
    for k in alone:
        assert np.array_equal(one[k], alone[k]) and np.array_equal(other[k], alone[k]), k
        assert np.array_equal(after_bf16[k], alone[k]), k  # the bf16 job's labels are in a table of their own
    bf16 = label_with_teacher(None, first, cache_dir(tmp_path / "after_bf16", "teacher", aug), seeds, aug, amp="bf16")
    assert not np.array_equal(bf16[("u0", 0)], alone[("u0", 0)])


def test_a_precision_names_its_table():
    from sertk.train.distill import label_precision, table_path

    assert label_precision(_Teacher(), False) == label_precision(_Teacher(), "auto") == "cpu-float32"
    assert label_precision(_Teacher(), "bf16") == "cpu-bfloat16"
    assert table_path(Path("c"), 1) == Path("c/seed1.txt")  # CPU float32: the tables' names before precisions
    assert table_path(Path("c"), 0, "cuda-bfloat16") == Path("c/seed0.cuda-bfloat16.txt")


# ----------------------------------------------- a reduced recipe, 1 or 2 jobs at once --
def _synth(part: str, sets: list[str]) -> str:
    extra = "" if part == "eval" else f" --part {part}"
    return ("$python -m sertk.bin.make_synth_corpus --config conf/synth.yaml --out-audio downloads/audio "
            f"--out-data $data{extra} " + " ".join(f"--set {s}" for s in sets))


def _zoo_names(configs: list[Path]) -> list[str]:
    """The zoo models the configs name (zoo/<name>)."""
    return sorted({m for c in configs for m in re.findall(r"zoo/([A-Za-z0-9_.-]+)", c.read_text())})


def scratch_recipe(root: Path) -> Path:
    """A copy of egs/mini_emo with a shrunk zoo of the models the SER configs name, SELM few-shot at one size."""
    (root / "egs").mkdir(parents=True)
    (root / "egs" / "TEMPLATE").symlink_to(ROOT / "egs" / "TEMPLATE")
    dst = root / "egs" / "mini_emo"
    shutil.copytree(RECIPE, dst, ignore=shutil.ignore_patterns("data", "exp", "dump", "downloads", "zoo", "RESULTS.md"))
    zoo = yaml.safe_load((dst / "conf" / "zoo.yaml").read_text())
    names = _zoo_names([dst / "conf" / f"{c}.yaml" for c in SER])
    zoo["models"] = {n: zoo["models"][n] for n in names}
    assert len(names) >= 2, names  # stage 0 builds two models at once under --config-jobs 2
    (dst / "conf" / "zoo.yaml").write_text(yaml.safe_dump(shrink_zoo_config(zoo), sort_keys=False))
    selm = yaml.safe_load((dst / "conf" / "selm.yaml").read_text())
    selm["fewshot"]["k"] = selm["fewshot"]["k"][:1]
    selm["fewshot"].setdefault("train", {})["epochs"] = 1
    selm.get("eval", {}).pop("baseline", None)  # exp/classifier is not part of this run
    (dst / "conf" / "selm.yaml").write_text(yaml.safe_dump(selm, sort_keys=False))
    for c in SER:  # one protocol is enough
        path = dst / "conf" / f"{c}.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "protocols": ["studio"]}, sort_keys=False))
    return dst


def run_recipe(recipe: Path, jobs: int, first: int, last: int) -> None:
    """run.sh with no thread count set from outside; its log in ``recipe/run<first>-<last>.log``."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}  # nothing set from outside
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    cmd = ["bash", "run.sh", "--stage", str(first), "--stop-stage", str(last), "--config-jobs", str(jobs),
           "--prepare-cmd", _synth("eval", CORPUS), "--pool-cmd", _synth("pretrain", POOL),
           "--ser-configs", " ".join(f"conf/{c}.yaml" for c in SER), "--icl-configs", "",
           "--distill-configs", "", "--zsfuse-configs", "", "--token-configs", "",  # stage 0: SER's zoo models only
           "--overrides", "train.epochs=1 eval.bootstrap=20"]
    r = subprocess.run(cmd, cwd=recipe, env=env, capture_output=True, text=True, timeout=900)
    (recipe / f"run{first}-{last}.log").write_text(r.stderr)
    if r.returncode != 0:
        pytest.fail(f"run.sh --config-jobs {jobs} stages {first}-{last} failed:\n{r.stderr[-6000:]}")


def _without_timing(node):
    if isinstance(node, dict):
        return {k: _without_timing(v) for k, v in node.items() if not TIMING.search(str(k))}
    if isinstance(node, list):
        return [_without_timing(v) for v in node]
    return node


def _results(recipe: Path) -> dict[str, dict]:
    return {str(p.relative_to(recipe / "exp")): json.loads(p.read_text())
            for p in sorted((recipe / "exp").rglob("results.json"))}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The reduced recipe's stages 0 and 3-4 at --config-jobs 1 and 2, on the same data (stages 1-2 run
    no config job: they run once, and each copy finds them up to date)."""
    t0 = time.time()
    base = scratch_recipe(tmp_path_factory.mktemp("base"))
    run_recipe(base, 1, 1, 2)
    runs = []
    for jobs in (1, 2):
        recipe = tmp_path_factory.mktemp(f"jobs{jobs}") / "egs"
        shutil.copytree(base.parent, recipe, symlinks=True)
        run_recipe(recipe / "mini_emo", jobs, 0, 4)
        runs.append(recipe / "mini_emo")
    print(f"reduced recipe, stages 0-4 at --config-jobs 1 and 2: {time.time() - t0:.0f} s")
    return runs


def test_zoo_weights_do_not_depend_on_config_jobs(two_runs):
    one, two = two_runs
    files = sorted(p.relative_to(one / "zoo") for p in (one / "zoo").glob("*/*.safetensors"))
    assert len(files) >= 2
    differ = [str(f) for f in files if (one / "zoo" / f).read_bytes() != (two / "zoo" / f).read_bytes()]
    assert not differ, f"zoo weights differ between --config-jobs 1 and 2: {differ}"


def test_results_do_not_depend_on_config_jobs(two_runs):
    one, two = two_runs
    a, b = _results(one), _results(two)
    assert sorted(a) == sorted(b) and len(a) >= 3 * 2  # three configs, two test sets each
    differ = [k for k in a if _without_timing(a[k]["metrics"]) != _without_timing(b[k]["metrics"])]
    assert not differ, f"{len(differ)} of {len(a)} results differ between --config-jobs 1 and 2: {differ}"
    # every job ran on --job-threads (default 1), recorded in its results and run digests
    assert {r["threads"] for r in (*a.values(), *b.values())} == {1}
    digests = [json.loads(p.read_text()) for r in (one, two) for p in (r / "exp").rglob("run_digest.json")]
    assert len(digests) >= 6 and {d["parts"]["threads"] for d in digests} == {1}
