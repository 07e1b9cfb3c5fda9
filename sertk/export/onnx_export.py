"""Students -> ONNX (dynamic length) -> int8 (onnxruntime dynamic quantisation), with parity checks.

The exported graph takes one raw waveform ``wav`` (1, samples) at the stated
sample rate and returns ``avd`` (1, 3). Its metadata makes the file
self-describing: output names, label order, sample rate, licence, producer.
The fixed STFT/mel front-end stays float (quantising the Fourier basis would
only add error); the learnt Conv/MatMul/Gemm weights become int8.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from sertk.common.fileio import atomic_path


class _Whole(torch.nn.Module):
    """The exported signature: one unpadded utterance, no lengths."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model(wav)


def export_onnx(model: torch.nn.Module, path: str | Path, metadata: dict[str, str], sample_rate: int = 16000,
                opset: int = 17, example_seconds: float = 1.0) -> Path:
    """Write a float32 ONNX model with a dynamic time axis and ``metadata`` in its properties."""
    path = Path(path)
    model = model.eval()
    example = torch.randn(1, int(example_seconds * sample_rate))
    with atomic_path(path) as tmp:
        torch.onnx.export(_Whole(model), (example,), str(tmp), input_names=["wav"], output_names=["avd"],
                          dynamic_axes={"wav": {1: "samples"}}, opset_version=opset, dynamo=False)
        m = onnx.load(str(tmp))
        onnx.helper.set_model_props(m, {str(k): str(v) for k, v in metadata.items()})
        onnx.checker.check_model(m)
        onnx.save(m, str(tmp))
    return path


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, keep_float_prefix: str = "/model/frontend") -> Path:
    """Dynamic int8 quantisation of the weights; nodes under ``keep_float_prefix`` stay float."""
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    m = onnx.load(str(fp32_path))
    keep = [n.name for n in m.graph.node if n.name.startswith(keep_float_prefix)]
    root = logging.getLogger()  # the quantiser warns on the root logger about optional pre-processing
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _quantize(fp32_path, int8_path, m, keep)
    finally:
        root.setLevel(level)
    return int8_path


def _quantize(fp32_path: Path, int8_path: Path, m, keep: list[str]) -> None:
    with atomic_path(int8_path) as tmp:
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                         op_types_to_quantize=["Conv", "MatMul", "Gemm"])
        q = onnx.load(str(tmp))
        props = {p.key: p.value for p in m.metadata_props}
        props["quantization"] = "int8 dynamic (onnxruntime)"
        onnx.helper.set_model_props(q, props)
        onnx.save(q, str(tmp))


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, wav: np.ndarray) -> np.ndarray:
    """A/V/D of one waveform (1-D float array)."""
    return sess.run(None, {"wav": np.asarray(wav, dtype=np.float32)[None]})[0][0]


def metadata(path: str | Path) -> dict[str, str]:
    return dict(session(path).get_modelmeta().custom_metadata_map)


def parity(model: torch.nn.Module, onnx_path: str | Path, wavs: list[np.ndarray]) -> float:
    """Largest absolute difference between torch and ONNX outputs over ``wavs`` (one at a time)."""
    sess = session(onnx_path)
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for w in wavs:
            ref = model(torch.from_numpy(np.asarray(w, dtype=np.float32))[None])[0].numpy()
            worst = max(worst, float(np.abs(ref - run_onnx(sess, w)).max()))
    return worst


def size_kb(path: str | Path) -> float:
    return os.path.getsize(path) / 1024
