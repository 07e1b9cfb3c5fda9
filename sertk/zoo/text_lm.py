"""Zoo text LM: a ``GPT2LMHeadModel`` + byte-level BPE ``GPT2Tokenizer`` trained on the pool's text.

The text is what the pool's speakers say (``text``), how they sound
(``utt2caption``), and the instruction and emotion-view strings that SELM and
the ALMs read and write ("say the emotion. emotion: angry", "sentiment:
negative", "arousal: high, valence: low, dominance: mid"), built from each
pool utterance's own labels with the same view code SELM uses. Like GPT-2's
web text, it never sees the audio.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from sertk.models.views import VIEW_NAMES, make_views, view_values
from sertk.tasks import reject_unknown
from sertk.train.trainer import Trainer, TrainConfig
from sertk.zoo.common import count_params
from sertk.zoo.pool import Pool

log = logging.getLogger(__name__)
EOS = "<|endoftext|>"


def check(entry: dict, where: str) -> None:
    reject_unknown(entry, {"trainer", "stands_in_for", "description", "config", "tokenizer", "text", "train"},
                   where)
    reject_unknown(entry.get("tokenizer") or {}, {"vocab_size", "min_frequency"}, f"{where}: tokenizer")
    text = entry.get("text") or {}
    reject_unknown(text, {"prompts", "views", "avd_thresholds", "dev_fraction"}, f"{where}: text")
    bad = [v for v in text.get("views", []) if v not in VIEW_NAMES]
    if bad:
        raise ValueError(f"{where}: text.views {bad} unknown; choose from {VIEW_NAMES}")
    GPT2Config(**(entry.get("config") or {}))
    TrainConfig.from_dict(dict(entry.get("train") or {}))


def shrink(entry: dict) -> None:
    """Smoke size (sertk.zoo.common.shrink_zoo_config): one narrow layer."""
    entry["config"].update(n_embd=32, n_layer=1)


def pool_texts(pool: Pool, text_cfg: dict) -> list[str]:
    """One training line per sentence, caption and (prompt, view) of every pool utterance."""
    prompts = list(text_cfg.get("prompts") or [""])
    views = make_views(list(text_cfg.get("views", ["categorical"])), pool.emotions)
    thresholds = tuple(text_cfg.get("avd_thresholds", [0.4, 0.6]))
    u2e, u2a = pool.datadir.utt2emo, pool.datadir.utt2avd
    sentences, captions = pool.field("text"), pool.field("utt2caption")
    lines = []
    for i, u in enumerate(pool.utts):
        lines += [sentences[u], captions[u]]
        for view in views.values():
            vals = view_values(view, u2e[u], u2a.get(u), thresholds)
            if vals is not None:
                prompt = prompts[i % len(prompts)]
                lines.append(f"{prompt} {view.text(vals)}".strip())
    return lines


def train_tokenizer(lines: list[str], vocab_size: int, min_frequency: int = 2) -> GPT2Tokenizer:
    """Byte-level BPE as GPT-2's (any text encodes), trained on ``lines`` in a fixed order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sorted(set(lines)), trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return GPT2Tokenizer(vocab=state["vocab"], merges=merges, unk_token=EOS, bos_token=EOS, eos_token=EOS)


class _Lines(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]]):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i]


def _collate(eos: int):
    def fn(items: list[list[int]]) -> dict:
        width = max(len(x) for x in items)
        ids = torch.full((len(items), width), eos, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for b, x in enumerate(items):
            ids[b, :len(x)] = torch.tensor(x)
            labels[b, :len(x)] = torch.tensor(x)
        return {"input_ids": ids, "labels": labels, "attention_mask": (labels != -100).long()}
    return fn


def train(name: str, entry: dict, pool: Pool, workdir: Path, outdir: Path, zoo_dir: Path | None = None) -> dict:
    text_cfg = entry.get("text") or {}
    lines = pool_texts(pool, text_cfg)
    t = entry.get("tokenizer") or {}
    tokenizer = train_tokenizer(lines, int(t.get("vocab_size", 512)), int(t.get("min_frequency", 2)))
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, **(entry.get("config") or {}))
    model = GPT2LMHeadModel(config)
    encoded = [tokenizer.encode(line)[:config.n_positions - 1] + [eos] for line in lines]
    # hold out every k-th line: the dev perplexity selects the epoch
    k = max(2, round(1 / float(text_cfg.get("dev_fraction", 0.05))))
    train_ids = [x for i, x in enumerate(encoded) if i % k]
    dev_ids = [x for i, x in enumerate(encoded) if not i % k]
    tcfg = TrainConfig.from_dict({"select_metric": "loss", "select_mode": "min", **(entry.get("train") or {})})

    def compute_loss(m, batch):
        return m(**batch).loss

    trainer = Trainer(model, _Lines(train_ids), _Lines(dev_ids), _collate(eos), compute_loss, None, tcfg, workdir)
    summary = trainer.fit(resume=True)
    trainer.load_best()
    model = model.cpu().eval()
    model.save_pretrained(outdir)
    tokenizer.save_pretrained(outdir)
    dev_loss = float(summary["best_metrics"]["loss"])
    return {"class": type(model).__name__, "params": count_params(model),
            "objective": "next-token prediction on the pool's sentences, captions and prompt/view strings",
            "tokenizer": f"byte-level BPE, {len(tokenizer)} tokens", "lines": len(lines),
            "training": f"{summary['epochs_done']} epochs (best {summary['best_epoch']}), batch {tcfg.batch_size}, "
            f"{tcfg.optimizer} lr {tcfg.lr:g} {tcfg.scheduler}, {len(dev_ids)} dev lines held out",
            "dev": {"loss": round(dev_loss, 4), "perplexity": round(math.exp(dev_loss), 2)}}
