"""Run a trained model over a wav.scp or a folder of audio; write utt2emo (or utt2avd) and scores.

  sertk predict --model exp/classifier/studio --wav-scp data/x/wav.scp --out pred/
  sertk predict --model exp/classifier/studio --audio-dir my_recordings/ --out pred/
  sertk predict --model exp/wav2small/studio --wav-scp wav.scp --out pred/   # int8 ONNX student -> utt2avd
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from sertk.common.fileio import write_text_atomic
from sertk.data.dataset import AudioDataset
from sertk.data.datadir import DataDir, byte_sorted, read_table

AUDIO_SUFFIXES = {".wav", ".flac", ".aiff", ".aif", ".ogg"}


def list_audio_dir(root: Path) -> dict[str, str]:
    """utt id (relative path, '/' -> '-', no suffix) -> path, for every audio file below root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES:
            utt = str(p.relative_to(root).with_suffix("")).replace("/", "-").replace(" ", "_")
            out[utt] = str(p)
    if not out:
        raise SystemExit(f"sertk predict: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    return out


def predict_speech_model(expdir: Path, items: dict[str, str], batch_size: int) -> tuple[dict, np.ndarray]:
    from sertk.tasks.speech_classifier import load_trained

    from sertk.train.inference import place, predict

    model, info = load_trained(expdir)
    model = place(model)  # the GPU when there is one
    utts = byte_sorted(items)
    files = AudioDataset(DataDir({"wav.scp": {u: items[u] for u in utts}, "utt2spk": {u: u for u in utts}}),
                         info["sample_rate"], targets=())
    _, out = predict(model, files, batch_size)  # batched as stage 4 batches: the same scores
    return info, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sertk predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="trained experiment dir (has model.yaml)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav-scp", help="Kaldi wav.scp: 'utt path' lines")
    src.add_argument("--audio-dir", help="folder searched recursively for audio files")
    p.add_argument("--out", required=True, help="output dir for utt2emo/utt2avd and scores.txt")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    expdir, out = Path(args.model), Path(args.out)
    onnx_path = expdir if expdir.suffix == ".onnx" else expdir / "onnx" / "model.int8.onnx"
    if onnx_path.exists():  # an exported student: serve the ONNX model, no torch model needed
        from sertk.export.serve import predict_onnx

        items = read_table(Path(args.wav_scp)) if args.wav_scp else list_audio_dir(Path(args.audio_dir))
        utts, names, scores = predict_onnx(onnx_path, items)
        write_text_atomic(out / "utt2avd", "".join(
            f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, scores)))
        print(f"sertk predict: wrote {len(utts)} A/V/D predictions ({', '.join(names)}) to {out}", file=sys.stderr)
        return 0
    if not (expdir / "model.yaml").exists():
        raise SystemExit(f"sertk predict: {expdir}/model.yaml not found; train the model first (stage 3 or 7)")
    task = yaml.safe_load((expdir / "model.yaml").read_text())["task"]
    if task not in ("classifier", "regressor"):
        raise SystemExit(f"sertk predict: models of task {task!r} are not servable yet")
    items = read_table(Path(args.wav_scp)) if args.wav_scp else list_audio_dir(Path(args.audio_dir))
    info, scores = predict_speech_model(expdir, items, args.batch_size)
    utts = byte_sorted(items)
    if info["task"] == "regressor":
        write_text_atomic(out / "utt2avd", "".join(
            f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, scores)))
    else:
        labels = info["labels"]
        probs = torch.softmax(torch.from_numpy(scores), 1).numpy()
        write_text_atomic(out / "utt2emo", "".join(f"{u} {labels[i]}\n" for u, i in zip(utts, probs.argmax(1))))
        write_text_atomic(out / "scores.txt", "# utt " + " ".join(labels) + "\n" + "".join(
            f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, probs)))
    print(f"sertk predict: wrote {len(utts)} predictions to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
