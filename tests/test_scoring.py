"""Constrained scoring (sertk.models.scoring): the one "score C label strings after B contexts" pass."""
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from sertk.models.scoring import candidate_logprobs


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=64))
    return m.eval()


@pytest.fixture(scope="module")
def qwen():
    """A tiny Qwen2 (RoPE, grouped-query attention, untied head): the ICL recipes' LM family."""
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).eval()


def _hand(lm, ctx: torch.Tensor, cand: list[int]) -> float:
    """Sum of log p(cand[t] | ctx, cand[:t]), one unpadded sequence at a time."""
    emb = torch.cat([ctx, lm.get_input_embeddings()(torch.tensor(cand))], 0)[None]
    logp = torch.log_softmax(lm(inputs_embeds=emb).logits[0].float(), -1)
    n = ctx.shape[0]
    return float(sum(logp[n - 1 + t, tok] for t, tok in enumerate(cand)))


def _old_scorer(lm, contexts, candidates):
    """The scorer as it was before the KV-cache rewrite (B x C full rows, full-vocabulary log-softmax): reference."""
    embed = lm.get_input_embeddings()
    b, c = len(contexts), len(candidates)
    cand_emb = [embed(torch.tensor(x)) for x in candidates]
    width = max(x.shape[0] for x in contexts) + max(len(x) for x in candidates)
    emb = torch.zeros(b * c, width, cand_emb[0].shape[-1])
    att = torch.zeros(b * c, width, dtype=torch.long)
    for i, ctx in enumerate(contexts):
        for j, ce in enumerate(cand_emb):
            n = ctx.shape[0]
            emb[i * c + j, :n], emb[i * c + j, n:n + ce.shape[0]] = ctx, ce
            att[i * c + j, :n + ce.shape[0]] = 1
    logp = torch.log_softmax(lm(inputs_embeds=emb, attention_mask=att).logits.float(), -1)
    out = torch.zeros(b, c)
    for i, ctx in enumerate(contexts):
        for j, ids in enumerate(candidates):
            n = ctx.shape[0]
            out[i, j] = logp[i * c + j, n - 1:n - 1 + len(ids)].gather(-1, torch.tensor(ids)[:, None]).sum()
    return out


RAGGED = (1, 5, 3, 9)                       # context lengths: padding must not leak into any row
CANDS = [[3], [7, 8, 9], [12, 4], [3, 30]]  # multi-token, different lengths, two sharing a first token


@pytest.mark.parametrize("model", ["lm", "qwen"])
def test_scores_equal_hand_summed_token_logprobs_and_the_old_scorer(model, request):
    m = request.getfixturevalue(model)
    torch.manual_seed(1)
    contexts = [torch.randn(n, 16) for n in RAGGED]
    with torch.no_grad():
        got = candidate_logprobs(m, contexts, CANDS)
        old = _old_scorer(m, contexts, CANDS)
        for b, ctx in enumerate(contexts):
            for c, cand in enumerate(CANDS):
                assert float(got[b, c]) == pytest.approx(_hand(m, ctx, cand), abs=1e-4)
    assert torch.allclose(got, old, atol=1e-4)
    assert got.argmax(1).tolist() == old.argmax(1).tolist()  # the same decisions as before


def _count_rows(module, store: list):
    """Forward hook: how many positions a module's output covers (all dims but the last)."""
    return module.register_forward_hook(lambda _m, _a, out: store.append(math.prod(
        (out[0] if isinstance(out, tuple) else out).shape[:-1])))


@pytest.mark.parametrize("model", ["lm", "qwen"])
def test_the_context_runs_once_and_the_vocabulary_only_at_answer_positions(model, request):
    """Memory at real vocabularies: the [B*C, L, V] logits of a plain forward are never built."""
    m = request.getfixturevalue(model)
    contexts = [torch.randn(n, 16) for n in RAGGED]
    b, width, steps = len(RAGGED), max(RAGGED), sum(len(x) - 1 for x in CANDS)  # the tokens after each first
    head, first_layer = [], []
    hooks = [_count_rows(m.get_output_embeddings(), head),
             _count_rows(m.transformer.h[0] if model == "lm" else m.model.layers[0], first_layer)]
    try:
        with torch.no_grad():
            candidate_logprobs(m, contexts, CANDS)
    finally:
        for h in hooks:
            h.remove()
    assert sum(first_layer) == b * width + b * steps    # each context once, then the candidates' later tokens
    assert sum(head) == b + b * steps                   # logits: last context position + answer positions


def test_single_token_candidates_need_only_the_context_pass(lm):
    contexts = [torch.randn(n, 16) for n in RAGGED]
    calls, head = [], []
    hooks = [lm.register_forward_hook(lambda *_: calls.append(1)), _count_rows(lm.get_output_embeddings(), head)]
    try:
        with torch.no_grad():
            got = candidate_logprobs(lm, contexts, [[3], [5], [7]])
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 1 and head == [len(RAGGED)]  # one pass; the vocabulary once per context
    with torch.no_grad():
        assert torch.allclose(got, _old_scorer(lm, contexts, [[3], [5], [7]]), atol=1e-4)


def test_mean_scoring_is_the_per_token_average(lm):
    contexts = [torch.randn(n, 16) for n in RAGGED]
    with torch.no_grad():
        total = candidate_logprobs(lm, contexts, CANDS)
        mean = candidate_logprobs(lm, contexts, CANDS, scoring="mean")
    assert torch.allclose(mean, total / torch.tensor([float(len(x)) for x in CANDS]), atol=1e-6)


