"""Issue 22, item 7: a bf16 checkpoint (Qwen2.5 loads so under transformers 5's dtype="auto") trains
float32 weights: LoRA adapters over the bf16 base, or a float32 copy in ``full`` mode."""
from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from sertk.models.causal_lm import build_causal_lm

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.fixture(scope="module")
def bf16_qwen(tmp_path_factory):
    """A tiny Qwen2 saved in bf16, as the hub's Qwen2.5-0.5B is."""
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    d = tmp_path_factory.mktemp("qwen_bf16")
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    return str(d)


def _step(lm, lr, steps=2):
    """``steps`` AdamW steps on a next-token loss; returns the trainable weights before."""
    trainable = {n: p for n, p in lm.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(trainable.values(), lr=lr, weight_decay=0.0)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        out = lm(input_ids=ids, labels=ids)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return before, out


def test_lora_adapters_train_in_float32_over_a_bf16_base(bf16_qwen):
    lm = build_causal_lm({"name_or_path": bf16_qwen, "mode": "lora", "lora": LORA})
    params = dict(lm.named_parameters())
    lora = {n: p for n, p in params.items() if "lora_" in n}
    base = {n: p for n, p in params.items() if "lora_" not in n}
    assert len(lora) == 2 * 4 * 2  # A and B of four projections in two layers
    assert all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in base.values())  # the base stays bf16
    base_before = {n: p.detach().clone() for n, p in base.items()}
    lr = 1e-5  # an update bf16 rounds away on weights of ~0.1-0.5 (its resolution there is ~1e-3)
    before, out = _step(lm, lr)
    assert out.logits.dtype == torch.bfloat16  # the adapters' output is cast back to the base's dtype
    for n, p in lora.items():
        assert p.dtype == torch.float32, n
    a_names = [n for n in lora if "lora_A" in n]  # A first gets a gradient on the second step (B starts at 0)
    changed = sum(int((lora[n] != before[n]).sum()) for n in a_names) / sum(lora[n].numel() for n in a_names)
    assert changed > 0.9  # in bf16 ~99% of these updates round back to the old value
    assert all(torch.equal(p, base_before[n]) for n, p in base.items())


def test_full_fine_tuning_trains_a_float32_copy_and_frozen_keeps_the_checkpoint_dtype(bf16_qwen):
    full = build_causal_lm({"name_or_path": bf16_qwen, "mode": "full"})
    assert all(p.dtype == torch.float32 and p.requires_grad for p in full.parameters())
    _step(full, 1e-3, steps=1)
    frozen = build_causal_lm({"name_or_path": bf16_qwen, "mode": "frozen"})
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen.parameters())


def test_icl_meta_trains_and_scores_on_a_bf16_base_without_autocast(bf16_qwen):
    """CPU (or amp: false) gives no autocast: the float32 projector must still feed a bf16 LM."""
    from sertk.models.icl import EpisodeTemplate, ICLSpeechLM

    class Ids:  # token ids of a made-up word tokenizer, enough for a template
        def encode(self, s):
            return [3 + (sum(map(ord, w)) % 90) for w in s.split()]
    lm = build_causal_lm({"name_or_path": bf16_qwen, "mode": "lora", "lora": LORA})
    model = ICLSpeechLM(lm, feat_dim=8, template=EpisodeTemplate.build(Ids(), ["angry", "sad"], separator="|"),
                        projector={"length": 2})
    feats = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    loss = model(feats, torch.tensor([5, 4, 3]), [[0, 1, 2]], [[0, 1, 0]])
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.prefixer.parameters())
    audio = model.audio_embeds(feats, torch.tensor([5, 4, 3]))
    scores = model.score(model.episode_contexts(audio.detach(), [[0, 1, 2]], [[0, 1, 0]]))
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()
