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
and the README), optionally ``readme(meta)`` (its own model card) and
``USES_POOL = False`` (an imported model: the pool is not part of its digest).
A model whose entry, pool and training code are unchanged is up to date and
skipped. One entry is real, not trained: ``whisper_ct2`` imports OpenAI's
Whisper tiny.en from an installed PyPI wheel (sertk.zoo.whisper_ct2).
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import shutil
import time
from pathlib import Path

from sertk.common.stand_ins import CARD_FILE, card_names
from sertk.common.fileio import atomic_dir, hash_obj, write_json_atomic, write_text_atomic
from sertk.zoo.pool import Pool

log = logging.getLogger(__name__)

TRAINERS = {
    "speech_encoder": "sertk.zoo.speech_encoder",
    "text_lm": "sertk.zoo.text_lm",
    "generative_alm": "sertk.zoo.generative_alm",
    "clap": "sertk.zoo.clap",
    "whisper_ct2": "sertk.zoo.whisper_ct2",
    "avd_regressor": "sertk.zoo.avd_regressor",
}
META_FILE = CARD_FILE  # the card as data; offline runs read stands_in_for from it


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
        names = entry.get("stands_in_for")
        if names is not None and not (isinstance(names, str) or (
                isinstance(names, list) and names and all(isinstance(n, str) and n for n in names))):
            raise ValueError(f"{where}: models.{name}.stands_in_for: a hub name or a list of hub names (the first "
                             f"is the model it copies or is an analogue of; the others it takes the place of "
                             f"offline), got {names!r}")
        get_trainer(entry["trainer"]).check(entry, f"{where}: models.{name}")
    build_order(cfg)  # every model a model starts from is defined, and none starts from itself


def _code_digest(module) -> str:
    """The trainer's source, the sertk.zoo modules it imports from and this package's shared code:
    changed code rebuilds the model."""
    here = Path(__file__).resolve().parent
    used = {getattr(v, "__module__", None) or getattr(v, "__name__", "") for v in vars(module).values()}
    files = {Path(inspect.getfile(module)).resolve(), here / "__init__.py", here / "pool.py", here / "common.py"}
    files |= {here / f"{m.rsplit('.', 1)[1]}.py" for m in used if m and m.startswith(f"{__name__}.")}
    return hash_obj({p.name: p.read_text() for p in sorted(files) if p.is_file()})


def requirements(cfg: dict, name: str) -> list[str]:
    """The zoo models ``name`` starts from (trainer ``requires(entry)``), each named in the zoo config."""
    entry = cfg["models"][name]
    needs = list(getattr(get_trainer(entry["trainer"]), "requires", lambda e: [])(entry))
    unknown = [n for n in needs if n not in cfg["models"]]
    if unknown:
        raise ValueError(f"zoo config: models.{name} starts from {unknown}, which the zoo config does not define")
    return needs


def build_order(cfg: dict, only: list[str] | None = None) -> list[str]:
    """``only`` (or every model) plus what they start from, in config order but each after its requirements."""
    missing = [n for n in only or [] if n not in cfg["models"]]
    if missing:
        raise ValueError(f"zoo config has no model(s) {missing}; it has {sorted(cfg['models'])}")
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"zoo config: models {' -> '.join(path + (name,))} start from each other")
        if name not in order:
            for need in requirements(cfg, name):
                visit(need, path + (name,))
            order.append(name)

    for n in (m for m in cfg["models"] if not only or m in only):  # config order: longest training first
        visit(n, ())
    return order


