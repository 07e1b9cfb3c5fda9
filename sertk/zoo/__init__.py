"""The mini_emo model zoo (stage 0): small pre-trained models in the real transformers classes.

Every method sertk reproduces stands on pre-trained models (Wav2Vec2/WavLM,
GPT-2, CLAP, generative ALMs). Offline there are none, so mini_emo's stage 0
trains small ones on the synthetic pre-training pool (speakers no evaluation
uses) and saves them with ``save_pretrained`` under ``zoo/<name>/``. Configs
name ``zoo/<name>`` where real recipes name a hub checkpoint: one code path.

A zoo model is one entry of the zoo config (``conf/zoo.yaml``) plus one
training module registered in :data:`TRAINERS`; the module exposes
``check(entry, where)``, ``shrink(entry)`` (smoke size, in place) and
``train(name, entry, pool, workdir, outdir) -> dict`` (metadata for ``zoo.json``
and the README). A model whose entry, pool and
training code are unchanged is up to date and skipped.
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import shutil
import time
from pathlib import Path

from sertk.common.fileio import atomic_dir, hash_obj, write_json_atomic, write_text_atomic
from sertk.zoo.pool import Pool

log = logging.getLogger(__name__)

TRAINERS = {
    "speech_encoder": "sertk.zoo.speech_encoder",
    "text_lm": "sertk.zoo.text_lm",
    "generative_alm": "sertk.zoo.generative_alm",
    "clap": "sertk.zoo.clap",
}
META_FILE = "zoo.json"


def get_trainer(name: str):
    if name not in TRAINERS:
        raise ValueError(f"unknown zoo trainer {name!r}; known: {', '.join(sorted(TRAINERS))}")
    return importlib.import_module(TRAINERS[name])


def check_zoo_config(cfg: dict, where: str = "zoo config") -> None:
    """Every entry names a known trainer and passes that trainer's own checks."""
    models = cfg.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{where}: 'models' must map zoo names to entries")
    unknown = set(cfg) - {"models", "seed"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: ['models', 'seed']")
    for name, entry in models.items():
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{where}: models.{name}: names are folder names (letters, digits, _ and -)")
        if not isinstance(entry, dict) or "trainer" not in entry:
            raise ValueError(f"{where}: models.{name}: needs 'trainer' (one of {', '.join(sorted(TRAINERS))})")
        get_trainer(entry["trainer"]).check(entry, f"{where}: models.{name}")


def _code_digest(module) -> str:
    """The trainer's source and this package's shared code: changed code rebuilds the model."""
    here = Path(__file__).resolve().parent
    files = sorted({Path(inspect.getfile(module)).resolve(), here / "__init__.py", here / "pool.py",
                    here / "common.py"})
    return hash_obj({p.name: p.read_text() for p in files if p.is_file()})


def model_digest(entry: dict, pool: Pool, seed: int) -> str:
    module = get_trainer(entry["trainer"])
    return hash_obj({"entry": entry, "pool": pool.digest, "seed": seed, "code": _code_digest(module)})


def is_up_to_date(outdir: Path, digest: str) -> bool:
    meta = outdir / META_FILE
    try:
        return json.loads(meta.read_text()).get("digest") == digest
    except (FileNotFoundError, ValueError):
        return False


def pending_models(cfg: dict, pool_dir: str | Path, zoo_dir: str | Path, only: list[str] | None = None,
                   force: bool = False) -> list[str]:
    """The zoo models a build would train (``only``, or all), in config order: not up to date or forced."""
    check_zoo_config(cfg)
    pool = Pool.load(pool_dir)
    seed = int(cfg.get("seed", 0))
    names = list(cfg["models"]) if not only else only
    return [n for n in names if n in cfg["models"] and
            (force or not is_up_to_date(Path(zoo_dir) / n, model_digest(cfg["models"][n], pool, seed)))]


def build_zoo(cfg: dict, pool_dir: str | Path, zoo_dir: str | Path, only: list[str] | None = None,
              force: bool = False) -> dict[str, dict]:
    """Train every (or ``only`` these) zoo model that is not up to date; return name -> metadata.

    Training runs in ``<zoo>/.work/<name>`` (trainer checkpoints: an interrupted
    build resumes); the finished model replaces ``<zoo>/<name>`` in one rename.
    """
    from sertk.train.trainer import seed_everything

    check_zoo_config(cfg)
    zoo_dir = Path(zoo_dir)
    pool = Pool.load(pool_dir)
    seed = int(cfg.get("seed", 0))
    names = list(cfg["models"]) if not only else only
    missing = [n for n in names if n not in cfg["models"]]
    if missing:
        raise ValueError(f"zoo config has no model(s) {missing}; it has {sorted(cfg['models'])}")
    done = {}
    for name in names:
        entry = cfg["models"][name]
        outdir = zoo_dir / name
        digest = model_digest(entry, pool, seed)
        if not force and is_up_to_date(outdir, digest):
            log.info("zoo/%s: up to date", name)
            continue
        workdir = zoo_dir / ".work" / name
        stamp = workdir / "digest.txt"
        if workdir.exists() and (not stamp.is_file() or stamp.read_text() != digest or force):
            log.info("zoo/%s: settings, pool or code changed since %s was written: training from scratch",
                     name, workdir)
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stamp, digest)
        seed_everything(seed)
        start = time.time()
        module = get_trainer(entry["trainer"])
        log.info("zoo/%s: training (%s) on the pre-training pool %s (%d utterances, %d speakers)", name,
                 entry["trainer"], pool.path, len(pool.utts), len(pool.speakers))
        with atomic_dir(outdir) as tmp:
            meta = module.train(name, entry, pool, workdir, Path(tmp))
            meta = {"name": name, "trainer": entry["trainer"], "stands_in_for": entry.get("stands_in_for"),
                    "description": entry.get("description", ""), **meta,
                    "pool": pool.summary(), "train_seconds": round(time.time() - start, 1), "digest": digest}
            write_json_atomic(Path(tmp) / META_FILE, meta)
            write_text_atomic(Path(tmp) / "README.md", readme(meta))
        log.info("zoo/%s: saved (%s, %s parameters) in %.0f s", name, meta.get("class"),
                 f"{meta.get('params', 0):,}", meta["train_seconds"])
        done[name] = meta
    return done


