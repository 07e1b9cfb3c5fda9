"""ICL speech-LM speed and memory at a given k: meta-training episodes/s and scoring episodes/s.

Runs the model on random cached-feature-shaped inputs (no data, no hub), sized
like mini_emo (zoo GPT-2: 64-dim, 2 layers, 128 positions) or like a real
recipe's LM architecture (``--lm qwen``: Qwen2.5-0.5B's shape, randomly
initialised, LoRA), so it runs offline::

    python benchmarks/bench_icl.py --k 16 --batch 16
    python benchmarks/bench_icl.py --k 16 --lm qwen --device cuda

Reports training episodes per second (forward + backward + step), scoring
episodes per second (every class string, one pass), and peak memory (CUDA:
max allocated; CPU: the process's peak RSS).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from sertk.models.causal_lm import build_causal_lm
from sertk.models.icl import EpisodeTemplate, ICLSpeechLM
from sertk.models.text_tokenizer import SentencePieceTokenizer

CLASSES = ["neutral", "happy", "angry", "sad"]
LMS = {
    "mini": ({"mode": "full", "config": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 128}},
             {"length": 2, "proj_hidden": 128, "mapper_layers": 1, "mapper_heads": 2, "frame_pool": 16}, 64),
    "qwen": ({"mode": "lora", "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]}},
             {"length": 4, "proj_hidden": 1024, "mapper_layers": 2, "mapper_heads": 8, "frame_pool": 4}, 768),
}


def _lm(kind: str, tok):
    spec, proj, feat_dim = LMS[kind]
    if kind == "qwen":  # Qwen2.5-0.5B's architecture, random weights (nothing is downloaded)
        from transformers import Qwen2Config, Qwen2ForCausalLM
        lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=max(tok.vocab_size, 256), hidden_size=896,
                                          intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                          num_key_value_heads=2, max_position_embeddings=4096))
        from peft import LoraConfig, inject_adapter_in_model
        lm = inject_adapter_in_model(LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]), lm)
        for n, p in lm.named_parameters():
            p.requires_grad_("lora_" in n)
    else:
        lm = build_causal_lm(spec, tok.vocab_size, tok.eos_id)
    return lm, proj, feat_dim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=200, help="encoder frames per utterance (20 ms: 4 s)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lm", choices=sorted(LMS), default="mini")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    tok = SentencePieceTokenizer.train(["say the emotion.", "\n"] + [" " + c for c in CLASSES], 48)
    lm, proj, feat_dim = _lm(args.lm, tok)
    torch.manual_seed(0)
    model = ICLSpeechLM(lm, feat_dim, EpisodeTemplate.build(tok, CLASSES, "say the emotion.", "", ";"), proj).to(dev)
    model.check_fits(args.k)
    n_utt = args.batch * (args.k + 1)
    feats = torch.randn(n_utt, args.frames, feat_dim, device=dev)
    lens = torch.full((n_utt,), args.frames, device=dev)
    eps = [list(range(b * (args.k + 1), (b + 1) * (args.k + 1))) for b in range(args.batch)]
    labels = [[i % len(CLASSES) for i in range(args.k + 1)] for _ in range(args.batch)]
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], 1e-4)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train_step():
        loss = model(feats, lens, eps, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def score_step():
        with torch.no_grad():
            model.score(model.episode_contexts(model.audio_embeds(feats, lens), eps, labels))

    out = {"k": args.k, "batch": args.batch, "frames": args.frames, "lm": args.lm, "device": str(dev),
           "threads": args.threads, "episode_tokens": model.template.length(args.k, model.prefixer.length)}
    for name, fn in (("train", train_step), ("score", score_step)):
        model.train(name == "train")
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        out[f"{name}_episodes_per_s"] = round(args.batch * args.steps / (time.perf_counter() - t), 2)
    out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else \
        round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