def models_named_in(config_paths: list[str | Path], cfg: dict, zoo_dir: str | Path = "zoo") -> list[str]:
    """The zoo models recipe configs name: every string value ``<zoo_dir>/<name>`` (or a path inside it) that
    the zoo config defines. A name it does not define draws a warning naming the config and the key, unless
    ``<zoo_dir>/<name>`` is already there (a checkpoint put in the zoo dir by hand)."""
    import yaml

    prefix = str(zoo_dir).rstrip("/") + "/"

    def named(node, where: str = "") -> dict[str, str]:
        """name -> the first key that names it, in one config."""
        if isinstance(node, dict):
            items = [(f"{where}.{k}" if where else str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(node)]
        elif isinstance(node, str) and node.startswith(prefix):
            return {node[len(prefix):].split("/")[0]: where}
        else:
            return {}
        out: dict[str, str] = {}
        for w, v in items:
            for n, key in named(v, w).items():
                out.setdefault(n, key)
        return out

    names: set[str] = set()
    for path in config_paths:
        for n, w in named(yaml.safe_load(Path(path).read_text()) or {}).items():
            if n in cfg["models"]:
                names.add(n)
            elif not (Path(zoo_dir) / n).is_dir():  # e.g. a released checkpoint put there by hand is fine
                log.warning("%s: %s names %s%s, which the zoo config does not build (it has %s) and which is not "
                            "there: the stage that reads it will fail", path, w, prefix, n,
                            ", ".join(sorted(cfg["models"])))
    return sorted(names)


def model_digests(cfg: dict, pool: Pool, names: list[str]) -> dict[str, str]:
    """Digest of each model (in build order): its entry, the pool (if it uses it), the seed, the thread count
    it trains on (float results depend on it), its code, and the digests of the models it starts from, so a
    rebuilt requirement rebuilds its dependants."""
    from sertk.common.threads import current_threads

    seed = int(cfg.get("seed", 0))
    threads = current_threads()
    out: dict[str, str] = {}
    for name in build_order(cfg, names):
        entry = cfg["models"][name]
        module = get_trainer(entry["trainer"])
        pool_digest = pool.digest if getattr(module, "USES_POOL", True) else None
        out[name] = hash_obj({"entry": entry, "pool": pool_digest, "seed": seed, "threads": threads,
                              "code": _code_digest(module),
                              **({"requires": {n: out[n] for n in requirements(cfg, name)}}
                                 if requirements(cfg, name) else {})})
    return out


def model_digest(entry: dict, pool: Pool, seed: int) -> str:
    """The digest of a model that starts from no other zoo model (see :func:`model_digests`)."""
    return model_digests({"seed": seed, "models": {"_": entry}}, pool, ["_"])["_"]


def is_up_to_date(outdir: Path, digest: str) -> bool:
    meta = outdir / META_FILE
    try:
        return json.loads(meta.read_text()).get("digest") == digest
    except (FileNotFoundError, ValueError):
        return False


def pending_models(cfg: dict, pool_dir: str | Path, zoo_dir: str | Path, only: list[str] | None = None,
                   force: bool = False) -> list[str]:
    """The zoo models a build would train (``only`` and their requirements, or all), in build order: not up to
    date or forced."""
    check_zoo_config(cfg)
    digests = model_digests(cfg, Pool.load(pool_dir), build_order(cfg, only))
    return [n for n, d in digests.items() if force or not is_up_to_date(Path(zoo_dir) / n, d)]


def build_zoo(cfg: dict, pool_dir: str | Path, zoo_dir: str | Path, only: list[str] | None = None,
              force: bool = False) -> dict[str, dict]:
    """Train every (or ``only`` these, and what they start from) zoo model that is not up to date; return
    name -> metadata.

    Training runs in ``<zoo>/.work/<name>`` (trainer checkpoints: an interrupted
    build resumes); the finished model replaces ``<zoo>/<name>`` in one rename.
    """
    from sertk.common.threads import current_threads
    from sertk.train.trainer import seed_everything

    check_zoo_config(cfg)
    zoo_dir = Path(zoo_dir)
    pool = Pool.load(pool_dir)
    seed = int(cfg.get("seed", 0))
    digests = model_digests(cfg, pool, build_order(cfg, only))
    done = {}
    for name, digest in digests.items():
        entry = cfg["models"][name]
        outdir = zoo_dir / name
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
        uses_pool = getattr(module, "USES_POOL", True)
        if uses_pool:
            log.info("zoo/%s: training (%s) on the pre-training pool %s (%d utterances, %d speakers)", name,
                     entry["trainer"], pool.path, len(pool.utts), len(pool.speakers))
        else:
            log.info("zoo/%s: importing (%s)", name, entry["trainer"])
        with atomic_dir(outdir) as tmp:
            meta = module.train(name, entry, pool, workdir, Path(tmp), zoo_dir=zoo_dir)
            meta = {"name": name, "trainer": entry["trainer"], "stands_in_for": entry.get("stands_in_for"),
                    "description": entry.get("description", ""), **meta,
                    "pool": pool.summary() if uses_pool else None, "train_seconds": round(time.time() - start, 1),
                    "threads": current_threads(), "digest": digest}
            write_json_atomic(Path(tmp) / META_FILE, meta)
            write_text_atomic(Path(tmp) / "README.md", getattr(module, "readme", readme)(meta))
        log.info("zoo/%s: saved (%s, %s parameters) in %.0f s", name, meta.get("class"),
                 f"{meta.get('params', 0):,}", meta["train_seconds"])
        done[name] = meta
    return done


def primary_name(meta: dict) -> str | None:
    """The hub checkpoint a zoo model copies or is a small analogue of (first of ``stands_in_for``)."""
    names = card_names(meta)
    return names[0] if names else None


def offline_note(meta: dict) -> str:
    """The card's sentence on the other hub names it takes the place of in offline runs (``--zoo``)."""
    others = card_names(meta)[1:]
    if not others:
        return ""
    return (" In a real recipe run offline with `--zoo`, it also takes the place of "
            + ", ".join(f"`{n}`" for n in others) + " (docs/zoo.md).")


def readme(meta: dict) -> str:
    """The model card: what the model is, how it was trained, what it stands in for."""
    pool = meta["pool"]
    lines = [
        f"# zoo/{meta['name']}", "",
        f"A small pre-trained model of sertk's mini_emo zoo (stage 0 of `egs/mini_emo/run.sh`). "
        f"It stands in for `{primary_name(meta)}`: a mini_emo config names `zoo/{meta['name']}` where a "
        f"real recipe names that hub checkpoint, and the same `from_pretrained` code loads either."
        + offline_note(meta), "",
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