def readme(meta: dict) -> str:
    """The model card: what the model is, how it was trained, what it stands in for."""
    pool = meta["pool"]
    lines = [
        f"# zoo/{meta['name']}", "",
        f"A small pre-trained model of sertk's mini_emo zoo (stage 0 of `egs/mini_emo/run.sh`). "
        f"It stands in for `{meta.get('stands_in_for')}`: a mini_emo config names `zoo/{meta['name']}` where a "
        f"real recipe names that hub checkpoint, and the same `from_pretrained` code loads either.", "",
        meta.get("description", "").strip(), "",
        "| | |", "|---|---|",
        f"| class | `{meta.get('class')}` |",
        f"| parameters | {meta.get('params', 0):,} |",
        f"| objective | {meta.get('objective')} |",
        f"| pre-training pool | {pool['utterances']} utterances, {pool['speakers']} speakers "
        f"({pool['minutes']:.1f} min; domains {', '.join(pool['domains'])}), none of them in any "
        f"mini_emo train/dev/test set |",
        f"| training | {meta.get('training')} |",
        f"| training time | {meta['train_seconds']:.0f} s |",
        f"| pool-dev figures | {meta.get('dev')} |",
        "",
        "Files: `config.json` and `model.safetensors` (`save_pretrained`), plus the processor or tokenizer "
        "files; `zoo.json` holds this card as data. Rebuilt by stage 0 whenever its zoo config entry, the "
        "pool or the training code change.", ""]
    return "\n".join(lines)
