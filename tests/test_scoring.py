"""Constrained scoring (sertk.models.scoring): the one "score C label strings after B contexts" pass."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sertk.models.scoring import candidate_logprobs


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=64))
    return m.eval()


def _hand(lm, ctx: torch.Tensor, cand: list[int]) -> float:
    """Sum of log p(cand[t] | ctx, cand[:t]), one unpadded sequence at a time."""
    emb = torch.cat([ctx, lm.get_input_embeddings()(torch.tensor(cand))], 0)[None]
    logp = torch.log_softmax(lm(inputs_embeds=emb).logits[0].float(), -1)
    n = ctx.shape[0]
    return float(sum(logp[n - 1 + t, tok] for t, tok in enumerate(cand)))


def test_scores_equal_hand_summed_token_logprobs_for_ragged_contexts(lm):
    torch.manual_seed(1)
    contexts = [torch.randn(n, 16) for n in (1, 5, 3)]          # different lengths: padding must not leak
    candidates = [[3], [7, 8, 9], [12, 4]]                      # different lengths too
    with torch.no_grad():
        got = candidate_logprobs(lm, contexts, candidates)
        for b, ctx in enumerate(contexts):
            for c, cand in enumerate(candidates):
                assert float(got[b, c]) == pytest.approx(_hand(lm, ctx, cand), abs=1e-4)


def test_empty_inputs_are_named(lm):
    with pytest.raises(ValueError, match="empty token list"):
        candidate_logprobs(lm, [torch.randn(2, 16)], [[1], []])
    with pytest.raises(ValueError, match="context is empty"):
        candidate_logprobs(lm, [torch.randn(0, 16)], [[1]])
