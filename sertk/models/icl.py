"""ICL speech-LM: personalised SER from a few enrolment pairs placed in the LM's context.

Ihori et al. (arXiv 2509.08344): frozen speech encoder (its cached layer
features) -> projector (SELM's :class:`~sertk.models.selm.PrefixMapper`: each
utterance becomes ``length`` vectors in the LM's embedding space) -> a causal
LM (any ``AutoModelForCausalLM``; frozen, LoRA or full). An episode is one
interleaved sequence::

    [instruction] [audio_1][prefix][label_1][sep] ... [audio_k][prefix][label_k][sep] [audio_q][prefix]

and the model predicts the query's label text after it. Meta-training puts
the loss on the query's label tokens only (MetaICL), so the enrolment pairs
are pure context; at test time a new speaker's pairs personalise the
decision without any gradient step. Decisions score every class string with
the shared one-pass scorer (:func:`sertk.models.scoring.candidate_logprobs`);
with k = 0 the sequence is ``[instruction][audio_q][prefix]``, the plain
speech-LM decision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sertk.models.causal_lm import max_positions
from sertk.models.encoder import lengths_to_mask
from sertk.models.scoring import DEFAULT_SCORING, candidate_logprobs
from sertk.models.selm import PrefixMapper
from sertk.models.text_tokenizer import TextTokenizer


@dataclass
class EpisodeTemplate:
    """The token ids around the audio: instruction, text before each label, separator, class strings."""

    instruction: list[int]
    label_prefix: list[int]
    separator: list[int]
    class_ids: list[list[int]]  # tokens of " <word>" per class (LabelMap.words, not codes), label-map order

    @classmethod
    def build(cls, tokenizer: TextTokenizer, classes: list[str], instruction: str = "", label_prefix: str = "",
              separator: str = "\n") -> "EpisodeTemplate":
        ids = [tokenizer.encode(" " + c) for c in classes]
        if any(not x for x in ids):
            raise ValueError(f"a class string encodes to no token: {classes}")
        if len({tuple(x) for x in ids}) != len(ids):
            raise ValueError(f"two classes encode to the same tokens: {classes}")
        enc = (lambda s: tokenizer.encode(s) if s else [])
        return cls(enc(instruction), enc(label_prefix), enc(separator), ids)

    def length(self, k: int, audio_len: int) -> int:
        """Tokens of a k-shot episode, query label included (the longest class)."""
        label = max(len(x) for x in self.class_ids)
        pair = audio_len + len(self.label_prefix) + label + len(self.separator)
        return len(self.instruction) + k * pair + audio_len + len(self.label_prefix) + label


def pool_frames(feats: torch.Tensor, lengths: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average non-overlapping windows of ``stride`` valid frames: a cheaper projector input."""
    if stride <= 1:
        return feats, lengths
    n, t, d = feats.shape
    pad = (-t) % stride
    mask = lengths_to_mask(lengths, t).to(feats.dtype).unsqueeze(-1)
    x = nn.functional.pad(feats * mask, (0, 0, 0, pad)).view(n, -1, stride, d).sum(2)
    w = nn.functional.pad(mask, (0, 0, 0, pad)).view(n, -1, stride, 1).sum(2)
    return x / w.clamp(min=1), (lengths + stride - 1) // stride


