"""Zero-shot emotion scores from any dual-encoder CLAP (``ClapModel``), by hub name or local path.

An utterance's score for a class is ``scale x cos(audio embedding, class text
embedding) / temperature``; the class text comes from a prompt set (templates
x class synonyms, ``conf/prompts_<labelset>.yaml``):

* ``single``: one prompt per class (the first template with the first synonym);
* ``embedding`` ensemble: the class embedding is the re-normalised mean of the
  embeddings of all its prompts (CLIP's prompt ensembling);
* ``score`` ensemble: the class score is the mean of the per-prompt scores.

Prompt amplification repeats the query: the waveform tiled ``N`` times (cut
to the encoder's window, so a short clip fills more of it) and the text
repeated ``N`` times (``word``: the class phrase, "sounds angry angry angry";
``prompt``: the whole prompt). ``N = 1`` is the plain query, bit for bit.

The log-mel front end is a batched torch copy of ``ClapFeatureExtractor``'s
unfused (``rand_trunc``) path, with a centre crop for clips longer than the
window where the extractor crops at random: the extractor computes frame by
frame in numpy, too slow to score every utterance on 2 CPU cores; a test pins
the two to the same features. Checkpoints with feature fusion (``truncation:
fusion``) go through the extractor itself, seeded. Audio embeddings are cached
per utterance content in the shared embedding store
(``sertk.features.embedding_cache``), text embeddings per prompt string
(``text-<weights>.json``; off the CPU the device names it too). As the store
does for audio on CPU, each prompt is embedded alone: in a padded batch a
prompt's values move (~1e-7) with its batch mates, so a stored value would
depend on which prompts the job that filled the file first asked for.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from sertk.common.fileio import atomic_path

log = logging.getLogger(__name__)
ENSEMBLES = ("single", "embedding", "score")
TEXT_MODES = ("word", "prompt")
TEXT_FORMAT = 2  # 1: prompts embedded in padded batches (values depended on the batch); 2: one prompt at a time


# ------------------------------------------------------------- amplification --


def amplify_audio(wav: np.ndarray, n: int, window: int | None = None) -> np.ndarray:
    """The waveform tiled ``n`` times, cut to ``window`` samples when that is shorter; ``n = 1``: ``wav`` itself."""
    if n < 1:
        raise ValueError(f"audio amplification must be >= 1, got {n}")
    if n == 1:
        return wav
    out = np.tile(wav, n)
    return out[:window] if window and len(out) > window else out


def amplify_text(template: str, phrase: str, n: int, mode: str = "word") -> str:
    """A prompt with its query repeated ``n`` times (``word``: the class phrase; ``prompt``: the whole prompt)."""
    if n < 1:
        raise ValueError(f"text amplification must be >= 1, got {n}")
    if mode == "word":
        return template.format(" ".join([phrase] * n))
    if mode == "prompt":
        return " ".join([template.format(phrase)] * n)
    raise ValueError(f"text amplification mode must be one of {TEXT_MODES}, got {mode!r}")


# ------------------------------------------------------------------ prompts --


@dataclass
class PromptSet:
    """Templates ("the speaker sounds {}") x synonyms per class label ("angry", "annoyed", ...)."""

    templates: list[str]
    synonyms: dict[str, list[str]]

    @classmethod
    def load(cls, path: str | Path, labels: list[str]) -> "PromptSet":
        cfg = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(cfg) - {"templates", "classes"}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: ['classes', 'templates']")
        return cls.build(cfg.get("templates"), cfg.get("classes"), labels, str(path))

    @classmethod
    def build(cls, templates, classes, labels: list[str], where: str = "prompts") -> "PromptSet":
        if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
            raise ValueError(f"{where}: 'templates' must be a list of strings with one '{{}}' each")
        missing = [lb for lb in labels if not (classes or {}).get(lb)]
        if missing:
            raise ValueError(f"{where}: 'classes' has no synonyms for label(s) {missing}")
        return cls(list(templates), {lb: [str(s) for s in classes[lb]] for lb in labels})

    def prompts(self, label: str, ensemble: str = "embedding", n: int = 1, mode: str = "word") -> list[str]:
        """The prompts of one class: one for ``single``, every template x synonym otherwise."""
        if ensemble == "single":
            return [amplify_text(self.templates[0], self.synonyms[label][0], n, mode)]
        return [amplify_text(t, s, n, mode) for t in self.templates for s in self.synonyms[label]]


# ---------------------------------------------------------------- front end --


class ClapFrontEnd:
    """Batched torch log-mel equal to a ``ClapFeatureExtractor``'s ``rand_trunc`` features.

    Short clips are padded as the extractor pads (``repeatpad``, ``repeat`` or
    zero ``pad``); a clip longer than the window is centre-cropped (the
    extractor draws a random crop).
    """

    def __init__(self, fe, padding: str | None = None):
        self.fe = fe
        self.window = int(fe.nb_max_samples)
        self.padding = padding or fe.padding
        self.fast = getattr(fe, "truncation", "rand_trunc") == "rand_trunc"
        self.sample_rate = int(fe.sampling_rate)
        # float32 (the extractor computes in float64): within 1e-3 dB of it, several times faster
        self.mel = torch.tensor(np.asarray(fe.mel_filters_slaney), dtype=torch.float32)  # [freq, mels]
        self.hann = torch.hann_window(int(fe.fft_window_size), periodic=True, dtype=torch.float32)

    def fit(self, wav: np.ndarray) -> np.ndarray:
        """One clip cut or padded to the window, as the extractor does before its spectrogram."""
        w = self.window
        if len(wav) > w:
            start = (len(wav) - w) // 2
            return wav[start:start + w]
        if len(wav) < w:
            if self.padding == "repeat":
                wav = np.tile(wav, w // len(wav) + 1)[:w]
            elif self.padding == "repeatpad":
                wav = np.tile(wav, w // len(wav))
            wav = np.pad(wav, (0, w - len(wav)))
        return wav

    def __call__(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([B, 1, frames, mels] float32 input features, ``is_longer`` or None) of a batch of clips."""
        if not self.fast:  # feature fusion: the extractor's own (random) crops, seeded
            state = np.random.get_state()
            np.random.seed(0)
            try:
                out = self.fe([w.astype(np.float64) for w in wavs], sampling_rate=self.sample_rate,
                              return_tensors="pt")
            finally:
                np.random.set_state(state)
            return out["input_features"].float(), out["is_longer"]
        x = torch.from_numpy(np.stack([self.fit(np.asarray(w, dtype=np.float32)) for w in wavs]))
        n_fft, hop = int(self.fe.fft_window_size), int(self.fe.hop_length)
        spec = torch.view_as_real(torch.stft(x, n_fft, hop, window=self.hann, center=True, pad_mode="reflect",
                                             return_complex=True))
        power = (spec ** 2).sum(-1)  # [B, freq, frames]; |z|^2 without complex abs (slow on CPU)
        mel = torch.clamp(torch.matmul(self.mel.T, power), min=1e-10)
        return (10.0 * torch.log10(mel)).transpose(1, 2)[:, None], None


