"""YAML configs with dotted command-line overrides (``--set train.lr=1e-4``).

Configs are plain dicts loaded with ``yaml.safe_load``. Overrides are parsed
as YAML scalars so ``1e-4`` is a float, ``[1,2]`` a list and ``null`` None.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    pass


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    parsed = yaml.safe_load(value) if value.strip() else ""
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" as a string; a user means a number
        try:
            parsed = float(parsed) if any(c in parsed.lower() for c in ".e") else int(parsed)
        except ValueError:
            pass
    return key.split("."), parsed


def set_dotted(cfg: dict, keys: list[str], value: Any) -> None:
    node = cfg
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {k} is not a mapping")
        node = nxt
    node[keys[-1]] = value


def get_dotted(cfg: dict, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for k in key.split("."):
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> dict:
    """Load a YAML file (optional) and apply ``key.sub=value`` overrides in order."""
    cfg = load_yaml(path) if path else {}
    for ov in overrides:
        keys, value = parse_override(ov)
        set_dotted(cfg, keys, value)
    return cfg


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
