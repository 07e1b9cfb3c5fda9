"""Students -> ONNX (dynamic length) -> int8 (onnxruntime dynamic quantisation), with parity checks.

The exported graph takes one raw waveform ``wav`` (1, samples) at the stated
sample rate and returns ``avd`` (1, 3). Its metadata makes the file
self-describing: output names, label order, sample rate, licence, producer.
The fixed STFT/mel front-end stays float (quantising the Fourier basis would
only add error); the learnt Conv/MatMul/Gemm weights become int8. The int8
file is then compacted (short tensor names, no node names, value_info or doc
strings), which changes no output: on the ~72K Wav2Small the exporter's names
are a fifth of the file.
"""
from __future__ import annotations

import itertools
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


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, keep_float_prefix: str = "/model/frontend",
                  compact: bool = True) -> Path:
    """Dynamic int8 quantisation of the weights; nodes under ``keep_float_prefix`` stay float.

    ``compact`` strips the graph's naming overhead from the int8 file (see ``compact_graph``).
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    m = onnx.load(str(fp32_path))
    keep = [n.name for n in m.graph.node if n.name.startswith(keep_float_prefix)]
    root = logging.getLogger()  # the quantiser warns on the root logger about optional pre-processing
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _quantize(fp32_path, int8_path, m, keep, compact)
    finally:
        root.setLevel(level)
    return int8_path


def _quantize(fp32_path: Path, int8_path: Path, m, keep: list[str], compact: bool) -> None:
    with atomic_path(int8_path) as tmp:
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                         op_types_to_quantize=["Conv", "MatMul", "Gemm"])
        q = onnx.load(str(tmp))
        props = {p.key: p.value for p in m.metadata_props}
        props["quantization"] = "int8 dynamic (onnxruntime)"
        onnx.helper.set_model_props(q, props)
        if compact:
            compact_graph(q)
        onnx.checker.check_model(q)
        onnx.save(q, str(tmp))


def compact_graph(m: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what only a reader of the graph needs, in place: outputs are unchanged.

    Removes value_info (onnxruntime infers shapes itself), doc strings and node
    names, and renames internal tensors to short ids. The graph's input and
    output names (``wav``, ``avd``) and the model's metadata_props, which
    serving reads, are kept. Graphs with subgraphs keep their names (a subgraph
    may refer to outer tensors by name).
    """
    g = m.graph
    del g.value_info[:]
    m.ClearField("doc_string")
    g.ClearField("doc_string")
    for node in g.node:
        node.ClearField("name")
        node.ClearField("doc_string")
    if not _has_subgraphs(g):
        _rename_tensors(g)
    return m


def _has_subgraphs(g: onnx.GraphProto) -> bool:
    kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in kinds for node in g.node for a in node.attribute)


def _rename_tensors(g: onnx.GraphProto) -> None:
    """Give every tensor but the graph's inputs and outputs a short id ("t0", "t1", ...)."""
    keep = {v.name for v in [*g.input, *g.output]}
    ids = (f"t{i:x}" for i in itertools.count())
    new: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name  # "" marks an omitted optional input
        if name not in new:
            new[name] = next(i for i in ids if i not in keep)
        return new[name]

    for t in g.initializer:
        t.name = short(t.name)
    for node in g.node:
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]


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
