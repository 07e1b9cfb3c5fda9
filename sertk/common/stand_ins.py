"""Offline stand-ins: the hub checkpoints a config names, resolved to zoo models that stand in for them.

Real recipes name hub checkpoints (``microsoft/wavlm-large``, ``gpt2``) that
cannot load on a machine without a hub. Given a zoo (``./run.sh --zoo DIR``,
which sets ``SERTK_ZOO``), every hub name a config gives under a model key
(``name_or_path``, ``pretrained``) is replaced, before anything loads, by the
directory of the zoo model whose card (``<zoo>/<model>/zoo.json``) lists it in
``stands_in_for``. The card's first name is the model it is a copy or a
small analogue of; later names are models it can take the place of (Whisper
tiny.en for other speech encoders). A name listed first beats a name listed
later, so a zoo that holds both ``w2v`` and ``whisper_tiny_en`` resolves
``facebook/wav2vec2-base`` to ``w2v``. A hub name no card lists is an error
that names the config key, raised before any training. Without a zoo nothing
changes. The substitutions made in a process are recorded in every
results.json it writes (``stand_ins``).
"""
from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

ENV = "SERTK_ZOO"
CARD_FILE = "zoo.json"
MODEL_KEYS = ("name_or_path", "pretrained")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class StandInError(ValueError):
    """A hub name with no stand-in, or an ambiguous zoo; the message names the config key or the cards."""


@dataclass(frozen=True)
class StandIn:
    hub_name: str
    model: str      # the zoo model's name
    path: str       # its directory (absolute)
    rank: int       # position of hub_name in the card's stands_in_for (0: what the model copies)
    digest: str | None

    def record(self) -> dict:
        return {"zoo_model": self.model, "path": self.path, "digest": self.digest}


def zoo_from_env() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def card_names(card: dict) -> list[str]:
    """A card's ``stands_in_for`` as a list (a single name or a list of names)."""
    names = card.get("stands_in_for")
    if names is None:
        return []
    return [names] if isinstance(names, str) else [str(n) for n in names]


def stand_in_table(zoo: str | Path) -> dict[str, StandIn]:
    """Hub name -> the zoo model standing in for it, from every card under ``zoo``."""
    zoo = Path(zoo)
    if not zoo.is_dir():
        raise StandInError(f"zoo {zoo} does not exist (build it with egs/mini_emo/run.sh --stage 0 --stop-stage 0)")
    table: dict[str, StandIn] = {}
    for card_path in sorted(zoo.glob(f"*/{CARD_FILE}")):
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as e:
            raise StandInError(f"{card_path}: unreadable zoo card: {e}") from e
        for rank, name in enumerate(card_names(card)):
            new = StandIn(name, card_path.parent.name, str(card_path.parent.resolve()), rank, card.get("digest"))
            old = table.get(name)
            if old is not None and old.rank == rank:
                raise StandInError(f"zoo {zoo}: both zoo/{old.model} and zoo/{new.model} stand in for '{name}' "
                                   f"(position {rank + 1} of their stands_in_for); remove one of them")
            if old is None or rank < old.rank:
                table[name] = new
    return table


def model_references(cfg, prefix: str = "") -> list[tuple[str, str]]:
    """Every (dotted key, value) of ``cfg`` whose key names a model (``MODEL_KEYS``)."""
    out = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if k in MODEL_KEYS and isinstance(v, str):
                out.append((key, v))
            else:
                out.extend(model_references(v, key))
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            out.extend(model_references(v, f"{prefix}[{i}]"))
    return out


def is_hub_name(value: str) -> bool:
    """A hub id (``org/name`` or ``name``) that is not a path on this machine."""
    return bool(_HUB_NAME.match(value)) and not Path(value).exists()


def _set(cfg, key: str, value: str) -> None:
    node = cfg
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    for p in parts[:-1]:
        node = node[int(p[1:-1])] if p.startswith("[") else node[p]
    last = parts[-1]
    node[int(last[1:-1]) if last.startswith("[") else last] = value


_applied: dict[str, dict] = {}


def substitute(cfg: dict, zoo: str | Path, where: str) -> tuple[dict, dict[str, dict]]:
    """``cfg`` with every hub name replaced by its stand-in's directory, and the substitutions by key.

    Raises :class:`StandInError` naming ``where`` and the key of the first hub name nothing stands in for.
    """
    table = stand_in_table(zoo)
    out = copy.deepcopy(cfg)
    done: dict[str, dict] = {}
    missing = []
    for key, value in model_references(cfg):
        if not is_hub_name(value):
            continue
        s = table.get(value)
        if s is None:
            missing.append(f"{key}: '{value}'")
            continue
        _set(out, key, s.path)
        done[key] = {"configured": value, **s.record()}
    if missing:
        known = ", ".join(sorted(table)) or "nothing"
        raise StandInError(f"{where}: no zoo model in {zoo} stands in for {'; '.join(missing)} "
                           f"(its cards stand in for: {known}); add a zoo model whose card lists the name, "
                           f"or run this config where the hub is reachable")
    return out, done


def apply_from_env(cfg: dict, where: str) -> dict:
    """:func:`substitute` with the zoo ``SERTK_ZOO`` names (``cfg`` unchanged when it is unset); the
    substitutions are kept for :func:`applied` (results.json) and :func:`describe` (the log)."""
    zoo = zoo_from_env()
    if zoo is None:
        return cfg
    out, done = substitute(cfg, zoo, where)
    _applied.update(done)
    return out


def describe(done: dict[str, dict]) -> list[str]:
    """One log line per substitution."""
    return [f"stand-in: {key} = {r['configured']} -> zoo/{r['zoo_model']} ({r['path']})" for key, r in done.items()]


def applied() -> dict[str, dict]:
    """The substitutions this process made (config key -> configured name, zoo model, path, digest)."""
    return dict(_applied)
