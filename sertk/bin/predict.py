"""Run a trained model over a wav.scp or a folder of audio; write utt2emo (and/or utt2avd) and scores.

Every model a recipe trains is served (sertk.export.serve): eGeMAPS linear
models, frozen-encoder probes, speech classifiers and regressors, SELM, the
teacher and the int8 ONNX students. Give the trained split dir; the output
agrees with that model's stage-4 (8) predictions on the same files.

  sertk predict --model exp/egemaps_lr/speaker_split --wav-scp data/x/wav.scp --out pred/
  sertk predict --model exp/classifier/studio --audio-dir my_recordings/ --out pred/
  sertk predict --model exp/egemaps_lr_spknorm/studio --wav-scp wav.scp --utt2spk utt2spk --out pred/
  sertk predict --model exp/wav2small/studio --wav-scp wav.scp --out pred/   # int8 ONNX student -> utt2avd
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sertk.common.entry import base_parser
from sertk.common.fileio import write_text_atomic
from sertk.data.datadir import read_table
from sertk.export.serve import Predictions, ServeError, load_predictor

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


def write_predictions(out: Path, p: Predictions) -> list[str]:
    """utt2emo + scores.txt (as stage 4's header says) and/or utt2avd; returns the files written."""
    written = []
    if p.labels is not None:
        write_text_atomic(out / "utt2emo", "".join(f"{u} {lab}\n" for u, lab in zip(p.utts, p.labels)))
        head = "# utt " + ("log-likelihood " if p.score_kind == "log-likelihood" else "") + " ".join(p.classes)
        write_text_atomic(out / "scores.txt", head + "\n" + "".join(
            f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(p.utts, p.scores)))
        written += ["utt2emo", "scores.txt"]
    if p.values is not None:
        write_text_atomic(out / "utt2avd", "".join(
            f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(p.utts, p.values)))
        written.append("utt2avd")
    return written


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)  # --threads, as every entry point; --config and --set are refused below
    p.prog, p.description, p.formatter_class = "sertk predict", __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True,
                   help="trained split dir (exp/<config>/<protocol>[/fold<k>]: has model.yaml) or an .onnx file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav-scp", help="Kaldi wav.scp: 'utt path' lines")
    src.add_argument("--audio-dir", help="folder searched recursively for audio files")
    p.add_argument("--utt2spk", help="each file's speaker (needed by speaker-normalised models)")
    p.add_argument("--out", required=True, help="output dir for utt2emo/utt2avd and scores.txt")
    p.add_argument("--batch-size", type=int, default=None,
                   help="files per batch (default: the model's evaluation batch size)")
    args = p.parse_args(argv)
    if args.config or args.overrides:
        p.error("--config/--set: a model is served with the config it was trained with (its split dir's)")
    out = Path(args.out)
    files = read_table(Path(args.wav_scp)) if args.wav_scp else list_audio_dir(Path(args.audio_dir))
    speakers = read_table(Path(args.utt2spk)) if args.utt2spk else None
    try:
        predictor = load_predictor(args.model)
        if args.batch_size and hasattr(predictor, "batch_size"):
            predictor.batch_size = args.batch_size
        result = predictor.predict(files, speakers)
    except ServeError as e:
        raise SystemExit(f"sertk predict: {e}") from None
    written = write_predictions(out, result)
    print(f"sertk predict: {predictor.task} model: wrote {len(result.utts)} predictions "
          f"({', '.join(written)}) to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
