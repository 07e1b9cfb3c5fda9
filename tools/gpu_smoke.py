"""Smoke run of every implemented stage on a device: the reduced mini_emo recipe, tiny models.

Runs ``egs/mini_emo/run.sh`` in a scratch copy (a reduced corpus and pool, a
shrunken zoo, one epoch) with ``train.device=<device>`` for every config, plus
the real recipes' code paths that mini_emo does not take: a teacher loaded
from a released-style checkpoint dir (``pretrained:``), the two-member teacher
ensemble and a MobileNetV4 student. Then checks that every model trained on
the device asked for (its train.log) and that every expected result exists.
Exits non-zero on any failure. Usage: ``tools/gpu_smoke.sh [--device cuda|cpu]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ["domains.studio.speakers.train=4", "domains.studio.speakers.dev=2", "domains.studio.speakers.test=2",
          "domains.studio.utts_per_speaker=8", "domains.phone.speakers.train=4", "domains.phone.speakers.dev=2",
          "domains.phone.speakers.test=2", "domains.phone.utts_per_speaker=8",
          "domains.studio.added_speakers.test=0", "domains.phone.added_speakers.test=0"]
POOL = ["pretrain.speakers=4", "pretrain.utts_per_speaker=8"]
# probe_w2v / probe_wavlm are not in the default demo: they keep the Wav2Vec2 and WavLM paths (and stage 0 builds
# those zoo models because they name them); everything else runs on the real Whisper tiny.en
SER = ["egemaps_lr", "probe_whisper", "probe_w2v", "probe_wavlm", "classifier", "selm"]
DISTILL = ["regressor", "teacher", "teacher_ensemble", "teacher_released", "wav2small", "mobilenetv3_small",
           "mobilenetv4_conv_small"]
STUDENTS = ["wav2small", "mobilenetv3_small", "mobilenetv4_conv_small"]
ICL = ["icl"]              # stages 5-6
ZSFUSE = ["zsfuse"]        # stage 9
TOKENS = ["tokens_alm"]    # stage 10


def _synth(part: str, sets: list[str]) -> str:
    extra = "" if part == "eval" else f" --part {part}"
    return ("python3 -m sertk.bin.make_synth_corpus --config conf/synth.yaml --out-audio downloads/audio "
            f"--out-data data{extra} " + " ".join(f"--set {s}" for s in sets))


def scratch_recipe(work: Path, device: str) -> Path:
    """A copy of egs/mini_emo whose zoo is tiny and trains on ``device``."""
    (work / "egs").mkdir(parents=True)
    (work / "egs" / "TEMPLATE").symlink_to(ROOT / "egs" / "TEMPLATE")
    dst = work / "egs" / "mini_emo"
    shutil.copytree(ROOT / "egs" / "mini_emo", dst,
                    ignore=shutil.ignore_patterns("data", "exp", "dump", "downloads", "zoo", "RESULTS.md"))
    from sertk.zoo.common import shrink_zoo_config

    zoo = shrink_zoo_config(yaml.safe_load((dst / "conf" / "zoo.yaml").read_text()))
    for e in zoo["models"].values():
        if "train" in e:  # the imported Whisper trains nothing
            e["train"]["device"] = device
    (dst / "conf" / "zoo.yaml").write_text(yaml.safe_dump(zoo, sort_keys=False))
    for student in STUDENTS:  # a one-epoch teacher need not learn
        path = dst / "conf" / f"{student}.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg.setdefault("distill", {})["allow_collapsed_teacher"] = True
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    selm = yaml.safe_load((dst / "conf" / "selm.yaml").read_text())  # few-shot: two sizes, one epoch each
    selm["fewshot"]["k"] = selm["fewshot"]["k"][:2]
    selm["fewshot"].setdefault("train", {})["epochs"] = 1
    selm["seeds"] = selm.get("seeds", [0])[:2]  # repeated seeds: two are enough to run the path
    (dst / "conf" / "selm.yaml").write_text(yaml.safe_dump(selm, sort_keys=False))
    # the real recipes' teacher: a released checkpoint dir (config.json + weights), loaded as is
    released = yaml.safe_load((dst / "conf" / "teacher.yaml").read_text())
    released["members"] = [{"name": "dawn", "pretrained": "zoo/dawn_released"}]
    (dst / "conf" / "teacher_released.yaml").write_text(yaml.safe_dump(released, sort_keys=False))
    return dst


def write_released_teacher(recipe: Path) -> None:
    """A Dawn checkpoint dir in the released layout, on the zoo's Wav2Vec2 (stage 0 must have run)."""
    import torch
    from safetensors.torch import save_file

    from sertk.models.dawn import DawnRegressor

    out = recipe / "zoo" / "dawn_released"
    torch.manual_seed(0)
    model = DawnRegressor.from_spec({"name_or_path": str(recipe / "zoo" / "w2v")})
    out.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(out / "config.json"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))


