"""SELM: speech emotion recognition as text generation.

frozen speech encoder (one layer, or cached features of it) -> projection
(Linear-GELU-Linear) -> mapper (a small transformer reading learned query
tokens beside the frames) -> a prefix of ``prefix_length`` vectors in the LM's
embedding space -> GPT-2, trained with next-token prediction on emotion
"views" (sertk.models.views). The loss covers target tokens only.

Decisions score every candidate string in one batched forward pass
(:meth:`SELM.score_candidates`), optionally minus ``lambda * log p_LM(class)``
from a text-only pass: the acoustic x language model decomposition of ASR.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2LMHeadModel

from sertk.models.causal_lm import build_causal_lm
from sertk.models.encoder import SpeechEncoder, lengths_to_mask
from sertk.models.scoring import DEFAULT_SCORING, candidate_logprobs
from sertk.models.text_tokenizer import TextTokenizer
from sertk.models.views import View



def build_lm(spec: dict, tokenizer: TextTokenizer) -> GPT2LMHeadModel:
    """GPT-2 from the hub (``name_or_path: gpt2``) or a small local config sized to the tokenizer."""
    lm = build_causal_lm(spec, tokenizer.vocab_size, tokenizer.eos_id)
    if spec.get("name_or_path") and lm.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"lm {spec['name_or_path']}: vocab {lm.config.vocab_size} < tokenizer's "
                         f"{tokenizer.vocab_size}")
    return lm


class PrefixMapper(nn.Module):
    """Encoder frames -> ``length`` prefix vectors (ClipCap-style learned queries + transformer)."""

    def __init__(self, feat_dim: int, lm_dim: int, length: int = 8, proj_hidden: int = 256,
                 mapper_layers: int = 1, mapper_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.length = length
        # Each feature dimension standardised with the training set's frame statistics (global CMVN; set by
        # the task, saved with the weights): a frozen layer's dimensions differ in offset and scale (Whisper
        # tiny.en layer 2: means up to 2.5, std 0.13-0.97), and without it SELM on Whisper never left the
        # class prior. Identity until set.
        self.register_buffer("feat_mean", torch.zeros(feat_dim))
        self.register_buffer("feat_std", torch.ones(feat_dim))
        # LayerNorm next: frozen-encoder layers differ wildly in scale between models and layers
        self.proj = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, proj_hidden), nn.GELU(),
                                  nn.Linear(proj_hidden, lm_dim))
        self.queries = nn.Parameter(torch.randn(length, lm_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(lm_dim, mapper_heads, dim_feedforward=4 * lm_dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.mapper = nn.TransformerEncoder(layer, mapper_layers, enable_nested_tensor=False)

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The training set's per-dimension frame mean and std (sertk.features.embedding_cache.frame_stats)."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp(min=1e-5))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.proj((feats - self.feat_mean) / self.feat_std)
        b = x.shape[0]
        valid = lengths_to_mask(lengths.to(x.device), x.shape[1])
        # every query starts from the utterance mean: a direct audio path, so the LM
        # cannot settle on the class prior before the prefix carries information
        mean = (x * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        seq = torch.cat([self.queries.unsqueeze(0) + mean.unsqueeze(1), x], 1)
        pad = torch.cat([torch.zeros(b, self.length, dtype=torch.bool, device=x.device), ~valid], 1)
        return self.mapper(seq, src_key_padding_mask=pad)[:, :self.length]


class SELM(nn.Module):
    """Audio-conditioned GPT-2. ``encoder`` is optional: without it inputs are cached features."""

    scoring = DEFAULT_SCORING  # how class strings' token log-probs combine (eval.scoring; set by the task)

    def __init__(self, lm: GPT2LMHeadModel, feat_dim: int, prefix: dict | None = None,
                 encoder: SpeechEncoder | None = None):
        super().__init__()
        self.encoder = encoder
        if encoder is not None:  # frozen: its features are what the cache stores
            for p in encoder.parameters():
                p.requires_grad_(False)
        self.lm = lm
        self.lm_frozen = not any(p.requires_grad for p in lm.parameters())
        self.prefixer = PrefixMapper(feat_dim, lm.config.n_embd, **(prefix or {}))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        if self.lm_frozen:
            self.lm.eval()
        return self

    # ---- inputs ---------------------------------------------------------------
    def features(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:
            raise ValueError("this SELM has no encoder: pass cached 'feats'")
        with torch.no_grad():
            return self.encoder(wav, lengths)

    def audio_prefix(self, feats: torch.Tensor | None = None, feat_lengths: torch.Tensor | None = None,
                     wav: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if feats is None:
            feats, feat_lengths = self.features(wav, lengths)
        return self.prefixer(feats, feat_lengths)

    def _embed(self, prefix: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        tok = self.lm.get_input_embeddings()(ids)
        return tok if prefix is None else torch.cat([prefix.to(tok.dtype), tok], 1)

    def token_logprobs(self, prefix: torch.Tensor | None, ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        """log p(ids[:, t] | prefix, ids[:, :t]) for t >= 1 (t = 0 too when there is a prefix); [N, L]."""
        p = 0 if prefix is None else prefix.shape[1]
        mask = attention_mask if prefix is None else torch.cat(
            [torch.ones(ids.shape[0], p, dtype=attention_mask.dtype, device=ids.device), attention_mask], 1)
        logits = self.lm(inputs_embeds=self._embed(prefix, ids), attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits, -1)
        out = torch.zeros(ids.shape, dtype=logp.dtype, device=ids.device)
        start = 0 if p else 1  # the first text token has a predictor only after a prefix
        pred = logp[:, p - 1 + start: p + ids.shape[1] - 1]
        out[:, start:] = pred.gather(-1, ids[:, start:].unsqueeze(-1)).squeeze(-1)
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor,
                feats: torch.Tensor | None = None, feat_lengths: torch.Tensor | None = None,
                wav: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood of the target tokens (prompt, prefix and padding excluded)."""
        prefix = self.audio_prefix(feats, feat_lengths, wav, lengths)
        logp = self.token_logprobs(prefix, input_ids, attention_mask)
        m = target_mask.to(logp.dtype)
        return -(logp * m).sum() / m.sum().clamp(min=1)

    # ---- scoring and constrained decoding --------------------------------------
    def score_candidates(self, prefix: torch.Tensor | None, contexts: list[list[int]],
                         candidates: list[list[int]]) -> torch.Tensor:
        """Log-probability of every candidate after every context: [B, C], summed over its tokens or their
        mean (``self.scoring``).

        Row b's context is ``[prefix_b | context_b]`` (sertk.models.scoring);
        without a prefix (the LM-prior pass) the context must be non-empty.
        """
        if prefix is None and any(len(c) == 0 for c in contexts):
            raise ValueError("score_candidates: a text-only pass needs a non-empty context (start with eos)")
        embed = self.lm.get_input_embeddings()
        device = embed.weight.device
        rows = []
        for i, ctx in enumerate(contexts):
            tok = embed(torch.tensor(ctx, dtype=torch.long, device=device))
            rows.append(tok if prefix is None else torch.cat([prefix[i].to(tok.dtype), tok], 0))
        return candidate_logprobs(self.lm, rows, candidates, self.scoring)

    def decode_view(self, prefix: torch.Tensor, contexts: list[list[int]], view: View,
                    tokenizer: TextTokenizer, prior_weight: float = 0.0, bos_context: list[int] | None = None
                    ) -> tuple[list[list[str]], list[torch.Tensor]]:
        """Constrained decoding: each slot picks its best value string given the slots before it.

        Returns the chosen values per utterance and the (prior-corrected) score
        matrix of every slot. ``bos_context`` (default [eos]) starts the text-only prior pass.
        """
        eos = tokenizer.eos_id
        ctx = [list(c) for c in contexts]
        prior_ctx = [list(bos_context or [eos]) + list(c) for c in contexts]
        chosen: list[list[str]] = [[] for _ in contexts]
        all_scores = []
        for k, slot in enumerate(view.slots):
            head = tokenizer.encode(slot.header)
            last = k == len(view.slots) - 1
            cands = [tokenizer.encode(" " + v) + ([eos] if last else []) for v in slot.values]
            ctx = [c + head for c in ctx]
            scores = self.score_candidates(prefix, ctx, cands)
            if prior_weight:
                prior_ctx = [c + head for c in prior_ctx]
                scores = scores - prior_weight * self.score_candidates(None, prior_ctx, cands)
            best = scores.argmax(1).tolist()
            for i, j in enumerate(best):
                chosen[i].append(slot.values[j])
                ctx[i] = ctx[i] + cands[j]
                if prior_weight:
                    prior_ctx[i] = prior_ctx[i] + cands[j]
            all_scores.append(scores)
        return chosen, all_scores

    @torch.no_grad()
    def generate_text(self, prefix: torch.Tensor, context: list[int], tokenizer: TextTokenizer,
                      max_new_tokens: int = 16) -> str:
        """Free-running greedy generation for one utterance (``transformers`` generate)."""
        ids = torch.tensor([context], dtype=torch.long, device=self.lm.device)
        emb = self._embed(prefix[:1], ids)
        out = self.lm.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long,
                                                                             device=emb.device),
                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id)
        return tokenizer.decode(out[0].tolist())


def encode_example(tokenizer: TextTokenizer, prompt_ids: list[int], view: View, values: list[str]
                   ) -> tuple[list[int], list[bool]]:
    """Token ids of ``[prompt | view text | eos]`` and which of them are targets.

    Headers and values are encoded piecewise, exactly as decode_view scores them.
    """
    ids, tgt = list(prompt_ids), [False] * len(prompt_ids)
    for slot, v in zip(view.slots, values):
        piece = tokenizer.encode(slot.header) + tokenizer.encode(" " + v)
        ids += piece
        tgt += [True] * len(piece)
    ids.append(tokenizer.eos_id)
    tgt.append(True)
    return ids, tgt
