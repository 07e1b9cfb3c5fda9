"""Zoo generative ALM: a tiny ``Qwen2AudioForConditionalGeneration`` + processor, instruction-tuned on the pool.

Stands in for ``Qwen/Qwen2-Audio-7B-Instruct`` in the concept-token study
(stage 10): saved with ``save_pretrained`` together with its processor
(Whisper-style log-mel feature extractor, byte-level BPE tokenizer trained on
the pool's text, the Qwen2-Audio chat template), so ``sertk.models.generative_alm``
loads ``zoo/alm`` exactly as it loads the hub model.

Instruction data, built from the pool utterances (their audio is the input):

- *emotion*: the stage-10 question (:func:`sertk.models.generative_alm.emotion_prompt`,
  same instruction and label list) -> the label word, for every utterance,
  **never with concept tokens**;
- *caption*: "Describe how the speaker sounds." -> the pool caption (for a
  seeded share), the "language" that links voice words to emotions;
- *acoustic description* (a seeded subset, ``tokens.utterances``): "Describe the
  acoustics ..." -> the utterance's six concept levels in words
  (:func:`describe`: "loud, high-pitched, lively
  intonation, ..."), asked from the audio alone and, for a seeded ``tokens.share``,
  also with the token block in the prompt. Tokens come from the utterance's
  eGeMAPS (stage 2's tokenizer code, thresholds fit on that subset).

So the token vocabulary is learned only from audio -> description pairs: no
example that carries tokens has an emotion label, and aligned tokens helping
is not built into the stand-in (issue 22, item 12). A real ALM knows what
"high pitch, loud" means from language; whether this one uses the tokens for
emotion is what stage 10 measures.

eGeMAPS is extracted only for the described utterances (openSMILE costs
about 40 ms an utterance on one core) into a store under the work dir, so an
interrupted build does not extract again.

Audio tower: Qwen2-Audio's is a Whisper encoder (the same module names), so
``audio_tower: {init: <zoo Whisper model>}`` starts it from that model's
encoder (its sizes, its mel bins, the first positions of its table for this
window) instead of a small random one; with ``freeze: true`` (default) it stays
as imported and its outputs are computed once per utterance, so training runs
only the projector and the LM.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sertk.models.generative_alm import emotion_prompt
from sertk.tasks import reject_unknown
from sertk.train.trainer import Trainer, TrainConfig
from sertk.zoo.common import count_params
from sertk.zoo.pool import Pool
from sertk.zoo.text_lm import EOS, train_tokenizer

log = logging.getLogger(__name__)

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
AUDIO = "<|AUDIO|>"
END = "<|im_end|>"
UNPARSED = "<unparsed>"
PROMPT_KEYS = {"caption", "describe", "emotion", "token_block", "separator"}
DEFAULT_PROMPTS = {
    "caption": "Describe how the speaker sounds.",
    "describe": "Describe the acoustics of the speech: loudness, pitch, intonation, timbre, vowels and voice quality.",
    "emotion": "What emotion does the speaker express? Answer with one word: {labels}.",
    "token_block": "Acoustic cues: {tokens}.",
    "separator": " ",
}


# The concept levels in plain words: what an acoustic description says (the token vocabulary is learned from these,
# never from emotion labels). Pitch and intonation words are those of the pool captions; no word is an emotion
# word (mid brightness is "balanced", not "neutral"). Part of this module, so a change rebuilds the model.
LEVEL_WORDS = {
    "energy": {"low": "soft", "mid": "moderately loud", "high": "loud"},
    "pitch": {"low": "low-pitched", "mid": "medium-pitched", "high": "high-pitched"},
    "dynamics": {"low": "flat intonation", "mid": "moderately varied intonation", "high": "lively intonation"},
    "brightness": {"low": "dark timbre", "mid": "balanced timbre", "high": "bright timbre"},
    "formants": {"low": "closed vowels", "mid": "central vowels", "high": "open vowels"},
    "voice quality": {"low": "rough voice", "mid": "fairly clear voice", "high": "clear voice"},
}


def level_words(concept: str, level: str) -> str:
    """A level of a concept in words ("very high" pitch -> "very high-pitched"); an unknown concept or
    level reads "<level> <concept>"."""
    words = LEVEL_WORDS.get(concept, {})
    if level in words:
        return words[level]
    if level.startswith("very ") and level[5:] in words:
        return "very " + words[level[5:]]
    return f"{level} {concept}"


def describe(tokens: dict[str, str]) -> str:
    """The tokens as an acoustic description: "loud, high-pitched, lively intonation, ..." (concept order)."""
    return ", ".join(level_words(c, lvl) for c, lvl in tokens.items())


def parse_description(text: str, concepts: list[str], levels: list[str]) -> dict[str, str]:
    """The concept levels a description states (phrases split at commas; phrases naming no level are
    ignored): the inverse of :func:`describe` for a well-formed description."""
    lookup = {level_words(c, lvl).lower(): (c, lvl) for c in concepts for lvl in levels}
    out = {}
    for phrase in text.lower().split(","):
        hit = lookup.get(phrase.strip(" ."))
        if hit and hit[0] not in out:
            out[hit[0]] = hit[1]
    return out


def check(entry: dict, where: str) -> None:
    reject_unknown(entry, {"trainer", "stands_in_for", "description", "config", "features", "tokenizer", "prompts",
                           "tokens", "data", "train", "audio_tower"}, where)
    tower = entry.get("audio_tower") or {}
    reject_unknown(tower, {"init", "freeze"}, f"{where}: audio_tower")
    if tower and (entry.get("config") or {}).get("audio"):
        raise ValueError(f"{where}: give config.audio (a new tower) or audio_tower.init (a zoo Whisper's), not both")
    cfg = entry.get("config") or {}
    reject_unknown(cfg, {"audio", "text"}, f"{where}: config")
    reject_unknown(entry.get("features") or {}, {"num_mel_bins", "max_duration"}, f"{where}: features")
    reject_unknown(entry.get("tokenizer") or {}, {"vocab_size", "min_frequency"}, f"{where}: tokenizer")
    reject_unknown(entry.get("prompts") or {}, PROMPT_KEYS, f"{where}: prompts")
    tok = entry.get("tokens") or {}
    reject_unknown(tok, {"utterances", "share", "levels", "nj"}, f"{where}: tokens")
    if not 0.0 <= float(tok.get("share", 1.0)) <= 1.0:
        raise ValueError(f"{where}: tokens.share must be in [0, 1]")
    reject_unknown(entry.get("data") or {}, {"dev_speakers", "caption_share"}, f"{where}: data")
    build_config(entry, vocab_size=512, audio_token_id=0)  # the model config itself must be valid
    TrainConfig.from_dict(dict(entry.get("train") or {}))


def requires(entry: dict) -> list[str]:
    """Zoo models built before this one: the Whisper its audio tower starts from."""
    init = (entry.get("audio_tower") or {}).get("init")
    return [init] if init else []


def shrink(entry: dict) -> None:
    """Smoke size (sertk.zoo.common.shrink_zoo_config): narrow layers, few token utterances, one dev speaker."""
    if "audio" in entry.get("config", {}):  # an imported tower keeps its size
        entry["config"]["audio"].update(d_model=32, encoder_ffn_dim=64)
    entry["config"]["text"].update(hidden_size=32, intermediate_size=64)
    entry.setdefault("tokens", {}).update(utterances=8, nj=1)
    entry.setdefault("data", {})["dev_speakers"] = 1


def build_config(entry: dict, vocab_size: int, audio_token_id: int, tower_config=None):
    """Qwen2-Audio config: the audio side from ``config.audio`` or, given ``tower_config`` (a WhisperConfig),
    that Whisper encoder's sizes and mel bins; positions for the ``features.max_duration`` window."""
    from transformers import Qwen2AudioConfig

    cfg = entry.get("config") or {}
    feat = entry.get("features") or {}
    frames = int(round(float(feat.get("max_duration", 4.0)) * 100))  # 10 ms hop
    if tower_config is not None:
        c = tower_config
        own = {"encoder_layers": c.encoder_layers, "encoder_attention_heads": c.encoder_attention_heads,
               "d_model": c.d_model, "encoder_ffn_dim": c.encoder_ffn_dim, "num_mel_bins": c.num_mel_bins}
        if frames // 2 > c.max_source_positions:
            raise ValueError(f"features.max_duration {frames / 100:g} s exceeds the Whisper window")
    else:
        own = {"encoder_layers": 2, "encoder_attention_heads": 2, "d_model": 64, "encoder_ffn_dim": 128,
               **(cfg.get("audio") or {}), "num_mel_bins": int(feat.get("num_mel_bins", 32))}
    audio = {**own, "max_source_positions": frames // 2}
    text = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512,
            **(cfg.get("text") or {}), "vocab_size": vocab_size}
    return Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_id=audio_token_id)


