"""Constrained scoring: log p(candidate string | context) for C label strings after B contexts.

The one implementation of "score C label strings for B sequences" that SELM,
the ICL speech-LM and generative ALMs decide with. A context is any sequence
of input embeddings (audio prefix, interleaved enrolment pairs, an ALM's
merged audio+prompt), so the caller builds it and this module only appends
each candidate's tokens and combines their log-probabilities.

Memory is what limits it at real vocabularies (Qwen: 151,936 tokens), so the
contexts run once, and the vocabulary is log-softmaxed only where a candidate
token is predicted: at each context's last position (from the context pass)
and at the candidate's own positions (from a pass per candidate over the
contexts' KV cache, transformers' ``DynamicCache``, cut back after it). The
``[B*C, L, V]`` float32 log-softmax of one plain forward over every pair is
never built, nor is the cache repeated C times (a 7B ALM without grouped-query
attention holds ~0.5 MB of cache per token).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

# how a candidate's token log-probabilities combine into its score:
# sum  - log p(candidate | context), the sequence probability (the default; the published methods decide by it)
# mean - that over the candidate's token count, which removes the preference for short (few-token) answers
SCORINGS = ("sum", "mean")
DEFAULT_SCORING = "sum"


def check_scoring(value, where: str) -> str:
    """``value`` if it is a known scoring, else an error naming ``where`` (a config key) and the choices."""
    if value not in SCORINGS:
        raise ValueError(f"{where} must be one of {', '.join(SCORINGS)}, got {value!r}")
    return value


@contextmanager
def _head_on(lm, select: Callable[[torch.Tensor], torch.Tensor]):
    """Run ``lm``'s output head on ``select(hidden)`` only: the model's own forward, minus the logits nobody reads.

    A forward pre-hook on the output embeddings, so it works for any wrapper
    (GPT-2, Qwen2, an ALM's ``ForConditionalGeneration``, LoRA-injected) whether
    or not its forward knows ``logits_to_keep``.
    """
    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"candidate_logprobs: {type(lm).__name__} has no output embeddings (not a causal LM?)")
    handle = head.register_forward_pre_hook(lambda _module, args: (select(args[0]),) + tuple(args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _gather_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., target] in float32: the target's logit minus the logsumexp, no log-softmax tensor."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def candidate_logprobs(lm, contexts: list[torch.Tensor], candidates: list[list[int]],
                       scoring: str = DEFAULT_SCORING) -> torch.Tensor:
    """``log p(candidate_c | context_b)`` for every pair: a [B, C] float32 tensor.

    ``lm`` is any causal LM that takes ``inputs_embeds``, ``attention_mask``,
    ``position_ids`` and ``past_key_values`` and returns ``.logits`` (a
    ``GPT2LMHeadModel``, an ALM's model); ``contexts`` are B tensors [L_b, D]
    of input embeddings (L_b >= 1: the first candidate token needs a
    predictor); ``candidates`` are C non-empty token id lists. ``scoring``:
    ``sum`` of the candidate's token log-probabilities (default) or their
    ``mean`` (length-normalised), see :data:`SCORINGS`.

    The same numbers as one unpadded forward per pair: the contexts,
    right-padded (positions given explicitly, padding masked), give the first
    candidate token's distribution at each context's last position and a KV
    cache; each candidate of more than one token then runs its tokens but the
    last over that cache, at positions ``L_b + t``, for all B contexts at once.
    """
    check_scoring(scoring, "candidate_logprobs: scoring")
    if not contexts or not candidates:
        raise ValueError("candidate_logprobs: needs at least one context and one candidate")
    if any(len(c) == 0 for c in candidates):
        raise ValueError("candidate_logprobs: a candidate is an empty token list")
    if any(ctx.shape[0] == 0 for ctx in contexts):
        raise ValueError("candidate_logprobs: a context is empty (start a text-only context with eos)")
    embed = lm.get_input_embeddings()
    device = embed.weight.device
    dtype = embed.weight.dtype
    b = len(contexts)
    lens = torch.tensor([ctx.shape[0] for ctx in contexts], device=device)
    width = int(lens.max())
    emb = torch.zeros(b, width, contexts[0].shape[-1], dtype=dtype, device=device)
    att = torch.zeros(b, width, dtype=torch.long, device=device)
    for i, ctx in enumerate(contexts):
        emb[i, :ctx.shape[0]] = ctx.to(device=device, dtype=dtype)
        att[i, :ctx.shape[0]] = 1
    pos = torch.arange(width, device=device).expand(b, -1)
    rows = torch.arange(b, device=device)
    last = (lens - 1).unsqueeze(1)  # the last context position predicts each candidate's first token
    with _head_on(lm, lambda h: h[rows.to(h.device)[:, None], last.to(h.device)]):
        out = lm(inputs_embeds=emb, attention_mask=att, position_ids=pos, use_cache=True)
    del emb
    if out.past_key_values is None:
        raise ValueError("candidate_logprobs: the LM returned no KV cache (use_cache is off in its config)")
    first = torch.tensor([x[0] for x in candidates], device=device).expand(b, -1)
    score = torch.log_softmax(out.logits[:, 0].to(device).float(), -1).gather(1, first)  # [B, C]
    cache, rest = out.past_key_values, torch.zeros_like(score)
    del out
    for j, ids in enumerate(candidates):  # its tokens 2.. after the cached contexts, then the cache is cut back
        n = len(ids) - 1
        if not n:
            continue
        inp = embed(torch.tensor(ids[:-1], device=device)).repeat(b, 1, 1)
        mask = torch.cat([att, att.new_ones(b, n)], 1)
        step_pos = lens[:, None] + torch.arange(n, device=device)
        logits = lm(inputs_embeds=inp, attention_mask=mask, position_ids=step_pos, past_key_values=cache,
                    use_cache=True).logits
        cache.crop(-n)  # negative: remove that many positions (the max_length and tokens_to_remove APIs alike)
        rest[:, j] = _gather_logp(logits.to(device), torch.tensor(ids[1:], device=device).expand(b, -1)).sum(1)
    score = score + rest
    if scoring == "mean":
        score = score / torch.tensor([len(x) for x in candidates], dtype=score.dtype, device=device)
    return score
