"""The causal LM that SELM and the ICL speech-LM decode with: any hub/local LM, frozen, LoRA or full."""
from __future__ import annotations

from torch import nn

LM_MODES = ("frozen", "full", "lora")
# LoRA targets when the config names none: GPT-2's fused attention, else the usual q/v projections
DEFAULT_LORA_TARGETS = {"gpt2": ["c_attn"]}


def build_causal_lm(spec: dict, vocab_size: int | None = None, eos_id: int | None = None) -> nn.Module:
    """Any hub/local causal LM (``name_or_path``) or a small local GPT-2 (``config``), frozen/LoRA/full.

    ``AutoModelForCausalLM`` loads GPT-2 (SELM) as it loads the ICL paper's
    Qwen2.5 or Llama; remote code is never run. LoRA targets default per model
    type (GPT-2's fused ``c_attn``, else ``q_proj``/``v_proj``).

    A checkpoint loads in its own dtype (transformers' ``dtype="auto"``: Qwen2.5
    is bf16), but every trainable weight is float32, so the optimizer never
    rounds its updates to bf16: LoRA adapters over a bf16 base are upcast
    (peft's ``cast_adapter_dtype``; its layers cast their input to the adapter
    and their output back), and ``full`` trains a float32 copy.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if spec.get("name_or_path"):
        lm = AutoModelForCausalLM.from_pretrained(spec["name_or_path"], revision=spec.get("revision"),
                                                  trust_remote_code=False)
    else:
        if vocab_size is None:
            raise ValueError("a local LM config needs the tokenizer's vocab_size")
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                                        **spec.get("config", {})))
    mode = spec.get("mode", "full")
    if mode not in LM_MODES:
        raise ValueError(f"lm.mode must be one of {', '.join(LM_MODES)}, got {mode!r}")
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model
        lcfg = dict(spec.get("lora") or {})
        gpt2 = lm.config.model_type == "gpt2"
        targets = lcfg.get("target_modules") or DEFAULT_LORA_TARGETS.get(lm.config.model_type, ["q_proj", "v_proj"])
        lm = inject_adapter_in_model(LoraConfig(
            r=int(lcfg.get("r", 8)), lora_alpha=int(lcfg.get("alpha", 16)),
            lora_dropout=float(lcfg.get("dropout", 0.0)), target_modules=list(targets),
            fan_in_fan_out=gpt2), lm)
        from peft.tuners.tuners_utils import cast_adapter_dtype
        cast_adapter_dtype(lm, "default")  # peft creates the adapters in the base's dtype
    elif mode == "full":
        lm = lm.float()
    for name, p in lm.named_parameters():
        p.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))
    return lm


def max_positions(lm: nn.Module) -> int | None:
    cfg = lm.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