def pool_tokens(pool: Pool, utts: list[str], levels: int, nj: int, workdir: Path) -> dict[str, dict[str, str]]:
    """Concept tokens of ``utts``: eGeMAPS (stage 2's extractor, a store under ``workdir``) binned with
    thresholds fit on these pool utterances (stage 2's tokenizer, global scope)."""
    from sertk.features.concept_tokens import ConceptTokenizer, level_names, tokenize_datadir
    from sertk.features.egemaps import extract_parallel

    sub = workdir / "token_pool"
    pool.datadir.subset(utts).write(sub)
    feats = extract_parallel(sub, workdir / "egemaps" / "token_pool", nj=nj, store_root=workdir / "egemaps" / "_store")
    from sertk.features.concept_tokens import fit_on_datadir

    tokenizer: ConceptTokenizer = fit_on_datadir(sub, feats.parent, levels=level_names(levels), scope="global")
    return tokenize_datadir(tokenizer, sub, feats.parent)


def instruction_examples(pool: Pool, tokens: dict[str, dict[str, str]], prompts: dict, share: float,
                         caption_share: float, seed: int) -> list[tuple[str, str, str]]:
    """(utt, user text, answer): every pool utterance's emotion question, without tokens; for a seeded
    ``caption_share``, its caption; every utterance with tokens described in words from its audio and,
    for a seeded ``share`` of them, once more with its token block in the prompt. No example that carries
    tokens has an emotion label: the token vocabulary is learned from audio -> description pairs only."""
    rng = np.random.default_rng(seed)
    labels = pool.emotions
    u2e, captions = pool.datadir.utt2emo, pool.field("utt2caption")
    out = []
    for u in pool.utts:
        out.append((u, emotion_prompt(prompts["emotion"], labels), u2e[u]))
        if rng.random() < caption_share:
            out.append((u, prompts["caption"], captions[u]))
        if u in tokens:
            words = describe(tokens[u])
            out.append((u, prompts["describe"], words))
            if rng.random() < share:
                out.append((u, describe_prompt(prompts, tokens[u]), words))
    return out


