"""A shrunken copy of the mini_emo zoo config: the same models and objectives, seconds of training."""
import copy
from pathlib import Path

import yaml

from sertk.zoo.common import shrink_zoo_config

RECIPE_ZOO = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf/zoo.yaml"
POOL_SMALL = ["pretrain.speakers=4", "pretrain.utts_per_speaker=8"]


def small_pool(root: Path, speakers: int, utts_per_speaker: int) -> Path:
    """mini_emo's pre-training pool, shrunk: ``root/data/pretrain`` (audio under ``root/audio``)."""
    from sertk.common.config import load_config
    from sertk.data.synth import generate_corpus
    synth = load_config(RECIPE_ZOO.parent / "synth.yaml",
                        [f"pretrain.speakers={speakers}", f"pretrain.utts_per_speaker={utts_per_speaker}"])
    generate_corpus(synth, root / "audio", root / "data", nj=1, part="pretrain")
    return root / "data" / "pretrain"


def tiny_zoo() -> dict:
    return shrink_zoo_config(yaml.safe_load(RECIPE_ZOO.read_text()))


# A random-init local encoder: what tests use where a recipe config names a zoo model that only
# stage 0 builds (tests need no zoo on disk).
TINY_WAV2VEC2 = {"type": "wav2vec2", "config": {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True, "mask_time_prob": 0.0}}


# The same for a Whisper zoo model (zoo/whisper_tiny_en): a random-init local Whisper encoder with
# tiny.en's layer count and mel bins, so any layer or window a config names for it exists here too.
TINY_WHISPER = {"type": "whisper", "config": {
    "d_model": 32, "encoder_layers": 4, "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "num_mel_bins": 80,
    "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 64}}


def tiny_stand_in(name_or_path: str) -> dict:
    """The local encoder a test puts in place of a zoo model: Whisper for ``zoo/whisper*``, else wav2vec 2.0."""
    return copy.deepcopy(TINY_WHISPER if name_or_path.startswith("zoo/whisper") else TINY_WAV2VEC2)


def without_zoo(node, prefix: str = "zoo/"):
    """A config with every ``{name_or_path: zoo/...}`` spec (or only those starting with ``prefix``)
    replaced by its :func:`tiny_stand_in`, its other keys (``layer``, ``window``, ...) kept."""
    if isinstance(node, dict):
        name = str(node.get("name_or_path", ""))
        if name.startswith("zoo/") and name.startswith(prefix):
            rest = {k: v for k, v in node.items() if k not in ("name_or_path", "revision")}
            return {**rest, **tiny_stand_in(name)}
        return {k: without_zoo(v, prefix) for k, v in node.items()}
    if isinstance(node, list):
        return [without_zoo(v, prefix) for v in node]
    return node


def on_whisper(node):
    """A mini_emo config moved onto the Whisper zoo model: its zoo speech encoders (zoo/w2v, zoo/wavlm)
    become ``zoo/whisper_tiny_en`` with the clip window, everything else kept."""
    if isinstance(node, dict):
        if node.get("name_or_path") in ("zoo/w2v", "zoo/wavlm"):
            return {**node, "name_or_path": "zoo/whisper_tiny_en", "window": "clip"}
        return {k: on_whisper(v) for k, v in node.items()}
    if isinstance(node, list):
        return [on_whisper(v) for v in node]
    return node


# ------------------------------------------------------------------ offline runs (--zoo)
def stand_in_names(model: str) -> list[str]:
    """The hub names zoo/<model> stands in for in the mini_emo zoo config (its card's ``stands_in_for``)."""
    from sertk.common.stand_ins import card_names
    return card_names(yaml.safe_load(RECIPE_ZOO.read_text())["models"][model])


def _card(out: Path, model: str, **extra) -> None:
    import json
    card = {"name": model, "stands_in_for": stand_in_names(model), "digest": f"test-{model}",
            "description": "test stand-in (tests/zoo_fixtures.py offline_zoo)", **extra}
    (out / "zoo.json").write_text(json.dumps(card, indent=1))


def offline_zoo(dest: Path, whisper_dir: Path) -> Path:
    """A zoo for ``./run.sh --zoo DIR``: ``whisper_tiny_en`` (the real converted Whisper tiny.en in
    ``whisper_dir``, its files linked) and ``gpt2`` (a random one-layer GPT-2 with a byte-level BPE trained
    on SELM's prompt and view strings: seconds), each with a ``zoo.json`` card whose ``stands_in_for`` is
    the mini_emo zoo config's, so the hub names they resolve follow the real zoo."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sertk.data.labels import CANONICAL_EMOTIONS
    from sertk.models.views import LEVELS, make_views
    from sertk.zoo.text_lm import train_tokenizer

    wh = dest / "whisper_tiny_en"
    wh.mkdir(parents=True)
    for f in Path(whisper_dir).iterdir():
        if f.name != "zoo.json":
            (wh / f.name).symlink_to(f.resolve())
    _card(wh, "whisper_tiny_en", real=True, **{"class": "WhisperForConditionalGeneration"})

    views = make_views(["categorical", "sentiment", "dimensional"], list(CANONICAL_EMOTIONS))
    lines = [views["categorical"].text([c]) for c in CANONICAL_EMOTIONS]
    lines += [views["sentiment"].text([s]) for s in views["sentiment"].slots[0].values]
    lines += [views["dimensional"].text([a, v, d]) for a in LEVELS for v in LEVELS for d in LEVELS]
    lines += [f"{p} {t}" for p in ("What emotion does the speaker express?", "say the emotion.") for t in lines]
    tok = train_tokenizer(lines, vocab_size=400, min_frequency=1)
    lm = dest / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=256,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(lm)
    tok.save_pretrained(lm)
    _card(lm, "gpt2", **{"class": "GPT2LMHeadModel"})
    return dest
