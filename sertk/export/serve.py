"""Serve any model a recipe trains: audio files in, emotion labels or A/V/D out (``sertk predict``).

One loader for every kind: :func:`load_predictor` reads what an experiment
dir says it holds (``model.yaml``'s task, ``teacher.yaml``, an exported
``onnx/model.int8.onnx`` or an ``.onnx`` file), looks the kind up in
:data:`SERVERS` and returns a predictor whose ``predict(files)`` recomputes
what the evaluation stage computed for the same audio -- the same features
(eGeMAPS with the stage-2 sample rate, the same frozen encoder layer and
pooling), the same standardisation, crop and model code -- so labels and
scores agree with the model's own ``eval/<set>/`` files. Encoders, Whisper's
included, give each file the same features in any batch (Whisper's ``clip``
window masks each clip to its own frames), so ``--batch-size`` changes only float rounding.

Served kinds (the task in model.yaml):

- ``egemaps_linear``: eGeMAPS + logistic regression (+ ridge A/V/D): classes (+ A/V/D)
- ``probe``: a frozen encoder layer, pooled, + logistic regression: classes
- ``classifier`` / ``regressor``: the fine-tuned speech model: classes / A/V/D
- ``selm``: the LM's categorical view: classes with log-likelihoods
- ``teacher`` (teacher.yaml): the Dawn ensemble: A/V/D
- ``distill``: the int8 ONNX student (onnx/, as stage 8 scores it): A/V/D

Settings a model file lacks (models trained before they were recorded) come
from the experiment's resolved ``config.yaml``; a speaker-normalised model
needs each file's speaker (``speakers``: utt -> speaker).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np
import torch
import yaml

from sertk.data.audio import read_audio
from sertk.data.datadir import DataDir, byte_sorted

log = logging.getLogger(__name__)
AVD_NAMES = ["arousal", "valence", "dominance"]
DEFAULT_SAMPLE_RATE = 16000


class ServeError(RuntimeError):
    """A model that cannot be served as asked; the message names the file or the missing input."""


@dataclass
class Predictions:
    """What a model says about each file, in ``utts`` (byte) order.

    A categorical model fills ``classes`` (its label set, the columns of
    ``scores``), ``labels`` (the predicted class per file) and ``scores``
    (posteriors, or SELM's log-likelihoods: ``score_kind``); a dimensional one
    fills ``dims`` and ``values`` [N, D]. An eGeMAPS model with a ridge
    regressor fills both.
    """

    utts: list[str]
    classes: list[str] | None = None
    labels: list[str] | None = None
    scores: np.ndarray | None = None
    score_kind: str = "posterior"
    dims: list[str] | None = None
    values: np.ndarray | None = None


class Predictor(Protocol):
    task: str

    def predict(self, files: Mapping[str, str], speakers: Mapping[str, str] | None = None) -> Predictions:
        ...


# ------------------------------------------------------------------ shared helpers
def read_model_info(expdir: Path, name: str = "model.yaml") -> dict:
    path = Path(expdir) / name
    if not path.is_file():
        raise ServeError(f"{path} not found; train the model first (stage 3, or 7 for students)")
    return yaml.safe_load(path.read_text()) or {}


def run_config(expdir: Path) -> dict:
    """The resolved config the experiment was evaluated with: ``config_evaluate.yaml`` (an evaluation
    with other overrides), else ``config.yaml``, in the nearest enclosing dir (exp/NAME/PROTOCOL[/foldK])."""
    for d in [Path(expdir), *Path(expdir).parents][:4]:
        for name in ("config_evaluate.yaml", "config.yaml"):
            if (d / name).is_file():
                return yaml.safe_load((d / name).read_text()) or {}
    return {}


def _setting(info: dict, cfg: dict, key: str, section: str, default, expdir: Path):
    """``key`` from model.yaml, else from the config's ``section``, else ``default``."""
    if key in info:
        return info[key]
    value = (cfg.get(section) or {}).get(key, default)
    if key not in (cfg.get(section) or {}):
        log.info("%s: model.yaml records no %s; using %r", expdir, key, value)
    return value


def _sample_rate(info: dict, expdir: Path) -> int:
    if "sample_rate" not in info:
        log.warning("%s: model.yaml records no sample_rate (trained by an older sertk); assuming %d Hz",
                    expdir, DEFAULT_SAMPLE_RATE)
    return int(info.get("sample_rate", DEFAULT_SAMPLE_RATE))


def _speakers_of(utts: list[str], speakers: Mapping[str, str] | None, expdir: Path) -> list[str]:
    """Each file's speaker for per-speaker normalisation; a missing one is named."""
    if speakers is None:
        raise ServeError(f"{expdir}: the model normalises features per speaker (speaker_norm: true); "
                         "give each file's speaker (sertk predict --utt2spk FILE)")
    missing = [u for u in utts if u not in speakers]
    if missing:
        raise ServeError(f"{len(missing)} file(s) have no speaker in utt2spk, e.g. {missing[:5]}")
    return [speakers[u] for u in utts]


def audio_dataset(files: Mapping[str, str], sample_rate: int, max_duration: float | None = None):
    """The files as the evaluation stage reads a data dir: resampled, mono, centre-cropped to max_duration."""
    from sertk.data.dataset import AudioDataset

    utts = byte_sorted(files)
    d = DataDir({"wav.scp": {u: str(files[u]) for u in utts}, "utt2spk": {u: u for u in utts}})
    return AudioDataset(d, sample_rate, label_map=None, targets=(), max_duration=max_duration)


def _categorical(utts: list[str], classes: list[str], idx, scores: np.ndarray, kind: str = "posterior"):
    return Predictions(utts, classes=list(classes), labels=[classes[int(i)] for i in idx],
                       scores=np.asarray(scores), score_kind=kind)


# ------------------------------------------------------------------ eGeMAPS + linear models
class EgemapsLinear:
    """task egemaps_linear: eGeMAPS extracted as stage 2 does, standardised and clipped as stage 4 does."""

    task = "egemaps_linear"

    def __init__(self, expdir: Path):
        self.expdir = Path(expdir)
        info, cfg = read_model_info(self.expdir), run_config(self.expdir)
        self.z = dict(np.load(self.expdir / "model.npz"))
        self.classes = [str(c) for c in self.z["labels"]]
        self.clip = _setting(info, cfg, "clip", "model", 5.0, self.expdir)
        self.speaker_norm = bool(info.get("speaker_norm", False))
        self.sample_rate = _sample_rate(info, self.expdir)

    def features(self, utts: list[str], files: Mapping[str, str]) -> np.ndarray:
        from sertk.features.egemaps import EgemapsExtractor

        ext = EgemapsExtractor(self.sample_rate)
        rows = [ext.extract(read_audio(files[u], self.sample_rate, utt=u)[0], self.sample_rate, u) for u in utts]
        return np.stack(rows).astype(np.float64)  # stored as float32, read back as float64: as stage 4

    def predict(self, files, speakers=None) -> Predictions:
        from sertk.tasks.egemaps_linear import logreg_predict, speaker_normalize, standardize

        utts = byte_sorted(files)
        x = self.features(utts, files)
        if self.speaker_norm:
            x = speaker_normalize(x, _speakers_of(utts, speakers, self.expdir))
        xs = standardize(x, self.z["mean"], self.z["scale"], self.clip)
        idx, probs = logreg_predict(xs, self.z, len(self.classes))
        out = _categorical(utts, self.classes, idx, probs)
        if "ridge_coef" in self.z:
            out.dims, out.values = list(AVD_NAMES), xs @ self.z["ridge_coef"].T + self.z["ridge_intercept"]
        return out


# ------------------------------------------------------------------ frozen-encoder models
def rebuild_encoder(spec: dict, seed: int, digest: str | None, expdir: Path, weights: Path | None = None):
    """The frozen encoder a model was trained on, checked against the weights digest it recorded."""
    from sertk.features.embedding_cache import frozen_encoder

    encoder, got = frozen_encoder(spec, seed, weights)
    if digest and got != digest:
        raise ServeError(f"{expdir}: the rebuilt encoder's weights (sha256 {got[:12]}) are not the ones the model "
                         f"was trained on ({digest[:12]}): its checkpoint, revision or seed changed")
    return encoder


def encoder_frames(encoder, files: Mapping[str, str], sample_rate: int, max_duration: float | None,
                   batch_size: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(utts, utt -> [frames, dim]) of the encoder's layer: what the feature cache holds."""
    from sertk.features.embedding_cache import compute_features

    ds = audio_dataset(files, sample_rate, max_duration)
    feats: dict[str, torch.Tensor] = {}
    for batch in compute_features(encoder, ds, batch_size):
        feats.update(batch)
    return ds.utts, feats


class Probe:
    """task probe: the frozen encoder's pooled layer, standardised, logistic regression."""

    task = "probe"

    def __init__(self, expdir: Path):
        from sertk.models.heads import build_pooling
        from sertk.tasks.probe import POOLINGS

        self.expdir = Path(expdir)
        info, cfg = read_model_info(self.expdir), run_config(self.expdir)
        self.z = dict(np.load(self.expdir / "model.npz"))
        self.classes = [str(c) for c in self.z["labels"]]
        self.speaker_norm = bool(info.get("speaker_norm", False))
        self.sample_rate = _sample_rate(info, self.expdir)
        self.max_duration = _setting(info, cfg, "max_duration", "data", None, self.expdir)
        self.batch_size = int((cfg.get("data") or {}).get("cache_batch_size", 1))
        seed = int(_setting(info, cfg, "seed", "model", 0, self.expdir))
        self.encoder = rebuild_encoder(info["encoder"], seed, info.get("encoder_weights_sha256"), self.expdir)
        self.pool, _ = build_pooling(POOLINGS[info.get("pooling", "mean")], self.encoder.hidden_size)

    def pooled(self, f: torch.Tensor) -> np.ndarray:
        with torch.no_grad():  # the frames are all valid ones: every frame counts, as in stage 4
            return self.pool(f[None], torch.tensor([len(f)]))[0].numpy()

    def predict(self, files, speakers=None) -> Predictions:
        from sertk.tasks.egemaps_linear import logreg_predict, speaker_normalize, standardize

        utts, feats = encoder_frames(self.encoder, files, self.sample_rate, self.max_duration, self.batch_size)
        x = np.stack([self.pooled(feats[u]) for u in utts]).astype(np.float64)
        if self.speaker_norm:
            x = speaker_normalize(x, _speakers_of(utts, speakers, self.expdir))
        idx, probs = logreg_predict(standardize(x, self.z["mean"], self.z["scale"], None), self.z, len(self.classes))
        return _categorical(utts, self.classes, idx, probs)


class Selm:
    """task selm: the LM's constrained decoding of the categorical view, as stage 4 scores it."""

    task = "selm"

    def __init__(self, expdir: Path):
        from sertk.tasks import selm

        self.expdir = Path(expdir)
        info, cfg = read_model_info(self.expdir), run_config(self.expdir)
        self.info, self.cfg = info, {"model": info["model"]}
        self.classes = list(info["labels"])
        self.sample_rate = _sample_rate(info, self.expdir)
        self.max_duration = (cfg.get("data") or {}).get("max_duration")
        ev = cfg.get("eval") or {}
        self.prior_weight = float(ev.get("lm_prior_weight", 0.0))
        self.batch_size = int(ev.get("batch_size", 16))
        self.cache_batch_size = int((cfg.get("data") or {}).get("cache_batch_size", 1))
        self.amp = (cfg.get("train") or {}).get("amp", "auto")
        seed = int((cfg.get("train") or {}).get("seed", 0))
        self.encoder = rebuild_encoder(info["encoder"], seed, info.get("encoder_weights_sha256"), self.expdir,
                                       self._encoder_weights())
        self.cached = bool(info.get("cached_features", True))
        model, self.tokenizer, _ = selm.load_trained(self.expdir, self.encoder.hidden_size,
                                                     None if self.cached else self.encoder)
        from sertk.train.inference import place

        self.model = place(model)
        self.model.scoring = ev.get("scoring", "sum")  # eval.scoring, as stage 4 decided (sertk.models.scoring)

    def _encoder_weights(self) -> Path | None:
        """``encoder.from_experiment``: that experiment's weights for this split (relative to the recipe dir)."""
        src = (self.info["model"].get("encoder") or {}).get("from_experiment")
        if not src:
            return None
        tag = self._split_tag()
        for base in (Path.cwd(), self._recipe_dir()):
            path = (base / src / tag / "best.safetensors") if not Path(src).is_absolute() else \
                Path(src) / tag / "best.safetensors"
            if path.is_file():
                return path
        raise ServeError(f"{self.expdir}: its encoder comes from {src}/{tag}/best.safetensors, which is not there "
                         "(run sertk predict from the recipe dir)")

    def _exp_root(self) -> Path:
        """The experiment dir (holds config.yaml) this split dir belongs to."""
        for d in [self.expdir, *self.expdir.parents][:4]:
            if (d / "config.yaml").is_file():
                return d
        return self.expdir.parent

    def _split_tag(self) -> str:
        return self.expdir.resolve().relative_to(self._exp_root().resolve()).as_posix()

    def _recipe_dir(self) -> Path:
        return self._exp_root().resolve().parent.parent  # egs/<corpus>/exp/<name>

    def _source(self, files: Mapping[str, str]):
        if not self.cached:
            return audio_dataset(files, self.sample_rate, self.max_duration)
        return encoder_frames(self.encoder, files, self.sample_rate, self.max_duration, self.cache_batch_size)[1]

    def predict(self, files, speakers=None) -> Predictions:
        from sertk.tasks import selm

        utts = byte_sorted(files)
        view = selm._views(self.cfg, self.classes)["categorical"]
        prompt = selm.prompt_ids(self.cfg, self.tokenizer)
        # the decoder reads only the audio and the prompt: the target a ViewExamples item needs is a placeholder
        ds = selm.ViewExamples(self._source(files), utts, [(u, "categorical", [self.classes[0]]) for u in utts],
                               {"categorical": view}, self.tokenizer, prompt)
        r = selm.predict(self.model, selm._eval_loader(ds, self.batch_size), self.tokenizer, {"categorical": view},
                         prompt, self.prior_weight, amp=self.amp)
        order = {u: i for i, u in enumerate(r["utts"])}
        scores = r["scores"][[order[u] for u in utts]]
        labels = [r["views"]["categorical"][order[u]][0] for u in utts]
        return Predictions(utts, classes=self.classes, labels=labels, scores=scores, score_kind="log-likelihood")


# ------------------------------------------------------------------ speech models
class SpeechModel:
    """task classifier / regressor: the fine-tuned model, batched and cropped as stage 4 runs it."""

    def __init__(self, expdir: Path):
        from sertk.tasks.speech_classifier import load_trained
        from sertk.train.inference import place

        self.expdir = Path(expdir)
        model, self.info = load_trained(self.expdir)
        cfg = run_config(self.expdir)
        self.task = self.info["task"]
        self.model = place(model)  # the GPU when there is one
        self.max_duration = (cfg.get("data") or {}).get("max_duration")
        self.batch_size = int((cfg.get("eval") or {}).get("batch_size", 16))
        self.amp = (cfg.get("train") or {}).get("amp", "auto")

    def predict(self, files, speakers=None) -> Predictions:
        from sertk.train.inference import predict

        ds = audio_dataset(files, self.info["sample_rate"], self.max_duration)
        utts, out = predict(self.model, ds, self.batch_size, amp=self.amp)  # batched as stage 4 batches
        if self.task == "regressor":
            return Predictions(utts, dims=list(self.info.get("outputs") or AVD_NAMES), values=out)
        probs = torch.softmax(torch.from_numpy(out), 1).numpy()
        return _categorical(utts, self.info["labels"], probs.argmax(1), probs)


class Teacher:
    """task teacher: the ensemble's mean A/V/D, as stage 7/8 evaluates it (teacher scale)."""

    task = "teacher"

    def __init__(self, expdir: Path):
        from sertk.tasks.teacher import load_teacher
        from sertk.train.inference import place

        self.expdir = Path(expdir)
        model, self.info = load_teacher(self.expdir)
        cfg = run_config(self.expdir)
        self.model = place(model)
        self.max_duration = (self.info.get("data") or {}).get("max_duration")
        self.batch_size = int((cfg.get("eval") or {}).get("batch_size", 16))
        self.amp = (cfg.get("train") or {}).get("amp", "auto")

    def predict(self, files, speakers=None) -> Predictions:
        from sertk.train.inference import predict

        ds = audio_dataset(files, int(self.info.get("sample_rate", DEFAULT_SAMPLE_RATE)), self.max_duration)
        utts, out = predict(self.model, ds, self.batch_size, amp=self.amp)
        return Predictions(utts, dims=list(self.info["outputs"]), values=out)


class OnnxStudent:
    """An exported student (task distill): the int8 ONNX model stage 8 scores, one whole file at a time."""

    task = "distill"

    def __init__(self, path: Path):
        path = Path(path)
        self.path = path if path.suffix == ".onnx" else path / "onnx" / "model.int8.onnx"
        if not self.path.is_file():
            raise ServeError(f"{self.path} not found; a student is served as its int8 ONNX export, which stage 8 "
                             "writes (run the evaluation stage of the distillation config)")

    def predict(self, files, speakers=None) -> Predictions:
        utts, names, out = predict_onnx(self.path, files)
        return Predictions(utts, dims=names, values=out)


def predict_onnx(model_path: str | Path, items: Mapping[str, str]) -> tuple[list[str], list[str], np.ndarray]:
    """(sorted utterance ids, output names, [N, D] outputs) of an ONNX student over ``{utt: audio path}``.

    The sample rate and output names are read from the model's own metadata.
    """
    from sertk.export.onnx_export import metadata, run_onnx, session

    meta = metadata(model_path)
    if "sample_rate" not in meta or "output_names" not in meta:
        raise ValueError(f"{model_path}: not a sertk student (metadata lacks sample_rate/output_names)")
    sr, names = int(meta["sample_rate"]), meta["output_names"].split(",")
    sess = session(model_path)
    utts = byte_sorted(items)
    out = np.stack([run_onnx(sess, read_audio(items[u], sr, utt=u)[0]) for u in utts]) if utts else \
        np.zeros((0, len(names)), np.float32)
    return utts, names, out


# ------------------------------------------------------------------ the registry
SERVERS: dict[str, Callable[[Path], Predictor]] = {
    "egemaps_linear": EgemapsLinear,
    "probe": Probe,
    "classifier": SpeechModel,
    "regressor": SpeechModel,
    "selm": Selm,
    "teacher": Teacher,
    "distill": OnnxStudent,
}
# Tasks whose experiment dir holds no single audio -> label model to serve, and why.
NOT_SERVED = {
    "icl": "a decision needs the target speaker's enrolment pairs as well as the audio (stage 6 draws them)",
    "zsfuse": "zero-shot ALMs and probes fused per test set at stage 9; the CLAPs are served by their own checkpoints",
    "concept_alm": "a generative ALM used zero-shot; it has no trained weights of its own",
}


def task_of(path: Path) -> str:
    """The kind of model at ``path``: an .onnx file, a teacher dir or a model.yaml's task."""
    path = Path(path)
    if path.suffix == ".onnx":
        return "distill"
    if (path / "model.yaml").is_file():
        return str(read_model_info(path).get("task"))
    if (path / "teacher.yaml").is_file():
        return "teacher"
    if (path / "onnx" / "model.int8.onnx").is_file():
        return "distill"
    raise ServeError(f"{path}: no model.yaml, teacher.yaml or onnx/model.int8.onnx here; give the trained split "
                     "dir (exp/<config>/<protocol>[/fold<k>]) and train the model first")


def load_predictor(path: str | Path) -> Predictor:
    """The predictor for the trained model at ``path`` (one split's experiment dir, or an .onnx file)."""
    task = task_of(Path(path))
    if task not in SERVERS:
        raise ServeError(f"{path}: models of task {task!r} cannot be served; servable: {', '.join(sorted(SERVERS))}")
    return SERVERS[task](Path(path))
