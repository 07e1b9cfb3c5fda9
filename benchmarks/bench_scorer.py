"""The shared scorer (sertk.models.scoring) at real vocabularies: peak memory and time, old vs new.

The old scorer ran B x C full rows ``[context | candidate]`` and log-softmaxed
the whole vocabulary at every position in float32; the new one runs each
context once (its KV cache shared by the candidates) and the vocabulary only
where a candidate token is predicted. Two shapes, random weights, reduced
layer count (nothing is downloaded)::

    python benchmarks/bench_scorer.py                  # CPU-sized: a few minutes
    python benchmarks/bench_scorer.py --case icl --contexts 32 --only new   # the recipe's batch, new scorer only
    python benchmarks/bench_scorer.py --case icl --contexts 32 --layers 4 --device cuda
    python benchmarks/bench_scorer.py --case alm --contexts 8 --hidden 4096 --layers 2 --device cuda --dtype bfloat16

* ``icl``: Qwen2.5-0.5B (vocabulary 151,936, hidden 896, GQA 14/2 heads,
  tied head), RAVDESS's 8 classes (1-2 tokens), ~165-position episodes.
* ``alm``: Qwen2-Audio-7B's language model (vocabulary 156,032, hidden 4096,
  32 heads, untied head), 4 answers of 2-3 tokens, ~850-position prompts.
  ``--hidden`` shrinks it for a CPU run: the old scorer's extra memory is its
  ``[B*C, L, V]`` logits, which do not depend on the hidden size.

Every (case, scorer) runs in a fresh subprocess. Peak memory: CUDA's max
allocated over the weights; on the CPU the process's resident high-water mark
(VmHWM, reset just before scoring through /proc/self/clear_refs) over its
resident size then. Time: the median of ``--reps`` calls after one warm-up.
Both scorers' [B, C] scores are compared (max abs difference).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

CASES = {
    # vocab, hidden, intermediate, heads, kv heads, tied, classes' token counts, context length
    "icl": dict(vocab=151936, hidden=896, inter=4864, heads=14, kv=2, tied=True,
                cands=[1, 1, 1, 1, 1, 2, 2, 2], ctx=165, contexts=2),
    "alm": dict(vocab=156032, hidden=4096, inter=11008, heads=32, kv=32, tied=False,
                cands=[2, 2, 3, 2], ctx=850, contexts=1),
}
REAL_B = {"icl": 32, "alm": 8}  # ICL scoring batch (eval.batch_size), concept_alm data.batch_size
CPU_HIDDEN = {"alm": 1024}  # the default --hidden on a CPU: a 7B-wide head over 3,400 rows takes minutes there


def _shape(args) -> dict:
    """The case's model shape, with --hidden (heads of 128 dims, MLP and kv heads scaled alike)."""
    case = dict(CASES[args.case])
    hidden = args.hidden or (CPU_HIDDEN.get(args.case, 0) if args.device == "cpu" else 0)
    if hidden and hidden != case["hidden"]:
        heads = max(1, hidden // 128)
        case.update(inter=case["inter"] * hidden // case["hidden"], heads=heads,
                    kv=max(1, heads * case["kv"] // case["heads"]), hidden=hidden)
    return case


def old_scorer(lm, contexts, candidates):
    """The scorer before the KV-cache rewrite: B x C rows, full-vocabulary float32 log-softmax (reference)."""
    embed = lm.get_input_embeddings()
    device, dtype = embed.weight.device, embed.weight.dtype
    b, c = len(contexts), len(candidates)
    cand_ids = [torch.tensor(x, device=device) for x in candidates]
    cand_emb = [embed(x) for x in cand_ids]
    width = max(x.shape[0] for x in contexts) + max(len(x) for x in candidates)
    emb = torch.zeros(b * c, width, cand_emb[0].shape[-1], dtype=dtype, device=device)
    att = torch.zeros(b * c, width, dtype=torch.long, device=device)
    for i, ctx in enumerate(contexts):
        n = ctx.shape[0]
        for j, ce in enumerate(cand_emb):
            emb[i * c + j, :n], emb[i * c + j, n:n + ce.shape[0]] = ctx, ce
            att[i * c + j, :n + ce.shape[0]] = 1
    logp = torch.log_softmax(lm(inputs_embeds=emb, attention_mask=att).logits.float(), -1)
    out = torch.zeros(b * c, device=device)
    for i, ctx in enumerate(contexts):
        n = ctx.shape[0]
        for j, ids in enumerate(cand_ids):
            out[i * c + j] = logp[i * c + j, n - 1:n - 1 + len(ids)].gather(-1, ids[:, None]).sum()
    return out.view(b, c)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sertk.models.scoring import candidate_logprobs

    torch.set_num_threads(args.threads)
    case = _shape(args)
    hidden = case["hidden"]
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(dev):
        lm = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=case["vocab"], hidden_size=hidden, intermediate_size=case["inter"],
            num_hidden_layers=args.layers, num_attention_heads=case["heads"], num_key_value_heads=case["kv"],
            tie_word_embeddings=case["tied"], max_position_embeddings=4096)).to(dtype).eval()
    b = args.contexts or case["contexts"]
    g = torch.Generator().manual_seed(1)
    contexts = [torch.randn(case["ctx"] - 3 * i, hidden, generator=g).mul(0.02).to(dev, dtype) for i in range(b)]
    cands = [torch.randint(0, case["vocab"], (n,), generator=g).tolist() for n in case["cands"]]
    fn = old_scorer if args.worker == "old" else candidate_logprobs
    cuda = dev.type == "cuda"
    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated() / 2 ** 20
            torch.cuda.reset_peak_memory_stats()
        else:
            exact = _reset_peak()  # False: VmHWM is the lifetime peak, an upper bound
            base = _rss_mb("VmRSS")
        scores = fn(lm, contexts, cands)
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            peak = _rss_mb("VmHWM")  # since the reset (else the process's lifetime peak: an upper bound)
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn(lm, contexts, cands)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return {"scorer": args.worker, "peak_exact": cuda or exact, "case": args.case, "contexts": b, "classes": len(cands),
            "ctx_len": case["ctx"], "vocab": case["vocab"], "hidden": hidden, "layers": args.layers,
            "dtype": args.dtype, "device": args.device, "weights_mb": round(base, 1),
            "peak_over_weights_mb": round(peak - base, 1), "time_s": round(statistics.median(times), 3),
            "scores": scores.float().cpu().tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=[*CASES, "both"], default="both")
    p.add_argument("--contexts", type=int, default=0, help="B (default: icl 2, alm 1 on the CPU)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=0, help="change the hidden size (alm: 1024 on a CPU by default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=["old", "new"], help="skip the other scorer (e.g. old runs out of memory)")
    p.add_argument("--worker", choices=["old", "new"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = []
    for case in (list(CASES) if args.case == "both" else [args.case]):
        got = {}
        for scorer in [s for s in ("old", "new") if args.only in (None, s)]:
            cmd = [sys.executable, __file__, "--worker", scorer, "--case", case] + [
                a for k, v in vars(args).items() if k not in ("case", "worker", "only") and v not in (None, 0)
                for a in (f"--{k}", str(v))]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if r.returncode:
                print(f"{case} {scorer}: failed (rc {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
                continue
            got[scorer] = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(got[scorer])
            g = got[scorer]
            print(f"{case:4s} {scorer:3s}: B={g['contexts']} C={g['classes']} L~{g['ctx_len']} V={g['vocab']} "
                  f"hidden={g['hidden']} layers={g['layers']} {g['dtype']} {g['device']}: "
                  f"peak over weights {g['peak_over_weights_mb']:.0f} MB"
                  f"{'' if g['peak_exact'] else ' (upper bound)'}, {g['time_s']:.3f} s/call", flush=True)
        if "old" in got:  # the old scorer's memory is linear in B: what the recipe's batch would need
            g, real = got["old"], REAL_B[case]
            full = real * g["classes"] * (g["ctx_len"] + 3) * g["vocab"] * 4 / 2 ** 30
            est = g["peak_over_weights_mb"] * real / g["contexts"] / 1024
            print(f"{case:4s} old at the recipe's B={real}: ~{est:.0f} GiB over the weights (linear in B; its "
                  f"float32 [B*C, L, V] log-softmax alone is {full:.0f} GiB)")
        if len(got) == 2:
            diff = (torch.tensor(got["old"]["scores"]) - torch.tensor(got["new"]["scores"])).abs().max()
            same = (torch.tensor(got["old"]["scores"]).argmax(1) == torch.tensor(got["new"]["scores"]).argmax(1))
            print(f"{case:4s} old vs new: max |score diff| {float(diff):.2e}, same decisions {bool(same.all())}; "
                  f"memory x{got['old']['peak_over_weights_mb'] / max(got['new']['peak_over_weights_mb'], 1):.0f} "
                  f"less, time x{got['old']['time_s'] / max(got['new']['time_s'], 1e-6):.1f} faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
