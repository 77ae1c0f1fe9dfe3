"""Tiny random checkpoints for self_check.py: configs of the five architectures, the tensor
names and shapes of a checkpoint (written from docs/formats/model_config.md, independently of
the oracle), random weights, tokens, and a helper that runs the oracle in memory."""

import math

import torch

import hf_reference as ref

F64 = torch.float64

ARCHS = ["mixtral", "deepseek", "qwen2_moe", "olmoe", "qwen3_moe"]


def make_config(model_type, layers=2, experts=4, top_k=2, hidden=32, heads=4, kv_heads=2,
                vocab=61, **extra):
    c = dict(model_type=model_type, hidden_size=hidden, intermediate_size=40,
             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
             vocab_size=vocab, num_experts_per_tok=top_k, rms_norm_eps=1e-5, rope_theta=500.0)
    key = {"mixtral": "num_local_experts", "deepseek": "n_routed_experts"}.get(model_type, "num_experts")
    c[key] = experts
    if model_type == "mixtral":
        c["intermediate_size"] = 24  # Mixtral experts use intermediate_size
    if model_type == "olmoe":
        c["intermediate_size"] = 24
    if model_type in ("deepseek", "qwen2_moe", "qwen3_moe"):
        c["moe_intermediate_size"] = 24
    if model_type == "deepseek":
        c.update(n_shared_experts=1, first_k_dense_replace=1, moe_layer_freq=1)
    if model_type == "qwen2_moe":
        c["shared_expert_intermediate_size"] = 20
    if model_type == "qwen3_moe":
        c["head_dim"] = 12  # differs from hidden/heads = 8: exercises the head_dim field
    c.update(extra)
    return c


def _attention_shapes(spec, p):
    """(name, shape, kind) of the attention tensors of the layer with prefix `p`."""
    H, nh, nkv, hd = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim
    mt = spec.model_type
    a = p + "self_attn."
    out = [(a + "q_proj.weight", [nh * hd, H], "w"), (a + "k_proj.weight", [nkv * hd, H], "w"),
           (a + "v_proj.weight", [nkv * hd, H], "w"), (a + "o_proj.weight", [H, nh * hd], "w")]
    if spec.qkv_bias:
        out += [(a + "q_proj.bias", [nh * hd], "b"), (a + "k_proj.bias", [nkv * hd], "b"),
                (a + "v_proj.bias", [nkv * hd], "b")]
    if spec.o_bias:
        out.append((a + "o_proj.bias", [H], "b"))
    if mt == "olmoe":
        out += [(a + "q_norm.weight", [nh * hd], "norm"), (a + "k_norm.weight", [nkv * hd], "norm")]
    if mt == "qwen3_moe":
        out += [(a + "q_norm.weight", [hd], "norm"), (a + "k_norm.weight", [hd], "norm")]
    return out


def _mlp_shapes(m, I, H, names=("gate_proj", "up_proj", "down_proj")):
    """(name, shape, kind) of one SwiGLU MLP with prefix `m` and width I."""
    return [(m + names[0] + ".weight", [I, H], "w"), (m + names[1] + ".weight", [I, H], "w"),
            (m + names[2] + ".weight", [H, I], "w")]


def _moe_shapes(spec, l, p):
    """(name, shape, kind) of the MoE block of layer l (prefix `p`): router, routed experts,
    shared experts."""
    H, mt = spec.hidden_size, spec.model_type
    m = p + ("block_sparse_moe." if mt == "mixtral" else "mlp.")
    n = spec.num_routed_experts(l)
    out = []
    if n > 0:
        out.append((m + "gate.weight", [n, H], "router"))
    names = ("w1", "w3", "w2") if mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    for e in range(n):
        out += _mlp_shapes(m + "experts.%d." % e, spec.moe_intermediate_size, H, names)
    if mt == "deepseek" and spec.shared_intermediate_size:
        out += _mlp_shapes(m + "shared_experts.", spec.shared_intermediate_size, H)
    if mt == "qwen2_moe":
        out += _mlp_shapes(m + "shared_expert.", spec.shared_intermediate_size, H)
        out.append((m + "shared_expert_gate.weight", [1, H], "w"))
    return out


def tensor_shapes(spec):
    """(name, shape, kind) of every tensor a checkpoint of `spec` holds, written here from the
    documented names (docs/formats/model_config.md), independently of the oracle."""
    H = spec.hidden_size
    out = [("model.embed_tokens.weight", [spec.vocab_size, H], "embed")]
    for l in range(spec.num_layers):
        p = "model.layers.%d." % l
        out.append((p + "input_layernorm.weight", [H], "norm"))
        out += _attention_shapes(spec, p)
        if spec.is_dropped(l):
            continue
        out.append((p + "post_attention_layernorm.weight", [H], "norm"))
        if not spec.is_moe_layer(l):
            out += _mlp_shapes(p + "mlp.", spec.intermediate_size, H)
            continue
        out += _moe_shapes(spec, l, p)
    out.append(("model.norm.weight", [H], "norm"))
    if not spec.tie_word_embeddings:
        out.append(("lm_head.weight", [spec.vocab_size, H], "w"))
    return out


def make_weights(spec, seed=0, router_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape, kind in tensor_shapes(spec):
        r = torch.randn(*shape, generator=g, dtype=F64)
        if kind == "embed":
            t = r
        elif kind == "norm":
            t = 1.0 + 0.2 * r
        elif kind == "b":
            t = 0.1 * r
        elif kind == "router":
            t = r * (router_scale / math.sqrt(shape[1]))  # peaky enough that routing matters
        else:
            t = r / math.sqrt(shape[1])
        weights[name] = t
    return weights


def make_model(model_type, seed=0, **config):
    raw = make_config(model_type, **config)
    spec = ref.ModelSpec(raw, "test config")
    return raw, spec, make_weights(spec, seed)


def random_tokens(vocab, B=2, S=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, S), generator=g)


def run_oracle(raw, weights, tokens, dtype=F64):
    spec = ref.ModelSpec(raw, "test config")
    W = ref.Weights(weights, dtype)
    with torch.no_grad():
        out = ref.forward(spec, W, tokens, dtype)
    out["unused"] = W.unused()
    return out
