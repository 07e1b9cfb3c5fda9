"""A shrunken copy of the mini_emo zoo config: the same models and objectives, seconds of training."""
import copy
from pathlib import Path

import yaml

from sertk.zoo.common import shrink_zoo_config

RECIPE_ZOO = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf/zoo.yaml"
POOL_SMALL = ["pretrain.speakers=4", "pretrain.utts_per_speaker=8"]


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
