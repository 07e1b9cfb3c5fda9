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