def describe_prompt(prompts: dict, tokens: dict[str, str] | None = None) -> str:
    """The acoustic-description question, with the token block after it when ``tokens`` are given (built as
    the emotion question builds its block: :func:`sertk.models.generative_alm.emotion_prompt`)."""
    return emotion_prompt(prompts["describe"], [], tokens, prompts["token_block"], prompts["separator"])


class _Examples(torch.utils.data.Dataset):
    def __init__(self, rows: list[tuple[list[int], list[int], int]]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _collate(feats: np.ndarray, masks: np.ndarray, pad: int, tower: list[torch.Tensor] | None = None):
    """Token batches with their audio: log-mel features, or (frozen tower) the tower's cached outputs."""
    def fn(items):
        width = max(len(ids) for ids, _, _ in items)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        att = torch.zeros((len(items), width), dtype=torch.long)
        for b, (x, y, _) in enumerate(items):
            ids[b, :len(x)] = torch.tensor(x)
            labels[b, :len(y)] = torch.tensor(y)
            att[b, :len(x)] = 1
        idx = [i for _, _, i in items]
        batch = {"input_ids": ids, "attention_mask": att, "labels": labels}
        if tower is not None:  # the utterances' valid tower frames, in prompt order
            return {**batch, "audio_embeds": torch.cat([tower[i] for i in idx])}
        return {**batch, "input_features": torch.from_numpy(feats[idx]),
                "feature_attention_mask": torch.from_numpy(masks[idx])}
    return fn


def load_whisper_tower(tower: torch.nn.Module, whisper_dir: Path) -> None:
    """Copy a Whisper checkpoint's encoder into a Qwen2-Audio audio tower (same module names); the positional
    table is cut to the tower's window. Every tower weight must come from the checkpoint."""
    from transformers import WhisperForAudioClassification

    enc = WhisperForAudioClassification.from_pretrained(whisper_dir).encoder.state_dict()
    own = tower.state_dict()
    state = {k: (v[:own[k].shape[0]] if k == "embed_positions.weight" else v) for k, v in enc.items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{whisper_dir}: its encoder has no {missing[:3]} for the audio tower")
    tower.load_state_dict(state, strict=True)


@torch.no_grad()
def tower_outputs(model, feats: np.ndarray, masks: np.ndarray, n_audio: list[int]) -> list[torch.Tensor]:
    """Each utterance's audio-tower output (its valid frames), computed alone through the model's own forward
    (a hook takes the tower's output; the LM never runs), so it is what the model computes at inference."""
    tower, got = model.model.audio_tower, {}

    def grab(module, args, output):
        got["out"] = output.last_hidden_state
        raise _Stop

    handle = tower.register_forward_hook(grab)
    out = []
    try:
        for i in range(len(feats)):
            ids = torch.full((1, n_audio[i]), model.config.audio_token_id, dtype=torch.long)
            try:
                model(input_ids=ids, input_features=torch.from_numpy(feats[i:i + 1]),
                      feature_attention_mask=torch.from_numpy(masks[i:i + 1]))
            except _Stop:
                pass
            out.append(got.pop("out")[0, :n_audio[i]].clone())
    finally:
        handle.remove()
    return out


class _Stop(Exception):
    """Raised by the tower hook: the rest of the forward is not needed."""


def frozen_tower_loss(model, batch: dict) -> torch.Tensor:
    """The training loss with the audio tower's outputs given: projector, placed at the audio tokens, LM."""
    emb = model.get_input_embeddings()(batch["input_ids"])
    audio = model.model.multi_modal_projector(batch["audio_embeds"].to(emb.dtype))
    where = (batch["input_ids"] == model.config.audio_token_id)[..., None]
    emb = emb.masked_scatter(where, audio)
    return model(inputs_embeds=emb, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def train(name: str, entry: dict, pool: Pool, workdir: Path, outdir: Path, zoo_dir: Path | None = None) -> dict:
    from transformers import (AutoConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                              WhisperFeatureExtractor)

    seed = int((entry.get("train") or {}).get("seed", 0))
    prompts = {**DEFAULT_PROMPTS, **(entry.get("prompts") or {})}
    tok_cfg, data = entry.get("tokens") or {}, entry.get("data") or {}
    feat_cfg = entry.get("features") or {}
    max_dur = float(feat_cfg.get("max_duration", 4.0))
    max_dur = int(max_dur) if max_dur.is_integer() else max_dur
    tower_cfg = entry.get("audio_tower") or {}
    whisper_dir = Path(zoo_dir or outdir.parent) / tower_cfg["init"] if tower_cfg.get("init") else None
    whisper_config = AutoConfig.from_pretrained(whisper_dir) if whisper_dir else None
    frozen = bool(whisper_dir) and tower_cfg.get("freeze", True)

    # concept tokens for a seeded subset of the pool
    rng = np.random.default_rng(seed)
    n_tok = min(int(tok_cfg.get("utterances", 512)), len(pool.utts))
    tok_utts = sorted(rng.choice(pool.utts, n_tok, replace=False).tolist())
    tokens = pool_tokens(pool, tok_utts, int(tok_cfg.get("levels", 3)), int(tok_cfg.get("nj", 1)), workdir)
    examples = instruction_examples(pool, tokens, prompts, float(tok_cfg.get("share", 0.5)),
                                    float(data.get("caption_share", 1.0)), seed)

    # tokenizer (pool text, prompts, answers) and processor
    lines = [t for _, t, _ in examples] + [a for _, _, a in examples] + list(pool.field("text").values())
    t = entry.get("tokenizer") or {}
    tokenizer = train_tokenizer(lines, int(t.get("vocab_size", 512)), int(t.get("min_frequency", 2)))
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    tokenizer.pad_token = EOS
    mels = whisper_config.num_mel_bins if whisper_config else int(feat_cfg.get("num_mel_bins", 32))
    fe = WhisperFeatureExtractor(feature_size=mels, sampling_rate=16000, hop_length=160, n_fft=400,
                                 chunk_length=max_dur)
    processor = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer)
    processor.chat_template = processor.default_chat_template  # saved with it: loads like the hub model's

    config = build_config(entry, len(tokenizer), tokenizer.convert_tokens_to_ids(AUDIO), whisper_config)
    model = Qwen2AudioForConditionalGeneration(config)
    if whisper_dir:
        load_whisper_tower(model.model.audio_tower, whisper_dir)
    if frozen:
        model.model.audio_tower.requires_grad_(False)
    end_id = tokenizer.convert_tokens_to_ids(END)
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    # log-mel features once per utterance (the whole clip fits the window: no crop needed below max_duration)
    audio = pool.audio(16000)
    index = {u: i for i, u in enumerate(pool.utts)}
    fx = fe([audio[u][: int(max_dur * 16000)] for u in pool.utts], sampling_rate=16000, return_attention_mask=True,
            padding="max_length", return_tensors="np")
    feats, masks = fx["input_features"].astype(np.float32), fx["attention_mask"].astype(np.int64)
    n_audio = model.model.audio_tower._get_feat_extract_output_lengths(torch.from_numpy(masks.sum(-1)))[1].tolist()
    tower = tower_outputs(model.eval(), feats, masks, n_audio) if frozen else None

    # token ids: chat template with the audio placeholder expanded; loss on the answer and its end token only
    cache: dict[str, tuple[list[int], list[int]]] = {}

    def encode(u: str, text: str, answer: str):
        if text not in cache:
            chat = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "audio", "audio": "<audio>"}, {"type": "text", "text": text}]}],
                add_generation_prompt=True, tokenize=False)
            head, _, tail = chat.partition(AUDIO)
            cache[text] = (tokenizer.encode(head, add_special_tokens=False), tokenizer.encode(tail, add_special_tokens=False))
        head, tail = cache[text]
        prompt = head + [config.audio_token_id] * n_audio[index[u]] + tail
        target = tokenizer.encode(answer, add_special_tokens=False) + [end_id]
        return prompt + target, [-100] * len(prompt) + target, index[u]

    train_utts, dev_utts = pool.split(int(data.get("dev_speakers", 4)))
    dev_set = set(dev_utts)
    rows = [(u, encode(u, text, ans)) for u, text, ans in examples]
    train_rows = [r for u, r in rows if u not in dev_set]
    dev_rows = [r for u, r in rows if u in dev_set]
    tcfg = TrainConfig.from_dict({"select_metric": "loss", "select_mode": "min", **(entry.get("train") or {})})

    def compute_loss(m, batch):
        return frozen_tower_loss(m, batch) if frozen else m(**batch).loss

    trainer = Trainer(model, _Examples(train_rows), _Examples(dev_rows),
                      _collate(feats, masks, tokenizer.pad_token_id, tower), compute_loss, None, tcfg, workdir)
    summary = trainer.fit(resume=True)
    trainer.load_best()
    model = model.cpu().eval()
    model.save_pretrained(outdir)
    processor.save_pretrained(outdir)
    dev = dev_figures(outdir, pool, dev_utts, tokens, prompts)
    n_desc = sum(1 for _, t, _ in examples if t.startswith(prompts["describe"]))
    n_tok_prompts = sum(1 for _, t, _ in examples if t.startswith(prompts["describe"] + prompts["separator"]))
    tower_note = (f"audio tower: zoo/{tower_cfg['init']}'s encoder{' (frozen)' if frozen else ''}; " if whisper_dir
                  else "")
    return {"class": type(model).__name__, "params": count_params(model),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "objective": "instruction tuning on the pool: the emotion question (never with tokens), audio "
                         f"captioning, and {n_desc} acoustic descriptions (concept levels in words; {n_tok_prompts} "
                         "with the token block in the prompt, none with an emotion label)",
            "processor": f"Qwen2AudioProcessor: {fe.feature_size}-bin log-mel, {max_dur:g} s window; "
                         f"byte-level BPE, {len(tokenizer)} tokens; Qwen2-Audio chat template",
            "examples": len(examples),
            "training": f"{tower_note}{summary['epochs_done']} epochs (best {summary['best_epoch']}), batch "
                        f"{tcfg.batch_size}, {tcfg.optimizer} lr {tcfg.lr:g} {tcfg.scheduler}, {len(dev_rows)} dev "
                        f"examples held out",
            "dev": {"loss": round(float(summary["best_metrics"]["loss"]), 4), **dev}}


