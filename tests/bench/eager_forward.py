#!/usr/bin/env python3
"""The PyTorch eager reference of tests/bench/job_bench.sh: a Mixtral forward written the way
Hugging Face's eager modeling code runs it, timed over the same windows as `moec eval`.

One window at a time (batch 1, as perplexity scripts run the GPTQ protocol), fp32 weights loaded
once, attention through torch's scaled_dot_product_attention (transformers' default), and the
sparse MoE block as MixtralSparseMoeBlock does it: a loop over experts, each on the rows routed
to it, summed with index_add_. Weights are read with the oracle's safetensors reader
(tests/oracle), so the script needs only torch and numpy.

Tokens are the text's bytes (ids 0-255 are the byte tokens of moec's tiny BPE tokenizer, whose
few merges `moec eval` applies): the same windows' shape and nearly the same routing; the script
reports throughput, not perplexity.

    .venv/bin/python3 tests/bench/eager_forward.py --model DIR --text FILE --seqlen 512 \\
        --windows 48 [--dtype fp32|bf16] [--threads N] [--gemm]
    .venv/bin/python3 tests/bench/eager_forward.py --windows 0   # the GEMM rates only

Weights and activations in --dtype (fp32 default; bf16 as `moec eval --dtype bf16`). Prints one
JSON object: seconds (forward only), tokens_per_second, windows, seqlen, dtype, threads,
load_seconds, and with --gemm the GEMM rates of torch.mm on 4096^2 in fp32 and bf16 (best of 3,
GFLOP/s).
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

_ORACLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle")
sys.path.insert(0, _ORACLE)
sys.dont_write_bytecode = True

from oracle_checkpoint import load_checkpoint  # noqa: E402
from oracle_config import load_config  # noqa: E402
from oracle_forward import apply_rope, rms_norm, rope_cos_sin  # noqa: E402


def load_weights(model_dir, dtype):
    raw = load_checkpoint(model_dir)
    return {k: torch.as_tensor(v).to(dtype).contiguous() for k, v in raw.items()}


def attention(spec, W, p, x, cos, sin):
    B, S, _ = x.shape
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    q = F.linear(x, W[p + "q_proj.weight"]).view(B, S, nh, hd).transpose(1, 2)
    k = F.linear(x, W[p + "k_proj.weight"]).view(B, S, nkv, hd).transpose(1, 2)
    v = F.linear(x, W[p + "v_proj.weight"]).view(B, S, nkv, hd).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.linear(o.transpose(1, 2).reshape(B, S, nh * hd), W[p + "o_proj.weight"])


def sparse_moe(spec, W, p, x):
    B, S, H = x.shape
    flat = x.reshape(-1, H)
    logits = F.linear(flat, W[p + "gate.weight"])
    probs = torch.softmax(logits, dim=-1)
    weights, experts = torch.topk(probs, spec.top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(flat)
    mask = F.one_hot(experts, num_classes=logits.shape[-1]).permute(2, 1, 0)
    for e in range(logits.shape[-1]):
        slot, rows = torch.where(mask[e])
        if rows.numel() == 0:
            continue
        ep = p + "experts.%d." % e
        xe = flat[rows]
        y = F.linear(F.silu(F.linear(xe, W[ep + "w1.weight"])) * F.linear(xe, W[ep + "w3.weight"]),
                     W[ep + "w2.weight"])
        out.index_add_(0, rows, y * weights[rows, slot, None])
    return out.view(B, S, H)


def forward(spec, W, tokens, cos, sin):
    eps = spec.rms_norm_eps
    h = W["model.embed_tokens.weight"][tokens]
    for layer in range(spec.num_layers):
        p = "model.layers.%d." % layer
        h = h + attention(spec, W, p + "self_attn.", rms_norm(h, W[p + "input_layernorm.weight"], eps),
                          cos, sin)
        x = rms_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        h = h + sparse_moe(spec, W, p + "block_sparse_moe.", x)
    h = rms_norm(h, W["model.norm.weight"], eps)
    return F.linear(h, W["lm_head.weight"])


def gemm_rate(dtype):
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096 ** 3 / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--text")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--gemm", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.windows == 0:  # the GEMM rates alone
        print(json.dumps(dict(gemm_gflops=gemm_rate(torch.float32),
                              gemm_bf16_gflops=gemm_rate(torch.bfloat16))))
        return
    if not a.model or not a.text:
        sys.exit("eager_forward.py: --model and --text are needed unless --windows 0")
    spec = load_config(a.model)
    if spec.model_type != "mixtral":
        sys.exit("eager_forward.py: only mixtral models (got %s)" % spec.model_type)
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    W = load_weights(a.model, dtype)
    load_s = time.perf_counter() - t0
    data = open(a.text, "rb").read()
    need = a.windows * a.seqlen
    if len(data) < need:
        sys.exit("eager_forward.py: %s has %d bytes, %d windows of %d need %d"
                 % (a.text, len(data), a.windows, a.seqlen, need))
    ids = torch.tensor(list(data[:need]), dtype=torch.long).view(a.windows, a.seqlen)
    cos, sin = rope_cos_sin(a.seqlen, spec.head_dim, spec.rope_theta, torch.float32)
    cos, sin = cos.to(dtype), sin.to(dtype)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for w in range(a.windows):
            forward(spec, W, ids[w:w + 1], cos, sin)
        seconds = time.perf_counter() - t0
    out = dict(seconds=seconds, tokens_per_second=need / seconds, windows=a.windows, dtype=a.dtype,
               seqlen=a.seqlen, threads=torch.get_num_threads(), load_seconds=load_s)
    if a.gemm:
        out["gemm_gflops"] = gemm_rate(torch.float32)
        out["gemm_bf16_gflops"] = gemm_rate(torch.bfloat16)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