def _bigram_lm(table: torch.Tensor) -> GPT2LMHeadModel:
    """A GPT-2 whose next-token log-probabilities depend on the current token only: ``table[i]`` after token i.

    Blocks add nothing (zero output projections), positions add nothing, the
    embeddings are scaled one-hots, so the head sees LayerNorm(one-hot); an
    extra unused dimension makes every head row sum to zero, so LayerNorm's
    shift cancels and the logits after token i are exactly ``table[i]``.
    """
    v = table.shape[0]
    m = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=v + 1, n_layer=1, n_head=1, n_positions=16,
                                   tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for blk in m.transformer.h:
            blk.attn.c_proj.weight.zero_(), blk.attn.c_proj.bias.zero_()
            blk.mlp.c_proj.weight.zero_(), blk.mlp.c_proj.bias.zero_()
        m.transformer.wpe.weight.zero_()
        m.transformer.wte.weight.copy_(torch.eye(v, v + 1))
        normed = m.transformer.ln_f(torch.eye(v, v + 1)[0])  # LayerNorm(one-hot) = alpha e_i + const
        alpha = float(normed[0] - normed[1])
        head = torch.zeros(v, v + 1)
        head[:, :v] = table.T / alpha
        head[:, v] = -head[:, :v].sum(1)
        m.lm_head.weight.copy_(head)
    return m


def test_length_normalised_scoring_lets_a_confident_multi_token_label_win():
    """Summed log-probabilities favour short answers: "sad" (one token) beats "fr|ustrated" (two) although
    "ustrated" is near certain after "fr"; the mean per token picks "frustrated"."""
    eos, sad, fr, ustrated = 0, 1, 2, 3
    p = torch.full((4, 4), 0.02)
    p[eos] = torch.tensor([0.1, 0.5, 0.4, 0.0])    # after the context: sad .5, fr .4
    p[fr] = torch.tensor([0.0, 0.0, 0.05, 0.95])   # "fr" goes on as "ustrated"
    m = _bigram_lm(torch.log(p.clamp(min=1e-6)))
    context = [m.get_input_embeddings()(torch.tensor([eos]))]
    cands = [[sad], [fr, ustrated]]
    with torch.no_grad():
        assert _hand(m, context[0], [sad]) == pytest.approx(math.log(0.5), abs=1e-3)   # the rig holds
        assert _hand(m, context[0], [fr, ustrated]) == pytest.approx(math.log(0.4 * 0.95), abs=1e-3)
        assert candidate_logprobs(m, context, cands).argmax(1).tolist() == [0]                   # sum: sad
        assert candidate_logprobs(m, context, cands, scoring="mean").argmax(1).tolist() == [1]   # mean: frustrated


def test_an_unknown_scoring_is_named(lm):
    from sertk.models.scoring import SCORINGS, check_scoring

    assert SCORINGS[0] == "sum"  # the default
    with pytest.raises(ValueError, match="scoring must be one of sum, mean"):
        candidate_logprobs(lm, [torch.randn(2, 16)], [[1]], scoring="max")
    with pytest.raises(ValueError, match="selm.yaml: eval.scoring must be one of"):
        check_scoring("max", "selm.yaml: eval.scoring")


def test_selm_and_the_icl_speech_lm_decide_with_their_scoring_mode(lm):
    """``eval.scoring`` reaches the models' decisions: the task sets ``model.scoring`` (default sum)."""
    from sertk.models.icl import EpisodeTemplate, ICLSpeechLM
    from sertk.models.selm import SELM

    contexts = [torch.randn(n, 16) for n in RAGGED]
    prefix = {"length": 2, "proj_hidden": 8, "mapper_heads": 2, "dropout": 0.0}
    selm = SELM(lm, 8, prefix).eval()
    icl = ICLSpeechLM(lm, 8, EpisodeTemplate([], [], [], CANDS), prefix).eval()
    with torch.no_grad():
        total, mean = (candidate_logprobs(lm, contexts, CANDS, s) for s in ("sum", "mean"))
        text = [[1, 2], [5]]
        text_total, text_mean = (candidate_logprobs(lm, [lm.get_input_embeddings()(torch.tensor(t)) for t in text],
                                                    CANDS, s) for s in ("sum", "mean"))
        assert torch.allclose(icl.score(contexts), total, atol=1e-5)
        assert torch.allclose(selm.score_candidates(None, text, CANDS), text_total, atol=1e-5)
        icl.scoring = selm.scoring = "mean"
        assert torch.allclose(icl.score(contexts), mean, atol=1e-5)
        assert torch.allclose(selm.score_candidates(None, text, CANDS), text_mean, atol=1e-5)


@pytest.mark.parametrize("cfg", [
    {"task": "selm", "model": {"encoder": {"name_or_path": "x"}}, "eval": {"scoring": "max"}},
    {"task": "icl", "model": {"encoder": {"name_or_path": "x"}}, "eval": {"scoring": "max"}},
    {"task": "concept_alm", "model": {"name_or_path": "x"}, "eval": {"scoring": "max"}},
], ids=["selm", "icl", "concept_alm"])
def test_every_task_deciding_by_the_scorer_validates_eval_scoring(cfg):
    from sertk.tasks import check_config

    with pytest.raises(ValueError, match="eval.scoring must be one of sum, mean"):
        check_config(cfg, "x.yaml")
    check_config({**cfg, "eval": {"scoring": "mean"}}, "x.yaml")


def test_empty_inputs_are_named(lm):
    with pytest.raises(ValueError, match="empty token list"):
        candidate_logprobs(lm, [torch.randn(2, 16)], [[1], []])
    with pytest.raises(ValueError, match="context is empty"):
        candidate_logprobs(lm, [torch.randn(0, 16)], [[1]])
