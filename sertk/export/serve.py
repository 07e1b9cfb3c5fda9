"""Serve an exported student: audio files in, A/V/D out (``sertk predict --model x.onnx``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sertk.data.audio import read_audio
from sertk.data.datadir import byte_sorted
from sertk.export.onnx_export import metadata, run_onnx, session


def predict_onnx(model_path: str | Path, items: dict[str, str]) -> tuple[list[str], list[str], np.ndarray]:
    """(sorted utterance ids, output names, [N, D] outputs) of an ONNX student over ``{utt: audio path}``.

    The sample rate and output names are read from the model's own metadata.
    """
    meta = metadata(model_path)
    if "sample_rate" not in meta or "output_names" not in meta:
        raise ValueError(f"{model_path}: not a sertk student (metadata lacks sample_rate/output_names)")
    sr, names = int(meta["sample_rate"]), meta["output_names"].split(",")
    sess = session(model_path)
    utts = byte_sorted(items)
    out = np.stack([run_onnx(sess, read_audio(items[u], sr, utt=u)[0]) for u in utts]) if utts else \
        np.zeros((0, len(names)), np.float32)
    return utts, names, out