def dev_figures(outdir: Path, pool: Pool, dev_utts: list[str], tokens: dict, prompts: dict) -> dict:
    """Free generation on the pool's dev speakers, loaded back as stage 10 loads it: answers that parse to
    a class and UAR without tokens, and with aligned tokens where the utterance has them (a prompt the
    model never met in training); and how many concept levels its acoustic descriptions get right, from
    the audio alone (``describe_level_acc``; chance 1/levels) and with the token block (``..._tokens``)."""
    from sertk.eval.metrics import classification_metrics
    from sertk.models.generative_alm import GenerativeALM, parse_answer

    alm = GenerativeALM.load({"name_or_path": str(outdir), "device": "cpu", "dtype": "float32"})
    labels = pool.emotions
    answers = {lab: lab for lab in labels}
    audio = pool.audio(alm.sampling_rate)
    described = [u for u in dev_utts if u in tokens]

    def ask(utts: list[str], text, max_new: int) -> list[str]:
        out = []
        for i in range(0, len(utts), 32):
            chunk = utts[i:i + 32]
            out += alm.generate([text(u) for u in chunk], [audio[u] for u in chunk], max_new)
        return out

    out = {}
    for cond, utts in (("none", dev_utts), ("aligned", described)):
        if not utts:
            continue
        preds = [parse_answer(a, answers) for a in ask(utts, lambda u: emotion_prompt(
            prompts["emotion"], labels, tokens[u] if cond == "aligned" else None, prompts["token_block"],
            prompts["separator"]), 8)]
        gold = [pool.datadir.utt2emo[u] for u in utts]
        out[f"parsed_{cond}"] = round(float(np.mean([p is not None for p in preds])), 4)
        # an unparsable answer is an error of its own column, never a guessed class
        m = classification_metrics(gold, [p or UNPARSED for p in preds], labels + [UNPARSED])
        out[f"uar_{cond}"] = round(m["uar"], 4)
    if described:
        concepts = list(tokens[described[0]])
        levels = sorted({lvl for t in tokens.values() for lvl in t.values()})
        for key, with_tokens in (("describe_level_acc", False), ("describe_level_acc_tokens", True)):
            said = ask(described, lambda u: describe_prompt(prompts, tokens[u] if with_tokens else None), 40)
            hits = [parse_description(a, concepts, levels).get(c) == tokens[u][c]
                    for u, a in zip(described, said) for c in concepts]
            out[key] = round(float(np.mean(hits)), 4)
    return out
