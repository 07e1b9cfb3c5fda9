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


def without_zoo(node):
    """A config with every ``{name_or_path: zoo/...}`` spec replaced by :data:`TINY_WAV2VEC2`."""
    if isinstance(node, dict):
        if str(node.get("name_or_path", "")).startswith("zoo/"):
            rest = {k: v for k, v in node.items() if k not in ("name_or_path", "revision")}
            return {**rest, **copy.deepcopy(TINY_WAV2VEC2)}
        return {k: without_zoo(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_zoo(v) for v in node]
    return node
