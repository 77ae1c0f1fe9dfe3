"""The oracle's forward pass (see hf_reference.py): checkpoint weights in the compute dtype,
the building blocks (RMSNorm, SwiGLU MLP, RoPE), attention, routing with moec's dynamic
skipping and Online Dynamic Pruning, the MoE and dense MLP blocks, and the model. Written from
the Hugging Face modeling files; README.md gives the exact semantics."""

import math

import numpy as np
import torch

from oracle_common import OracleError

# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

class Weights:
    """Checkpoint tensors as torch tensors of the compute dtype; every access checks the shape
    and records the name, so that unused tensors can be reported."""

    def __init__(self, tensors, dtype):
        self._tensors = {}
        for name, value in tensors.items():
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
            self._tensors[name] = t.to(dtype)
        self.used = set()

    def get(self, name, shape):
        if name not in self._tensors:
            raise OracleError("checkpoint has no tensor %r" % name)
        t = self._tensors[name]
        if list(t.shape) != list(shape):
            raise OracleError("tensor %r has shape %s, expected %s" % (name, list(t.shape), list(shape)))
        self.used.add(name)
        return t

    def unused(self):
        return sorted(set(self._tensors) - self.used)


# ---------------------------------------------------------------------------------------------
# Building blocks (all in the compute dtype)
# ---------------------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """RMSNorm over the last axis: weight * x / sqrt(mean(x^2) + eps)."""
    variance = x.pow(2).mean(dim=-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def linear(x, weight, bias=None):
    """nn.Linear: x @ weight^T (+ bias); weight is [out, in]."""
    y = torch.matmul(x, weight.t())
    if bias is not None:
        y = y + bias
    return y


def swiglu_mlp(x, gate_w, up_w, down_w):
    """down(silu(gate(x)) * up(x))."""
    return linear(torch.nn.functional.silu(linear(x, gate_w)) * linear(x, up_w), down_w)


def rope_cos_sin(seq_len, head_dim, theta, dtype):
    """cos/sin tables [seq_len, head_dim] of the default HF rotary embedding at positions
    0..seq_len-1: inv_freq = 1 / theta^(arange(0, d, 2) / d), emb = cat(freqs, freqs)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    positions = torch.arange(seq_len, dtype=torch.int64).to(dtype)
    freqs = positions[:, None] * inv_freq[None, :]  # [S, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [S, d]
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """x: [B, heads, S, d]; cos/sin: [S, d]."""
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

def self_attention(spec, W, layer, x, cos, sin):
    """Causal multi-head attention of `layer` on x [B, S, hidden] (already input-normed).
    Returns (output [B, S, hidden], attention probabilities [B, heads, S(query), S(key)])."""
    B, S, H = x.shape
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    p = "model.layers.%d.self_attn." % layer
    eps = spec.rms_norm_eps

    def bias(name, size, present):
        return W.get(p + name, [size]) if present else None

    q = linear(x, W.get(p + "q_proj.weight", [nh * hd, H]), bias("q_proj.bias", nh * hd, spec.qkv_bias))
    k = linear(x, W.get(p + "k_proj.weight", [nkv * hd, H]), bias("k_proj.bias", nkv * hd, spec.qkv_bias))
    v = linear(x, W.get(p + "v_proj.weight", [nkv * hd, H]), bias("v_proj.bias", nkv * hd, spec.qkv_bias))

    if spec.qk_norm == "full_width":
        # OLMoE: RMSNorm over the whole projected width, before splitting into heads.
        q = rms_norm(q, W.get(p + "q_norm.weight", [nh * hd]), eps)
        k = rms_norm(k, W.get(p + "k_norm.weight", [nkv * hd]), eps)
    if spec.clip_qkv is not None:
        # OLMoE: clamp after the q/k norms (as OlmoeAttention.forward).
        c = spec.clip_qkv
        q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)

    q = q.view(B, S, nh, hd)
    k = k.view(B, S, nkv, hd)
    v = v.view(B, S, nkv, hd)
    if spec.qk_norm == "per_head":
        # Qwen3-MoE: RMSNorm over head_dim of each head, one weight shared by all heads.
        q = rms_norm(q, W.get(p + "q_norm.weight", [hd]), eps)
        k = rms_norm(k, W.get(p + "k_norm.weight", [hd]), eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, hd]

    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)

    # GQA: kv head j serves query heads j*g .. j*g+g-1.
    group = nh // nkv
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)

    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)  # [B, nh, S, S]
    future = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v)  # [B, nh, S, hd]
    out = out.transpose(1, 2).reshape(B, S, nh * hd)
    out = linear(out, W.get(p + "o_proj.weight", [H, nh * hd]),
                 W.get(p + "o_proj.bias", [H]) if spec.o_bias else None)
    return out, probs


# ---------------------------------------------------------------------------------------------
# Routing (with moec's dynamic skipping and Online Dynamic Pruning)
# ---------------------------------------------------------------------------------------------

def odp_token_importance(x, attn_probs, positional_prior):
    """ODP token importance I_t = ||x_t||_1 * a_t per sequence. x: [B, S, hidden] MoE input;
    attn_probs: [B, heads, S(query), S(key)] of the same layer. a_t is the column sum over the
    queries i >= t of the head-averaged attention i -> t, divided by the number of such queries
    (S - t); with positional_prior (MC-MoE's degenerate statistic) a_t = 1 / (S - t)."""
    B, S, _ = x.shape
    queries_seeing = torch.arange(S, 0, -1, dtype=torch.int64).to(x.dtype)  # S - t
    if positional_prior:
        a = (1.0 / queries_seeing).expand(B, S)
    else:
        head_mean = attn_probs.mean(dim=1)  # [B, S(query), S(key)]
        column_sum = head_mean.sum(dim=1)  # [B, S(key)]; entries i < t are exactly 0 (causal)
        a = column_sum / queries_seeing
    return x.abs().sum(dim=-1) * a  # [B, S]


def odp_rank(importance_row):
    """Token positions of one sequence ordered from least to most important: stable ascending
    sort by (importance, position)."""
    values = importance_row.tolist()
    return sorted(range(len(values)), key=lambda t: (values[t], t))


def route_tokens(spec, layer, router_logits, x, attn_probs):
    """Routing of a MoE layer. router_logits: [B*S, n]; x: [B, S, hidden] (MoE input).
    Returns (experts [T, k] long, weights [T, k], keep [T, k] bool)."""
    B, S, _ = x.shape
    T, n = router_logits.shape
    k = spec.layer_top_k(layer)
    probs = torch.softmax(router_logits, dim=-1)  # full softmax over the layer's n experts
    top_p, top_e = torch.topk(probs, k, dim=-1)  # sorted: top_p[:, 0] is p1
    keep = torch.ones(T, k, dtype=torch.bool)

    # Rule 1 (dynamic skipping; ODP uses its own beta): drop a selected expert i >= 2 when
    # p_i < beta * p1.
    use_odp = spec.odp_enabled(layer)
    beta = spec.odp["beta"][layer] if use_odp else spec.skip_beta[layer]
    if beta is not None:
        for j in range(1, k):
            keep[:, j] = ~(top_p[:, j] < beta * top_p[:, 0])

    # Rule 2 (ODP, prefill only, i.e. sequences longer than one token): the least important
    # floor(tau_low*S) tokens of each sequence skip every routed expert, the most important
    # floor(tau_high*S) get their full top-k back.
    if use_odp and S > 1:
        importance = odp_token_importance(x, attn_probs, spec.odp["positional_prior"])
        n_low = int(math.floor(spec.odp["tau_low"] * S))
        n_high = int(math.floor(spec.odp["tau_high"] * S))
        for b in range(B):
            order = odp_rank(importance[b])
            for t in order[:n_low]:
                keep[b * S + t, :] = False
            for t in order[S - n_high:] if n_high > 0 else []:
                keep[b * S + t, :] = True

    weights = torch.where(keep, top_p, torch.zeros_like(top_p))
    if spec.model_type == "deepseek":
        # MoEGate: `if self.top_k > 1 and self.norm_topk_prob: w / (w.sum() + 1e-20)`.
        if k > 1 and spec.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    elif spec.norm_topk_prob:  # Mixtral always; Qwen2/3-MoE and OLMoE per the field
        total = weights.sum(dim=-1, keepdim=True)
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        weights = weights / safe_total  # tokens with nothing kept stay all zero
    return top_e, weights, keep


# ---------------------------------------------------------------------------------------------
# MoE / MLP blocks
# ---------------------------------------------------------------------------------------------

def expert_names(spec, layer, e):
    if spec.model_type == "mixtral":
        p = "model.layers.%d.block_sparse_moe.experts.%d." % (layer, e)
        return p + "w1.weight", p + "w3.weight", p + "w2.weight"
    p = "model.layers.%d.mlp.experts.%d." % (layer, e)
    return p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"


def load_mlp(W, gate, up, down, hidden, width):
    return (W.get(gate, [width, hidden]), W.get(up, [width, hidden]), W.get(down, [hidden, width]))


def moe_block(spec, W, layer, x, attn_probs):
    """MoE block of `layer` on x [B, S, hidden] (post-attention-normed).
    Returns (output [B, S, hidden], router logits [B*S, n])."""
    B, S, H = x.shape
    flat = x.reshape(B * S, H)
    n = spec.num_routed_experts(layer)
    width = spec.moe_intermediate_size
    out = torch.zeros_like(flat)
    prefix = "model.layers.%d.%s." % (layer, "block_sparse_moe" if spec.model_type == "mixtral" else "mlp")

    if n > 0:
        router_logits = linear(flat, W.get(prefix + "gate.weight", [n, H]))
        experts, weights, keep = route_tokens(spec, layer, router_logits, x, attn_probs)
        for e in range(n):
            mlp = load_mlp(W, *expert_names(spec, layer, e), H, width)
            rows, slots = torch.where((experts == e) & keep)
            if rows.numel() == 0:
                continue
            y = swiglu_mlp(flat[rows], *mlp) * weights[rows, slots].unsqueeze(-1)
            out.index_add_(0, rows, y)
    else:
        router_logits = torch.zeros(B * S, 0, dtype=flat.dtype)  # no router: no routed experts

    if spec.model_type == "deepseek" and spec.shared_intermediate_size > 0:
        sp = prefix + "shared_experts."
        shared = load_mlp(W, sp + "gate_proj.weight", sp + "up_proj.weight", sp + "down_proj.weight",
                          H, spec.shared_intermediate_size)
        out = out + swiglu_mlp(flat, *shared)
    if spec.model_type == "qwen2_moe":
        sp = prefix + "shared_expert."
        shared = load_mlp(W, sp + "gate_proj.weight", sp + "up_proj.weight", sp + "down_proj.weight",
                          H, spec.shared_intermediate_size)
        gate = torch.sigmoid(linear(flat, W.get(prefix + "shared_expert_gate.weight", [1, H])))
        out = out + gate * swiglu_mlp(flat, *shared)
    return out.reshape(B, S, H), router_logits


def dense_mlp(spec, W, layer, x):
    p = "model.layers.%d.mlp." % layer
    mlp = load_mlp(W, p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight",
                   spec.hidden_size, spec.intermediate_size)
    return swiglu_mlp(x, *mlp)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def forward(spec, W, tokens, dtype=torch.float32):
    """tokens: LongTensor [B, S]. Returns dict with
    logits [B, S, vocab], hidden (list of num_layers+1 tensors [B, S, hidden]: the embedding
    output, then the residual stream after each layer, before the final norm) and
    router_logits (list over MoE layers in layer order of [B*S, n_layer])."""
    B, S = tokens.shape
    H, eps = spec.hidden_size, spec.rms_norm_eps
    if spec.sliding_window is not None and S > spec.sliding_window:
        raise OracleError("sliding-window attention (window %d < sequence length %d) is not "
                          "implemented" % (spec.sliding_window, S))
    embed = W.get("model.embed_tokens.weight", [spec.vocab_size, H])
    h = embed[tokens]
    hidden = [h]
    router_logits = []
    cos, sin = rope_cos_sin(S, spec.head_dim, spec.rope_theta, dtype)

    for layer in range(spec.num_layers):
        p = "model.layers.%d." % layer
        residual = h
        x = rms_norm(h, W.get(p + "input_layernorm.weight", [H]), eps)
        attn_out, attn_probs = self_attention(spec, W, layer, x, cos, sin)
        h = residual + attn_out

        if not spec.is_dropped(layer):  # dropped: no post-attention norm, no MLP
            residual = h
            x = rms_norm(h, W.get(p + "post_attention_layernorm.weight", [H]), eps)
            if spec.is_moe_layer(layer):
                y, logits = moe_block(spec, W, layer, x, attn_probs)
                router_logits.append(logits)
            else:
                y = dense_mlp(spec, W, layer, x)
            h = residual + y
        hidden.append(h)

    h = rms_norm(h, W.get("model.norm.weight", [H]), eps)
    if spec.tie_word_embeddings:
        lm_head = embed
    else:
        lm_head = W.get("lm_head.weight", [spec.vocab_size, H])
    logits = linear(h, lm_head)
    return dict(logits=logits, hidden=hidden, router_logits=router_logits)
