"""Latency and size of every exported student (ONNX int8, onnxruntime, one CPU thread).

With ``--exp DIR`` it profiles the int8 models that stage 8 exported under DIR
(``*/*/onnx/model.int8.onnx``); otherwise it builds each student of the given
configs (default: the mini_emo students), exports it to a temporary dir and
profiles that (latency and size do not depend on the trained weights).
Prints one row per model: parameters, MACs per second of audio, fp32 and int8
size, latency on ``--seconds`` of audio, real-time factor and peak RAM.

With ``--train`` it times stage 7 instead: one training step of each config (its
batch size, ``data.train_crop`` windows, ``train.amp``) on one thread, as CPU
milliseconds per second of audio trained, next to the same step in float32.

  python benchmarks/bench_students.py [--exp egs/mini_emo/exp] [--seconds 4] [--train]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sertk.export.onnx_export import export_onnx, quantize_int8, size_kb
from sertk.export.profile import count_params, macs_per_second, onnx_runtime_profile
from sertk.tasks.distill import build_student, native_precision
from sertk.train.distill import distill_loss
from sertk.train.inference import amp_dtype, autocast
from sertk.train.trainer import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["wav2small_17k", "wav2small", "mobilenetv3_small", "mobilenetv4_conv_small",
           "mobilenetv3_large", "mobilenetv4_conv_medium"]
META = {"output_names": "arousal,valence,dominance", "sample_rate": 16000}


def from_configs(paths: list[Path], seconds: float, tmp: Path) -> list[dict]:
    rows = []
    for p in paths:
        model = build_student(yaml.safe_load(p.read_text())["student"]).eval()
        fp32 = export_onnx(model, tmp / f"{p.stem}.onnx", META)
        int8 = quantize_int8(fp32, tmp / f"{p.stem}.int8.onnx")
        rows.append({"model": p.stem, "params": count_params(model), "macs": macs_per_second(model),
                     "fp32_kb": size_kb(fp32), "int8_kb": size_kb(int8), **onnx_runtime_profile(int8, seconds)})
    return rows


def from_exp(exp: Path, seconds: float) -> list[dict]:
    rows = []
    for int8 in sorted(exp.glob("*/*/onnx/model.int8.onnx")) + sorted(exp.glob("*/*/*/onnx/model.int8.onnx")):
        prof = yaml.safe_load((int8.parent / "profile.json").read_text())
        rows.append({"model": str(int8.parent.parent.relative_to(exp)), "params": prof["params"],
                     "macs": prof["macs_per_s"], "fp32_kb": size_kb(int8.parent / "model.onnx"),
                     "int8_kb": size_kb(int8), **onnx_runtime_profile(int8, seconds)})
    if not rows:
        raise SystemExit(f"no exported students under {exp} (run stage 8 first)")
    return rows


def step_ms(model: torch.nn.Module, wav: torch.Tensor, dtype: torch.dtype | None, reps: int = 5) -> float:
    """CPU milliseconds of one optimizer step (forward, CCC+MSE loss, backward, AdamW) on ``wav``."""
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    lengths, target = torch.full((wav.shape[0],), wav.shape[1]), torch.rand(wav.shape[0], 3)

    def step():
        with autocast(torch.device("cpu"), dtype):
            loss = distill_loss(model(wav, lengths).float(), target, "ccc+mse")
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t = time.process_time()
    for _ in range(reps):
        step()
    return (time.process_time() - t) / reps * 1000


def train_costs(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        cfg = yaml.safe_load(p.read_text())
        tc = native_precision(TrainConfig.from_dict({**(cfg.get("train") or {}), "device": "cpu"}))
        window = (cfg.get("data") or {}).get("train_crop") or 2.0  # 2 s: about the mini_emo mean
        torch.manual_seed(0)
        wav = torch.randn(tc.batch_size, int(window * 16000)) * 0.1
        audio = wav.shape[0] * window
        ms = {k: step_ms(build_student(cfg["student"]).train(), wav, d) / audio
              for k, d in (("config", amp_dtype(tc.amp, torch.device("cpu"))), ("fp32", None))}
        rows.append({"model": p.stem, "amp": tc.amp, "window": window, **ms})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp", type=Path, help="profile the models stage 8 exported here")
    ap.add_argument("--configs", nargs="*", type=Path,
                    default=[ROOT / "egs/mini_emo/conf" / f"{n}.yaml" for n in DEFAULT])
    ap.add_argument("--seconds", type=float, default=4.0, help="audio length of one inference")
    ap.add_argument("--train", action="store_true", help="time one training step per config instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.train:
        print(f"{'model':28s} {'amp':>6s} {'window s':>9s} {'ms/audio s':>11s} {'fp32 ms/s':>10s}")
        for r in train_costs(args.configs):
            print(f"{r['model']:28s} {str(r['amp']):>6s} {r['window']:9.2f} {r['config']:11.2f} {r['fp32']:10.2f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = from_exp(args.exp, args.seconds) if args.exp else from_configs(args.configs, args.seconds, Path(tmp))
    print(f"{'model':28s} {'params':>10s} {'MMACs/s':>9s} {'fp32 KB':>9s} {'int8 KB':>9s} "
          f"{'ms/' + str(args.seconds) + 's':>9s} {'RTF':>8s} {'peak MB':>8s} {'model MB':>8s}")
    for r in rows:
        print(f"{r['model']:28s} {r['params']:10,d} {r['macs'] / 1e6:9.1f} {r['fp32_kb']:9.1f} {r['int8_kb']:9.1f} "
              f"{r['latency_ms']:9.2f} {r['rtf']:8.4f} {r['peak_ram_mb']:8.1f} {r['model_ram_mb']:8.1f}")


if __name__ == "__main__":
    main()
