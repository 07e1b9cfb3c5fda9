"""Deployment figures of a student: parameters, MACs per second of audio, RTF and peak RAM.

MACs come from torch's own FLOP counter (``torch.utils.flop_counter``; MACs =
FLOPs / 2), which counts convolutions, matmuls and einsums. Latency and memory
are measured on the exported ONNX file with onnxruntime on one thread, in a
fresh Python process so the peak resident memory is that of the runtime and
the model only (no torch).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_second(model: torch.nn.Module, sample_rate: int = 16000, seconds: float = 4.0) -> float:
    """Multiply-accumulates per second of audio, measured on ``seconds`` of input."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, int(seconds * sample_rate)))
    return counter.get_total_flops() / 2 / seconds


_PROBE = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, seconds, sr, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def hwm():  # peak resident set of this process, kB (ru_maxrss would carry the parent's over exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
base = hwm()
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, int(seconds * sr))).astype(np.float32)
s.run(None, {"wav": x})
t = time.perf_counter()
for _ in range(repeats):
    s.run(None, {"wav": x})
dt = (time.perf_counter() - t) / repeats
peak = hwm()
print(json.dumps({"rtf": dt / seconds, "latency_ms": dt * 1000, "peak_ram_mb": peak / 1024,
                  "model_ram_mb": (peak - base) / 1024}))
"""


def onnx_runtime_profile(path: str | Path, seconds: float = 4.0, sample_rate: int = 16000, repeats: int = 5) -> dict:
    """RTF (compute seconds per audio second), latency and peak RSS of onnxruntime on one thread.

    ``peak_ram_mb`` is the whole process (Python + onnxruntime + model);
    ``model_ram_mb`` is the growth after importing onnxruntime (session + inference).
    """
    out = subprocess.run([sys.executable, "-c", _PROBE, str(Path(path)), str(seconds), str(sample_rate),
                          str(repeats)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"profiling {path} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