class ICLSpeechLM(nn.Module):
    """Projector + causal LM over cached encoder features; episodes in, label scores or loss out."""

    scoring = DEFAULT_SCORING  # how class strings' token log-probs combine (eval.scoring; set by the task)

    def __init__(self, lm: nn.Module, feat_dim: int, template: EpisodeTemplate, projector: dict | None = None):
        super().__init__()
        projector = dict(projector or {})
        self.frame_pool = int(projector.pop("frame_pool", 1))
        self.lm = lm
        self.lm_frozen = not any(p.requires_grad for p in lm.parameters())
        self.template = template
        self.prefixer = PrefixMapper(feat_dim, lm.get_input_embeddings().weight.shape[1], **projector)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.lm_frozen:
            self.lm.eval()
        return self

    def check_fits(self, k: int) -> None:
        """A k-shot episode must fit the LM's positions (mini_emo's zoo GPT-2 has 128)."""
        need, have = self.template.length(k, self.prefixer.length), max_positions(self.lm)
        if have and need > have:
            raise ValueError(f"a {k}-shot episode takes {need} positions but the LM has {have}: lower the "
                             "largest k, model.projector.length, or shorten the instruction/label_prefix/separator")

    # ---- building episodes -------------------------------------------------------
    def audio_embeds(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> torch.Tensor:
        """[N, length, D] LM-space vectors of N utterances' encoder features."""
        feats, feat_lengths = pool_frames(feats, feat_lengths.to(feats.device), self.frame_pool)
        return self.prefixer(feats, feat_lengths)

    def _tokens(self, ids: list[int]) -> torch.Tensor:
        emb = self.lm.get_input_embeddings()
        return emb(torch.tensor(ids, dtype=torch.long, device=emb.weight.device))

    def enrolment(self, enrol_audio: torch.Tensor, enrol_labels: list[int]) -> list[torch.Tensor]:
        """The pieces of ``[instruction][audio_1][prefix][label_1][sep]...``, shared by every query of a draw.

        ``enrol_audio`` [k, length, D] comes from :meth:`audio_embeds`; ``enrol_labels`` are class indices.
        """
        t = self.template
        parts = [self._tokens(t.instruction)] if t.instruction else []
        for a, y in zip(enrol_audio, enrol_labels):
            parts += [a, self._tokens(t.label_prefix + t.class_ids[y] + t.separator)]
        return parts

    def context(self, enrol_audio: torch.Tensor, enrol_labels: list[int], query_audio: torch.Tensor,
                enrolment: list[torch.Tensor] | None = None) -> torch.Tensor:
        """[T, D] input embeddings of one episode up to the query's label (``enrolment``: precomputed pieces)."""
        parts = list(self.enrolment(enrol_audio, enrol_labels) if enrolment is None else enrolment)
        parts.append(query_audio)
        if self.template.label_prefix:
            parts.append(self._tokens(self.template.label_prefix))
        dtype = query_audio.dtype
        return torch.cat([p.to(dtype) for p in parts], 0)

    def episode_contexts(self, audio: torch.Tensor, episodes: list[list[int]], labels: list[list[int]]
                         ) -> list[torch.Tensor]:
        """Contexts of episodes given as rows of ``audio``: ``episodes[b]`` = enrolment rows then the query row."""
        return [self.context(audio[rows[:-1]], ys[:len(rows) - 1], audio[rows[-1]])
                for rows, ys in zip(episodes, labels)]

    # ---- training -----------------------------------------------------------------
    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor, episodes: list[list[int]],
                labels: list[list[int]]) -> torch.Tensor:
        """Mean over episodes of the per-token NLL of the query's label: the only tokens with a loss.

        ``feats`` [U, T, F] are the batch's distinct utterances; ``episodes[b]``
        indexes them (enrolment, then query) and ``labels[b]`` are their class
        indices, the query's last.
        """
        audio = self.audio_embeds(feats, feat_lengths)
        ctxs = self.episode_contexts(audio, episodes, labels)
        targets = [self.template.class_ids[ys[-1]] for ys in labels]
        width = max(c.shape[0] + len(y) for c, y in zip(ctxs, targets))
        # the LM's own dtype (a bf16 Qwen base under LoRA): the float32 projector's vectors are cast on copy
        dtype = self.lm.get_input_embeddings().weight.dtype
        emb = torch.zeros(len(ctxs), width, audio.shape[-1], dtype=dtype, device=audio.device)
        att = torch.zeros(len(ctxs), width, dtype=torch.long, device=audio.device)
        tgt = torch.full((len(ctxs), width), -100, dtype=torch.long, device=audio.device)
        for b, (c, y) in enumerate(zip(ctxs, targets)):
            n = c.shape[0]
            emb[b, :n] = c
            emb[b, n:n + len(y)] = self._tokens(y).to(emb.dtype)
            att[b, :n + len(y)] = 1
            tgt[b, n - 1:n - 1 + len(y)] = torch.tensor(y, device=audio.device)  # position t predicts t + 1
        logp = torch.log_softmax(self.lm(inputs_embeds=emb, attention_mask=att).logits.float(), -1)
        mask = tgt >= 0
        tok = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        per_episode = tok.sum(1) / mask.sum(1)
        return -per_episode.mean()

    # ---- decisions ----------------------------------------------------------------
    def score(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        """[B, C] log-probability of every class string after every episode context (``self.scoring``)."""
        return candidate_logprobs(self.lm, contexts, self.template.class_ids, self.scoring)
