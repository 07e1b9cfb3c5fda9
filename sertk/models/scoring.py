"""Constrained scoring: log p(candidate string | context) for C label strings after B contexts.

The one implementation of "score C label strings for B sequences in one pass"
that SELM, the ICL speech-LM and generative ALMs decide with. A context is any
sequence of input embeddings (audio prefix, interleaved enrolment pairs, an
ALM's merged audio+prompt), so the caller builds it and this module only
appends each candidate's token embeddings and sums their log-probabilities.
"""
from __future__ import annotations

import torch


def candidate_logprobs(lm, contexts: list[torch.Tensor], candidates: list[list[int]]) -> torch.Tensor:
    """Summed ``log p(candidate_c | context_b)`` for every pair: a [B, C] float32 tensor.

    ``lm`` is any causal LM that takes ``inputs_embeds`` and ``attention_mask``
    and returns ``.logits`` (a ``GPT2LMHeadModel``, an ALM's language model);
    ``contexts`` are B tensors [L_b, D] of input embeddings (L_b >= 1: the first
    candidate token needs a predictor); ``candidates`` are C non-empty token id
    lists. The B*C rows ``[context_b | candidate_c]`` are right-padded and run
    in one forward pass (causal attention: padding after a row cannot change it).
    """
    if not contexts or not candidates:
        raise ValueError("candidate_logprobs: needs at least one context and one candidate")
    if any(len(c) == 0 for c in candidates):
        raise ValueError("candidate_logprobs: a candidate is an empty token list")
    if any(ctx.shape[0] == 0 for ctx in contexts):
        raise ValueError("candidate_logprobs: a context is empty (start a text-only context with eos)")
    embed = lm.get_input_embeddings()
    device = embed.weight.device
    b, c = len(contexts), len(candidates)
    cand_ids = [torch.tensor(x, dtype=torch.long, device=device) for x in candidates]
    cand_emb = [embed(x) for x in cand_ids]
    dtype = cand_emb[0].dtype
    width = max(ctx.shape[0] for ctx in contexts) + max(len(x) for x in candidates)
    emb = torch.zeros(b * c, width, cand_emb[0].shape[-1], dtype=dtype, device=device)
    att = torch.zeros(b * c, width, dtype=torch.long, device=device)
    for i, ctx in enumerate(contexts):
        n = ctx.shape[0]
        for j, ce in enumerate(cand_emb):
            r = i * c + j
            emb[r, :n] = ctx.to(device=device, dtype=dtype)
            emb[r, n:n + ce.shape[0]] = ce
            att[r, :n + ce.shape[0]] = 1
    logp = torch.log_softmax(lm(inputs_embeds=emb, attention_mask=att).logits.float(), -1)
    out = torch.zeros(b * c, dtype=torch.float32, device=device)
    for i, ctx in enumerate(contexts):
        n = ctx.shape[0]
        for j, ids in enumerate(cand_ids):
            r = i * c + j
            pred = logp[r, n - 1:n - 1 + len(ids)]  # position t predicts token t + 1
            out[r] = pred.gather(-1, ids.unsqueeze(-1)).sum()
    return out.view(b, c)
