"""Generative audio-language models behind one interface: prompt, score label strings, generate, parse.

One wrapper for the ALMs of the concept-token study (stage 10) and the mini_emo
zoo ALM, each loaded by name or path with its own processor and chat template:

| ``config.json`` model_type | class | hub checkpoint |
|---|---|---|
| ``qwen2_audio`` | ``Qwen2AudioForConditionalGeneration`` | ``Qwen/Qwen2-Audio-7B-Instruct``, ``zoo/alm`` |
| ``qwen2_5_omni`` | ``Qwen2_5OmniForConditionalGeneration`` (``enable_audio_output=False``), its ``.thinker`` | ``Qwen/Qwen2.5-Omni-7B`` |
| ``qwen2_5_omni_thinker`` | ``Qwen2_5OmniThinkerForConditionalGeneration`` | a thinker saved on its own |
| ``audioflamingo3`` | ``AudioFlamingo3ForConditionalGeneration`` | ``nvidia/audio-flamingo-3-hf`` |

Two decisions, both from the same prompt (the chat template renders the audio
placeholder, the processor expands it to the audio's frame count):

- **scoring**: ``log p(answer_c | audio + prompt)`` of every label's answer
  string through :func:`sertk.models.scoring.candidate_logprobs` -- the one
  scorer SELM uses too. The context it extends is the ALM's own merged input
  embeddings (audio features scattered into the prompt), captured where the
  model hands them to its language model, so no model's merge code is copied.
- **generation**: greedy decoding with the KV cache (``generate``), the answer
  mapped to a label by :func:`parse_answer` (documented there); answers naming
  no label are counted, never guessed.

bf16 on a GPU (``dtype: auto``), float32 on a CPU; batches are left-padded.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import torch

from sertk.features.concept_tokens import render

# model_type -> how to load it (see the table above)
FAMILIES = ("qwen2_audio", "qwen2_5_omni", "qwen2_5_omni_thinker", "audioflamingo3")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------- prompts
def emotion_prompt(instruction: str, answers: Sequence[str], tokens: Mapping[str, str] | str | None = None,
                   token_block: str = "Acoustic cues: {tokens}.", separator: str = " ") -> str:
    """The user text of the emotion question: the instruction (``{labels}`` -> the answer words), then,
    when ``tokens`` are given, ``separator`` and the token block -- the only difference between a
    prompt with tokens and one without."""
    text = instruction.format(labels=", ".join(answers))
    if tokens is None:
        return text
    block = token_block.format(tokens=tokens if isinstance(tokens, str) else render(tokens))
    return text + separator + block


def parse_answer(text: str, answers: Mapping[str, str], synonyms: Mapping[str, Sequence[str]] | None = None
                 ) -> str | None:
    """The label a free-form answer names, or None when it names none.

    Rule: lower-case the answer; every label's answer word and its synonyms are
    searched as whole words (``sad`` in "sadly" does not count); the label whose
    word occurs **first** wins ("Angry, not sad." -> angry), ties going to the
    longer word ("very happy" cannot be split). An answer naming no label is
    unparsable: the caller counts it and scores it as an error.
    """
    low = text.lower()
    best = None  # (position, -length, label)
    for label, word in answers.items():
        for w in [word, *((synonyms or {}).get(label) or [])]:
            m = re.search(r"(?<![a-z])" + re.escape(w.lower()) + r"(?![a-z])", low)
            if m and (best is None or (m.start(), -len(w)) < best[:2]):
                best = (m.start(), -len(w), label)
    return best[2] if best else None


class _Captured(Exception):
    """Raised by the capture hook: the language model's inputs are all that is needed."""