def run(recipe: Path, device: str, stages: tuple[int, int], log) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}".rstrip(":"))
    cmd = ["bash", "run.sh", "--stage", str(stages[0]), "--stop-stage", str(stages[1]),
           "--prepare-cmd", _synth("eval", CORPUS), "--pool-cmd", _synth("pretrain", POOL),
           "--ser-configs", " ".join(f"conf/{c}.yaml" for c in SER),
           "--distill-configs", " ".join(f"conf/{c}.yaml" for c in DISTILL),
           "--icl-configs", " ".join(f"conf/{c}.yaml" for c in ICL),
           "--zsfuse-configs", " ".join(f"conf/{c}.yaml" for c in ZSFUSE),
           "--token-configs", " ".join(f"conf/{c}.yaml" for c in TOKENS),
           "--overrides", f"train.device={device} train.epochs=1 eval.bootstrap=50"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=recipe, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"  stages {stages[0]}-{stages[1]}: exit {r.returncode} in {time.time() - t0:.0f} s", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"gpu_smoke: run.sh stages {stages[0]}-{stages[1]} failed (exit {r.returncode}); "
                         f"see {log.name}")


def check(recipe: Path, device: str) -> list[str]:
    """Problems found: missing results, models that trained elsewhere than on ``device``."""
    problems = []
    exp = recipe / "exp"
    for cfg in SER + ICL + ZSFUSE:
        seeds = yaml.safe_load((recipe / "conf" / f"{cfg}.yaml").read_text()).get("seeds")
        for proto, tests in (("studio", ("studio_test", "phone_test")), ("phone", ("phone_test", "studio_test"))):
            for t, run in ((t, f"{proto}/seed{s}" if seeds else proto) for t in tests for s in (seeds or [None])):
                if not (exp / cfg / run / "eval" / t / "results.json").is_file():
                    problems.append(f"missing {cfg}/{run}/eval/{t}/results.json")
    for cfg in DISTILL:
        protos = yaml.safe_load((recipe / "conf" / f"{cfg}.yaml").read_text()).get("protocols") or ["studio", "phone"]
        for proto in protos:
            for t in ("studio_test", "phone_test"):
                if not (exp / cfg / proto / "eval" / t / "results.json").is_file():
                    problems.append(f"missing {cfg}/{proto}/eval/{t}/results.json")
    for cfg in TOKENS:  # one evaluation of the zoo ALM per test set, every condition
        for t in ("studio_test", "phone_test"):
            if not list((exp / cfg).glob(f"*/eval/{t}/aligned/*/results.json")):
                problems.append(f"missing {cfg}/*/eval/{t}/aligned/*/results.json")
    want = "cuda" if device.startswith("cuda") else "cpu"
    trained = set()
    for p in sorted(list(exp.rglob("train.log")) + list((recipe / "zoo" / ".work").rglob("train.log"))):
        ran = re.findall(r"parameters on (\w+)", p.read_text())  # the trainer's line; linear models have none
        if ran:
            trained.add(p.relative_to(recipe).parts[1])
        if any(d != want for d in ran):
            problems.append(f"{p.relative_to(recipe)}: trained on {sorted(set(ran))}, not {want}")
    neural = {"classifier", "selm", "regressor", "teacher", "teacher_ensemble", *STUDENTS, *ICL}
    for name in sorted(neural - trained):
        problems.append(f"exp/{name}: no trainer log line 'parameters on {want}'")
    if not (exp / "RESULTS.md").is_file():
        problems.append("missing exp/RESULTS.md (stage 11)")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--workdir", type=Path, help="scratch dir (default: a new temporary dir, removed on success)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir on success")
    args = p.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("gpu_smoke: --device cuda but torch sees no GPU (use --device cpu on a CPU machine)")
        print(f"gpu_smoke: {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"gpu_smoke: --workdir {args.workdir} is not empty; give a new or empty dir")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sertk-gpu-smoke-"))
    recipe = scratch_recipe(work, args.device)
    log_path = work / "smoke.log"
    print(f"gpu_smoke: device {args.device}, recipe {recipe}, log {log_path}", flush=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        run(recipe, args.device, (0, 0), log)
        write_released_teacher(recipe)
        run(recipe, args.device, (1, 11), log)
    problems = check(recipe, args.device)
    n_results = len(list((recipe / "exp").rglob("results.json")))
    for line in problems:
        print(f"  FAIL {line}")
    print(f"gpu_smoke: {n_results} results, {len(problems)} problem(s), {time.time() - t0:.0f} s on {args.device}",
          flush=True)
    summary = {"device": args.device, "results": n_results, "problems": problems, "seconds": round(time.time() - t0)}
    (work / "smoke.json").write_text(json.dumps(summary, indent=1))
    if problems:
        print(f"gpu_smoke: FAILED (scratch kept in {work})")
        return 1
    if not (args.keep or args.workdir):
        shutil.rmtree(work)
    print("gpu_smoke: PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
