"""One small tokenizer interface for SELM's language model.

Real recipes use the pre-trained GPT-2 BPE (``transformers.AutoTokenizer``);
mini_emo and tests train a tiny sentencepiece model on the fly from the target
texts and prompts, so no hub access is needed. Both expose ``encode``,
``decode``, ``eos_id``, ``vocab_size`` and ``save``/``load`` beside a checkpoint.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

from sertk.common.fileio import atomic_path, write_json_atomic

SPM_FILE = "tokenizer.model"
INFO_FILE = "tokenizer.json"


class TextTokenizer:
    """Text <-> token ids; ``eos_id`` ends every target and pads batches."""

    kind = "base"
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError


class SentencePieceTokenizer(TextTokenizer):
    """A sentencepiece model trained in memory (deterministic: one thread, fixed corpus order)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.eos_id = self.sp.eos_id()
        self.vocab_size = self.sp.get_piece_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 96, model_type: str = "bpe") -> "SentencePieceTokenizer":
        import sentencepiece as spm
        corpus = sorted(set(t for t in texts if t.strip()))
        if not corpus:
            raise ValueError("SentencePieceTokenizer.train: no non-empty text to train on")
        buf = io.BytesIO()
        # hard_vocab_limit=False: a tiny label corpus may not support the requested size
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            hard_vocab_limit=False, unk_id=0, eos_id=1, bos_id=-1, pad_id=-1, character_coverage=1.0,
            num_threads=1, minloglevel=2)
        return cls(buf.getvalue())

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) != self.eos_id])

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / SPM_FILE) as tmp:
            Path(tmp).write_bytes(self.proto)
        write_json_atomic(d / INFO_FILE, {"kind": self.kind, "file": SPM_FILE})


class HFTokenizer(TextTokenizer):
    """A pre-trained transformers tokenizer (GPT-2 BPE in real recipes)."""

    kind = "hf"

    def __init__(self, name_or_path: str, revision: str | None = None):
        from transformers import AutoTokenizer
        self.name_or_path, self.revision = name_or_path, revision
        self.tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
        if self.tok.eos_token_id is None:
            raise ValueError(f"tokenizer {name_or_path}: has no eos token; SELM needs one to end targets")
        self.eos_id = int(self.tok.eos_token_id)
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids if int(i) != self.eos_id])

    def save(self, directory: str | Path) -> None:
        write_json_atomic(Path(directory) / INFO_FILE, {"kind": self.kind, "name_or_path": self.name_or_path,
                                                        "revision": self.revision})


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """The tokenizer saved beside a checkpoint by :meth:`TextTokenizer.save`."""
    d = Path(directory)
    info_path = d / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: no saved tokenizer (was this model trained by sertk SELM?)")
    info = json.loads(info_path.read_text())
    if info.get("kind") == "sentencepiece":
        return SentencePieceTokenizer((d / info["file"]).read_bytes())
    if info.get("kind") == "hf":
        return HFTokenizer(info["name_or_path"], info.get("revision"))
    raise ValueError(f"{info_path}: unknown tokenizer kind {info.get('kind')!r}")
