"""Zero-shot emotion scores from any dual-encoder CLAP (``ClapModel``), by hub name or local path.

An utterance's score for a class is ``scale x cos(audio embedding, class text
embedding) / temperature``; the class text comes from a prompt set (templates
x class synonyms, ``conf/prompts_<labelset>.yaml``):

* ``single``: one prompt per class (the first template with the first synonym);
* ``embedding`` ensemble: the class embedding is the re-normalised mean of the
  embeddings of all its prompts (CLIP's prompt ensembling);
* ``score`` ensemble: the class score is the mean of the per-prompt scores.

Prompt amplification repeats the query ``N`` times (``N = 1``: the plain
query, bit for bit). Text: the whole prompt said ``N`` times ("a sad voice a
sad voice"; ``prompt`` mode, the paper's); ``word`` (the class phrase
repeated inside the template, "a sad sad voice") is kept as an ablation.
Audio: the query laid end to end ``N`` times, so the encoder hears ``N``
times what it hears at ``N = 1``: a clip longer than the window cropped (the
same way for every ``N``), a shorter one repeated as the checkpoint's padding
repeats it (``repeatpad``: the whole copies that fit), without the zeros. The
``N`` copies are cut into consecutive window-long pieces (the last one
zero-padded), each piece is embedded and the clip's embedding is the
re-normalised mean of the pieces' (:func:`query_windows`). A query that fills
the window (a long clip, ``repeat`` padding) thus gives the same embedding for
every ``N``.

The log-mel front end is a batched torch copy of ``ClapFeatureExtractor``'s
unfused (``rand_trunc``) path, with a centre crop for clips longer than the
window where the extractor crops at random: the extractor computes frame by
frame in numpy, too slow to score every utterance on 2 CPU cores; a test pins
the two to the same features. Checkpoints with feature fusion (``truncation:
fusion``) go through the extractor itself, one clip at a time and seeded, with
``is_longer`` set from the clip's own length (the extractor marks a random
clip of a batch "longer" when none is, a training device that would make a
cached embedding depend on its batch mates). Audio embeddings are cached
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
TEXT_MODES = ("prompt", "word")  # the first is the default: the paper's (the whole prompt repeated)
FRONT_VERSION = "clap_zeroshot/3"  # 3: N query copies embedded window by window; fusion is_longer per clip
TEXT_FORMAT = 2  # 1: prompts embedded in padded batches (values depended on the batch); 2: one prompt at a time


# ------------------------------------------------------------- amplification --


def amplify_audio(wav: np.ndarray, n: int) -> np.ndarray:
    """The waveform laid end to end ``n`` times; ``n = 1``: ``wav`` itself."""
    if n < 1:
        raise ValueError(f"audio amplification must be >= 1, got {n}")
    return wav if n == 1 else np.tile(wav, n)


def repeat_to_window(wav: np.ndarray, window: int, padding: str) -> np.ndarray:
    """A short clip repeated as a CLAP extractor pads it, before its zeros: ``repeatpad`` whole copies that
    fit, ``repeat`` copies cut to the window, ``pad`` the clip alone."""
    if len(wav) >= window or not len(wav):
        return wav
    if padding == "repeat":
        return np.tile(wav, window // len(wav) + 1)[:window]
    if padding == "repeatpad":
        return np.tile(wav, window // len(wav))
    return wav


def query_windows(wav: np.ndarray, n: int, window: int, padding: str = "pad") -> list[np.ndarray]:
    """The audio query amplified ``n`` times as the window-long pieces the encoder embeds (mean of them).

    The plain query is what the encoder's window holds at ``n = 1``: a clip at
    least a window long (the front end crops it), or a short one repeated as
    ``padding`` repeats it. Amplified, it is laid end to end ``n`` times and cut
    into ``ceil(n * len / window)`` pieces, the last zero-padded: the encoder
    hears ``n`` times what it hears at ``n = 1``, and no more.
    """
    if n < 1:
        raise ValueError(f"audio amplification must be >= 1, got {n}")
    if n == 1 or len(wav) >= window:
        return [wav]  # a long clip: each of its n copies is the same cropped window
    query = repeat_to_window(wav, window, padding)
    if len(query) >= window:
        return [query]
    rep = amplify_audio(query, n)
    pieces = [rep[i:i + window] for i in range(0, len(rep), window)]
    pieces[-1] = np.pad(pieces[-1], (0, window - len(pieces[-1])))
    return pieces


def amplify_text(template: str, phrase: str, n: int, mode: str = "prompt") -> str:
    """A prompt with its query repeated ``n`` times (``prompt``: the whole prompt; ``word``: the class phrase)."""
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

    def prompts(self, label: str, ensemble: str = "embedding", n: int = 1, mode: str = "prompt") -> list[str]:
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
            wav = repeat_to_window(wav, w, self.padding)
            wav = np.pad(wav, (0, w - len(wav)))
        return wav

    def is_longer(self, n: int) -> bool:
        """Whether the extractor's fusion path takes an ``n``-sample clip as long (more frames than a window)."""
        hop = int(self.fe.hop_length)
        return n > self.window and n // hop != self.window // hop

    def fused(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature-fusion inputs: the extractor's, one clip at a time with its random crops seeded, and
        ``is_longer`` from each clip's own length, so a clip's features do not depend on its batch."""
        feats = []
        state = np.random.get_state()
        try:
            for w in wavs:
                np.random.seed(0)
                feats.append(self.fe([np.asarray(w, dtype=np.float64)], sampling_rate=self.sample_rate,
                                     padding=self.padding, return_tensors="pt")["input_features"][0])
        finally:
            np.random.set_state(state)
        longer = torch.tensor([[self.is_longer(len(w))] for w in wavs])
        return torch.stack(feats).float(), longer

    def __call__(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([B, 1, frames, mels] float32 input features, ``is_longer`` or None) of a batch of clips."""
        if not self.fast:
            return self.fused(wavs)
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

    Each clip's query is amplified ``amplify`` times (:func:`query_windows`);
    the output is the re-normalised mean of its pieces' L2-normalised projected
    audio embeddings (one piece at ``amplify = 1``: the embedding itself).
    """

    def __init__(self, model, front: ClapFrontEnd, amplify: int = 1):
        super().__init__()
        self.model, self.front, self.amplify = model, front, int(amplify)
        self.eval()  # the cache restores this mode afterwards: never leave the CLAP in train mode (BatchNorm, dropout)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor):
        pieces = [query_windows(wav[b, :int(lengths[b])].double().cpu().numpy(), self.amplify, self.front.window,
                                self.front.padding) for b in range(len(wav))]
        feats, longer = self.front([p for ps in pieces for p in ps])
        dev = next(self.model.parameters()).device
        kw = {} if longer is None else {"is_longer": longer.to(dev)}
        emb = self.model.get_audio_features(input_features=feats.to(dev), **kw).pooler_output.float()
        if all(len(ps) == 1 for ps in pieces):
            return emb[:, None], torch.ones(len(wav), dtype=torch.long)
        owner = torch.repeat_interleave(torch.arange(len(pieces)), torch.tensor([len(ps) for ps in pieces])).to(dev)
        mean = torch.zeros(len(pieces), emb.shape[1], device=dev).index_add_(0, owner, emb)
        return nn.functional.normalize(mean, dim=-1)[:, None], torch.ones(len(wav), dtype=torch.long)


class ClapZeroShot:
    """One CLAP (hub name or path, or an MS-CLAP 2023 ``.pth`` file) with its processor, cached text
    embeddings and scoring.

    An MS-CLAP checkpoint (``sertk.models.msclap_loader``) takes its GPT-2
    ``tokenizer`` (hub name or path, default ``gpt2``) and, for checkpoints not
    of the 2023 sizes, ``msclap`` overrides (``spec_size``, ``patch_stride``,
    ``text_heads``, ``features``: ``ClapFeatureExtractor`` arguments).
    """

    def __init__(self, name_or_path: str, revision: str | None = None, padding: str | None = None,
                 cache_dir: str | Path | None = None, device: str = "auto", tokenizer: str | None = None,
                 msclap: dict | None = None):
        from transformers import ClapModel, ClapProcessor

        from sertk.features.embedding_cache import store_name
        from sertk.train.inference import resolve_device
        kw = {"revision": revision} if revision else {}
        self.name = str(name_or_path)
        if is_msclap(self.name):
            self.model, self.processor, self._tokenize = _load_msclap(self.name, tokenizer, msclap or {})
        else:
            self.model = ClapModel.from_pretrained(self.name, **kw).eval()
            self.processor = ClapProcessor.from_pretrained(self.name, **kw)
            tok = self.processor.tokenizer
            self._tokenize = lambda texts: tok(texts, truncation=True, return_tensors="pt")
        for p in self.model.parameters():
            p.requires_grad_(False)
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
        return {"clap": self.name, "padding": self.front.padding, "amplify": int(amplify), "front": FRONT_VERSION}

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
            with torch.no_grad():
                for t in todo:
                    enc = self._tokenize([t]).to(self.device)
                    self._text[t] = self.model.get_text_features(**enc).pooler_output.float().cpu().numpy()[0]
            if self._text_file:
                self._text_file.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(self._text_file) as tmp:
                    Path(tmp).write_text(json.dumps({"format": TEXT_FORMAT, "device": self.device.type,
                                                     "prompts": {k: v.tolist() for k, v in self._text.items()}}))
        return np.stack([self._text[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def is_msclap(name_or_path: str) -> bool:
    """An MS-CLAP checkpoint is one ``.pth``/``.pt`` file (a ``ClapModel`` is a hub name or a folder)."""
    return Path(name_or_path).suffix in (".pth", ".pt")


def _load_msclap(path: str, tokenizer: str | None, over: dict):
    """(model, processor-like (feature_extractor, tokenizer), tokenize) of an MS-CLAP 2023 checkpoint."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from sertk.models import msclap_loader
    if not Path(path).is_file():
        raise FileNotFoundError(f"MS-CLAP checkpoint {path} not found")
    model = msclap_loader.load_msclap(path, **{k: v for k, v in over.items() if k != "features"})
    tok = AutoTokenizer.from_pretrained(tokenizer or "gpt2")
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "!"})  # as msclap's loader: GPT-2's id 0
    fe = msclap_loader.feature_extractor(**(over.get("features") or {}))
    return model, SimpleNamespace(feature_extractor=fe, tokenizer=tok), lambda t: msclap_loader.text_inputs(tok, t)


def weights_digest(module: nn.Module) -> str:
    """sha256 over a module's named tensors, 0-dim ones (BatchNorm's step counter) included."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def class_logits(audio: np.ndarray, text_fn, prompts: PromptSet, labels: list[str], ensemble: str = "embedding",
                 text_amplify: int = 1, text_mode: str = "prompt", scale: float = 1.0,
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

