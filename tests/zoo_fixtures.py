"""A shrunken copy of the mini_emo zoo config: the same models and objectives, seconds of training."""
import copy
from pathlib import Path

import yaml

RECIPE_ZOO = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf/zoo.yaml"
POOL_SMALL = ["pretrain.speakers=4", "pretrain.utts_per_speaker=8"]


def tiny_zoo() -> dict:
    cfg = copy.deepcopy(yaml.safe_load(RECIPE_ZOO.read_text()))
    for e in cfg["models"].values():
        e["train"].update(epochs=1, batch_size=4, warmup_steps=0, progress=False)
        if e["trainer"] == "speech_encoder":
            # layer counts stay: recipe configs read layers by number
            e["config"].update(hidden_size=32, intermediate_size=64, num_attention_heads=2)
            e["data"]["dev_speakers"] = 1
            e["objective"]["masked_prediction"]["clusters"] = 4
        else:
            e["config"].update(n_embd=32, n_layer=1)
    return cfg


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