# ------------------------------------------------------------------- model --


class ClapAudioEmbedder(nn.Module):
    """A CLAP's audio side as a frozen encoder for the embedding cache: (wav, lengths) -> ([B, 1, D], ones).

    The waveform is amplified (tiled ``amplify`` times) before the front end;
    the output is the L2-normalised projected audio embedding.
    """

    def __init__(self, model, front: ClapFrontEnd, amplify: int = 1):
        super().__init__()
        self.model, self.front, self.amplify = model, front, int(amplify)
        self.eval()  # the cache restores this mode afterwards: never leave the CLAP in train mode (BatchNorm, dropout)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor):
        clips = [amplify_audio(wav[b, :int(lengths[b])].double().cpu().numpy(), self.amplify, self.front.window)
                 for b in range(len(wav))]
        feats, longer = self.front(clips)
        dev = next(self.model.parameters()).device
        kw = {} if longer is None else {"is_longer": longer.to(dev)}
        emb = self.model.get_audio_features(input_features=feats.to(dev), **kw).pooler_output
        return emb.float()[:, None], torch.ones(len(wav), dtype=torch.long)


class ClapZeroShot:
    """One CLAP (hub name or path) with its processor, cached text embeddings and scoring."""

    def __init__(self, name_or_path: str, revision: str | None = None, padding: str | None = None,
                 cache_dir: str | Path | None = None, device: str = "auto"):
        from transformers import ClapModel, ClapProcessor

        from sertk.features.embedding_cache import store_name
        from sertk.train.inference import resolve_device
        kw = {"revision": revision} if revision else {}
        self.name = str(name_or_path)
        self.model = ClapModel.from_pretrained(self.name, **kw).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.processor = ClapProcessor.from_pretrained(self.name, **kw)
        self.front = ClapFrontEnd(self.processor.feature_extractor, padding)
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.digest = weights_digest(self.model)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._text: dict[str, np.ndarray] = {}
        self._text_file = (self.cache_dir / f"{store_name(f'text-{self.digest[:16]}', self.device, 1)}.json"
                           if self.cache_dir else None)
        if self._text_file and self._text_file.is_file():
            stored = json.loads(self._text_file.read_text())
            if stored.get("format") == TEXT_FORMAT:
                self._text = {k: np.asarray(v, dtype=np.float32) for k, v in stored["prompts"].items()}
            else:
                log.info("%s: batched prompt embeddings (an older format): computing them again", self._text_file)

    @property
    def sample_rate(self) -> int:
        return self.front.sample_rate

    @property
    def logit_scale(self) -> float:
        """The model's learnt audio-side scale, exp(logit_scale_a) (CLAP's 1/temperature)."""
        return float(self.model.logit_scale_a.detach().exp())

    def spec(self, amplify: int) -> dict:
        """What names this model's audio embeddings in the cache (with the weights digest)."""
        return {"clap": self.name, "padding": self.front.padding, "amplify": int(amplify), "front": "clap_zeroshot/2"}

    def embedder(self, amplify: int = 1) -> ClapAudioEmbedder:
        return ClapAudioEmbedder(self.model, self.front, amplify)

    def audio_embeddings(self, wavs: list[np.ndarray], amplify: int = 1, batch_size: int = 16) -> np.ndarray:
        """[N, D] normalised embeddings of waveforms at :attr:`sample_rate` (uncached: tests, one-off use)."""
        emb = self.embedder(amplify)
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(wavs), batch_size):
                chunk = [torch.as_tensor(w, dtype=torch.float32) for w in wavs[i:i + batch_size]]
                lengths = torch.tensor([len(w) for w in chunk])
                wav = nn.utils.rnn.pad_sequence(chunk, batch_first=True)
                out.append(emb(wav.to(self.device), lengths)[0][:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """[N, D] normalised embeddings of prompt strings, each computed once and alone (a function of the
        prompt and the model, whatever else a job asks for), and stored with the cache."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._text]
        if todo:
            self.model.eval()
            tok = self.processor.tokenizer
            with torch.no_grad():
                for t in todo:
                    enc = tok([t], truncation=True, return_tensors="pt").to(self.device)
                    self._text[t] = self.model.get_text_features(**enc).pooler_output.float().cpu().numpy()[0]
            if self._text_file:
                self._text_file.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(self._text_file) as tmp:
                    Path(tmp).write_text(json.dumps({"format": TEXT_FORMAT, "device": self.device.type,
                                                     "prompts": {k: v.tolist() for k, v in self._text.items()}}))
        return np.stack([self._text[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def weights_digest(module: nn.Module) -> str:
    """sha256 over a module's named tensors, 0-dim ones (BatchNorm's step counter) included."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def class_logits(audio: np.ndarray, text_fn, prompts: PromptSet, labels: list[str], ensemble: str = "embedding",
                 text_amplify: int = 1, text_mode: str = "word", scale: float = 1.0,
                 temperature: float = 1.0) -> np.ndarray:
    """[N, C] zero-shot logits ``scale * cos(audio, class) / temperature`` (see the module docstring).

    ``audio`` holds L2-normalised embeddings; ``text_fn(list of str)`` gives
    L2-normalised text embeddings.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    cols = []
    for label in labels:
        t = np.asarray(text_fn(prompts.prompts(label, ensemble, text_amplify, text_mode)), dtype=np.float64)
        if ensemble == "score":
            cols.append((audio.astype(np.float64) @ t.T).mean(1))
        else:  # single, or the re-normalised mean embedding
            c = t.mean(0)
            cols.append(audio.astype(np.float64) @ (c / np.linalg.norm(c)))
    return np.stack(cols, 1) * float(scale) / float(temperature)

