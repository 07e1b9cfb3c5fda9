"""Tasks: the glue that trains and evaluates one kind of model on one protocol split.

Each task module exposes ``train(cfg, split, ctx)`` and ``evaluate(cfg, split, ctx)``;
a config's ``task:`` key names the module. ``sertk train`` / ``sertk evaluate``
loop over the protocol splits and call them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

TASKS = {
    "classifier": "sertk.tasks.speech_classifier",
    "regressor": "sertk.tasks.speech_classifier",
    "egemaps_linear": "sertk.tasks.egemaps_linear",
    "selm": "sertk.tasks.selm",
    "teacher": "sertk.tasks.teacher",
    "distill": "sertk.tasks.distill",
    "probe": "sertk.tasks.probe",
    "concept_alm": "sertk.tasks.concept_alm",
    "zsfuse": "sertk.tasks.zsfuse",
    "icl": "sertk.tasks.icl",
}


@dataclass
class TaskContext:
    """Where a task reads and writes, and what it records in its results."""

    data: Path          # root of the data dirs
    dump: Path          # features and caches
    expdir: Path        # this config's experiment dir for this split
    name: str           # result name (config file stem)
    stage: int          # recipe stage number recorded in results
    sample_rate: int = 16000

    def datadir(self, name: str) -> Path:
        return self.data / name


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name])


def check_config(cfg: dict, where: str = "config") -> None:
    """Dry-run a task config: every key known, models buildable, no weights loaded.

    Raises ValueError naming ``where`` and the offending key. Used by the test
    that dry-runs every config under egs/, so a broken config fails CI.
    """
    if "task" not in cfg:
        raise ValueError(f"{where}: missing 'task' (one of {', '.join(sorted(TASKS))})")
    task = get_task(cfg["task"])
    protocols = cfg.get("protocols")
    if protocols is not None and not (isinstance(protocols, list) and all(isinstance(p, str) for p in protocols)):
        raise ValueError(f"{where}: 'protocols' must be a list of protocol names")
    if cfg.get("seeds") is not None:  # the runner's key, as protocols: is (sertk.tasks.runner)
        from sertk.tasks.runner import parse_seeds
        try:
            parse_seeds(cfg["seeds"], f"{where}: seeds")
        except SystemExit as e:
            raise ValueError(str(e)) from None
        if not isinstance(cfg.get("train"), dict):
            raise ValueError(f"{where}: seeds: this {cfg['task']} config has no train: block, so no seed to vary")
    task.check_config({k: v for k, v in cfg.items() if k not in ("protocols", "seeds")}, where)


def reject_unknown(section: dict, allowed: set[str], where: str) -> None:
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def label_map_of(cfg: dict, split, task: str):
    """The config's ``label_map``, else the protocol's; a clear error when neither names one."""
    from sertk.data.labels import LabelMap
    path = cfg.get("label_map") or split.label_map
    if not path:
        raise ValueError(f"{task} needs a label map (protocols.yaml 'label_map' or config 'label_map')")
    return LabelMap.load(path)


CROP_KEYS = {"max_duration", "random_crop", "train_crop"}


def audio_crop(data: dict | None, train: bool, where: str = "data") -> dict:
    """``AudioDataset`` crop arguments of a ``data:`` section. ``max_duration`` caps every utterance (centre
    crop: dev, test and ``sertk predict``); ``train_crop`` (seconds) trains on a random window of that length
    instead (cheaper steps, more views of each utterance), ``random_crop`` on a random ``max_duration`` window."""
    d = data or {}
    crop = d.get("train_crop")
    if crop is not None and not (isinstance(crop, (int, float)) and not isinstance(crop, bool) and crop > 0):
        raise ValueError(f"{where}: train_crop must be a positive number of seconds or null, got {crop!r}")
    if train and crop:
        return {"max_duration": float(crop), "random_crop": True}
    return {"max_duration": d.get("max_duration"), "random_crop": bool(train and d.get("random_crop", False))}


EVAL_CI_KEYS = {"bootstrap", "ci_unit"}  # every task's eval: resamples (0: no interval) and what they resample


def check_ci_unit(ev: dict, where: str) -> None:
    from sertk.eval.metrics import CI_UNITS
    if ev.get("ci_unit", "speaker") not in CI_UNITS:
        raise ValueError(f"{where}: eval.ci_unit must be one of {', '.join(CI_UNITS)}, got {ev.get('ci_unit')!r}")


def speakers_of(ctx: TaskContext, test: str, utts: list[str]) -> list[str]:
    """The speaker of each test utterance (the unit the result's interval resamples)."""
    from sertk.data.datadir import DataDir
    spk = DataDir.read(ctx.data / test).utt2spk
    missing = [u for u in utts if u not in spk]
    if missing:
        raise ValueError(f"{ctx.data / test}: no speaker for {len(missing)} scored utterance(s), e.g. {missing[:3]}")
    return [spk[u] for u in utts]