# ---------------------------------------------------------------- the wrapper
class GenerativeALM:
    """A loaded ALM and its processor. ``system``: a system message (None: the template's default)."""

    def __init__(self, model, processor, system: str | None = None):
        self.model = model.eval()
        # greedy decoding means greedy: the hub's generation_config (AF3: repetition_penalty 1.05, sampling
        # settings) would otherwise fill every option generate() is not given; only its token ids are kept
        self.hub_generation_config = model.generation_config
        model.generation_config = greedy_config(model.generation_config)
        self.processor = processor
        self.system = system
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # generation continues every row at its end
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)

    @classmethod
    def load(cls, spec: dict) -> "GenerativeALM":
        """``spec``: ``name_or_path`` (hub id or local dir), optional ``revision``, ``dtype``
        (auto | float32 | bfloat16 | float16), ``device`` (auto | cpu | cuda[:N]), ``system``."""
        from transformers import AutoConfig, AutoProcessor

        path, rev = spec["name_or_path"], spec.get("revision")
        device = spec.get("device", "auto")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtype = spec.get("dtype", "auto")
        dtype = (torch.bfloat16 if device.startswith("cuda") else torch.float32) if dtype == "auto" else DTYPES[dtype]
        kind = AutoConfig.from_pretrained(path, revision=rev).model_type
        model = model_class(kind)
        kw = {"revision": rev, "dtype": dtype}
        if device.startswith("cuda"):  # weights go straight to the GPU, not through host memory twice
            kw["device_map"] = device
        if kind == "qwen2_5_omni":  # thinker only: no talker, no speech output
            model = model.from_pretrained(path, enable_audio_output=False, **kw).thinker
        else:
            model = model.from_pretrained(path, **kw)
        processor = AutoProcessor.from_pretrained(path, revision=rev)
        return cls(model.to(device), processor, spec.get("system"))

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ---- inputs ---------------------------------------------------------------
    def conversation(self, text: str) -> list[dict]:
        user = {"role": "user", "content": [{"type": "audio", "audio": "<audio>"}, {"type": "text", "text": text}]}
        return ([{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []) + [user]

    def chat_text(self, text: str) -> str:
        """The full prompt string: chat template with the audio placeholder, ready for the assistant turn."""
        return self.processor.apply_chat_template(self.conversation(text), add_generation_prompt=True, tokenize=False)

    def encode(self, texts: Sequence[str], audios: Sequence[np.ndarray]):
        """Processor outputs for a batch (one audio per prompt), on the model's device and dtype."""
        batch = self.processor(text=[self.chat_text(t) for t in texts], audio=[np.asarray(a) for a in audios],
                               sampling_rate=self.sampling_rate, text_kwargs={"padding": True},
                               return_tensors="pt")  # text padding only: audio keeps the model's fixed window
        batch = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        dtype = self.model.get_input_embeddings().weight.dtype
        for k in ("input_features",):
            if k in batch:
                batch[k] = batch[k].to(dtype)
        return batch

    @torch.no_grad()
    def contexts(self, batch: dict) -> list[torch.Tensor]:
        """Each row's merged input embeddings [L_b, D] (padding dropped), as the language model gets them."""
        captured = {}

        def hook(module, args, kwargs):
            captured["emb"] = kwargs.get("inputs_embeds")
            raise _Captured

        handle = self.model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.model(**batch)
        except _Captured:
            pass
        finally:
            handle.remove()
        emb = captured.get("emb")
        if emb is None:
            raise RuntimeError(f"{type(self.model).__name__}: its language model was not called with inputs_embeds")
        mask = batch["attention_mask"].bool()
        return [emb[i][mask[i]] for i in range(emb.shape[0])]

    def candidate_ids(self, strings: Sequence[str], suffix: str = "") -> list[list[int]]:
        return [self.tokenizer.encode(s + suffix, add_special_tokens=False) for s in strings]

    # ---- audio once, prompts many ------------------------------------------------
    @property
    def audio_token_id(self) -> int:
        """The token the processor repeats once per audio frame (the rows the audio features replace)."""
        for key in ("audio_token_id", "audio_token_index"):
            value = getattr(self.model.config, key, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{type(self.model).__name__}: its config names no audio token (audio_token_id)")

    @torch.no_grad()
    def audio_embeds(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Each clip's rows of the language model's input (its features at the audio tokens), computed alone
        through the model's own forward and merge. They do not depend on the prompt, so a study that asks
        many prompts about one clip (stage 10: 7 token conditions x 2 decisions) runs the audio encoder once;
        ``score``/``generate`` take them instead of running it again."""
        out = []
        for a in audios:
            batch = self.encode([""], [a])
            ids = batch["input_ids"][0][batch["attention_mask"][0].bool()]
            out.append(self.contexts(batch)[0][ids == self.audio_token_id].clone())
        return out

    def merged_embeds(self, batch: dict, audio_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B, L, D] input embeddings of ``batch``'s tokens with each clip's ``audio_embeds`` in place of its
        audio tokens: what the model's own merge gives, without its audio encoder."""
        ids = batch["input_ids"]
        emb = self.model.get_input_embeddings()(ids)
        where = (ids == self.audio_token_id)[..., None]
        for i, a in enumerate(audio_embeds):
            if int(where[i].sum()) != a.shape[0]:
                raise ValueError(f"prompt {i}: {int(where[i].sum())} audio tokens for {a.shape[0]} cached audio "
                                 f"rows (cached for another clip or window?)")
        return emb.masked_scatter(where, torch.cat([a.to(emb.device, emb.dtype) for a in audio_embeds]))

    # ---- decisions -------------------------------------------------------------
    @torch.no_grad()
    def score(self, texts: Sequence[str], audios: Sequence[np.ndarray], candidates: list[list[int]],
              audio_embeds: Sequence[torch.Tensor] | None = None, scoring: str = "sum") -> torch.Tensor:
        """[B, C] log-probabilities of each candidate answer after each prompt (sertk.models.scoring), summed over
        its tokens or their ``mean`` (``scoring``). ``audio_embeds`` (from :meth:`audio_embeds`) stand in for
        running the audio encoder again."""
        from sertk.models.scoring import candidate_logprobs

        batch = self.encode(texts, audios)
        if audio_embeds is None:
            contexts = self.contexts(batch)
        else:
            emb, mask = self.merged_embeds(batch, audio_embeds), batch["attention_mask"].bool()
            contexts = [emb[i][mask[i]] for i in range(emb.shape[0])]
        return candidate_logprobs(self.model, contexts, candidates, scoring).cpu()

    @torch.no_grad()
    def generate(self, texts: Sequence[str], audios: Sequence[np.ndarray], max_new_tokens: int = 16,
                 audio_embeds: Sequence[torch.Tensor] | None = None) -> list[str]:
        """Greedy answers (KV cache on), decoded without special tokens; ``audio_embeds`` as in :meth:`score`."""
        batch = self.encode(texts, audios)
        pad = self.tokenizer.pad_token_id
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad)
        if audio_embeds is None:
            out = self.model.generate(**batch, **kw)
            new = out[:, batch["input_ids"].shape[1]:]
        else:  # generating from embeddings returns the new tokens only
            new = self.model.generate(inputs_embeds=self.merged_embeds(batch, audio_embeds),
                                      attention_mask=batch["attention_mask"], **kw)
        return [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def greedy_config(hub):
    """A generation config with the hub config's end, padding and start ids and nothing else: no penalty,
    sampling, length or suppression setting of the checkpoint reaches the greedy answers."""
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=hub.eos_token_id, pad_token_id=hub.pad_token_id,
                            bos_token_id=hub.bos_token_id)


def model_class(kind: str):
    """The transformers class of a ``config.json`` model_type (see the module table)."""
    import transformers

    names = {"qwen2_audio": "Qwen2AudioForConditionalGeneration",
             "qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
             "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
             "audioflamingo3": "AudioFlamingo3ForConditionalGeneration"}
    if kind not in names:
        raise ValueError(f"model_type {kind!r} is not a supported generative ALM; supported: {', '.join(FAMILIES)}")
    return getattr(transformers, names[kind])
