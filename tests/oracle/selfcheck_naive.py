"""The naive second implementation for self_check.py: the same forward pass as the oracle,
written from the same semantics (README.md) as per-token / per-head Python loops in numpy
float64 (RoPE by explicit pair rotation, GQA by `head // group`, routing by sorting the
probabilities of each token), sharing no code with the oracle's vectorized torch forward."""

import math

import numpy as np

import hf_reference as ref


def n_rms(x, w, eps):
    return w * x / math.sqrt(float(np.mean(x * x)) + eps)


def n_silu(x):
    return x / (1.0 + np.exp(-x))


def n_mlp(x, gate, up, down):
    return down @ (n_silu(gate @ x) * (up @ x))


def n_rope(vec, pos, theta):
    d = len(vec)
    half = d // 2
    out = vec.copy()
    for m in range(half):
        angle = pos / theta ** (2.0 * m / d)
        c, s = math.cos(angle), math.sin(angle)
        out[m] = vec[m] * c - vec[m + half] * s
        out[m + half] = vec[m + half] * c + vec[m] * s
    return out


def n_softmax(v):
    e = np.exp(v - np.max(v))
    return e / e.sum()


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

def n_project_token(spec, T, l, row, t):
    """Query, key and value heads (q and k rotated) of the token at position t of layer l,
    whose residual stream is `row`."""
    p = "model.layers.%d." % l
    a = p + "self_attn."
    mt, nh, nkv, hd, eps = spec.model_type, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.rms_norm_eps
    x = n_rms(row, T[p + "input_layernorm.weight"], eps)
    q = T[a + "q_proj.weight"] @ x
    k = T[a + "k_proj.weight"] @ x
    v = T[a + "v_proj.weight"] @ x
    if spec.qkv_bias:
        q = q + T[a + "q_proj.bias"]
        k = k + T[a + "k_proj.bias"]
        v = v + T[a + "v_proj.bias"]
    if mt == "olmoe":
        q = n_rms(q, T[a + "q_norm.weight"], eps)
        k = n_rms(k, T[a + "k_norm.weight"], eps)
        if spec.clip_qkv is not None:
            q, k, v = (np.clip(z, -spec.clip_qkv, spec.clip_qkv) for z in (q, k, v))
    q_heads = [q[i * hd:(i + 1) * hd] for i in range(nh)]
    k_heads = [k[i * hd:(i + 1) * hd] for i in range(nkv)]
    v_heads = [v[i * hd:(i + 1) * hd] for i in range(nkv)]
    if mt == "qwen3_moe":
        q_heads = [n_rms(z, T[a + "q_norm.weight"], eps) for z in q_heads]
        k_heads = [n_rms(z, T[a + "k_norm.weight"], eps) for z in k_heads]
    return ([n_rope(z, t, spec.rope_theta) for z in q_heads],
            [n_rope(z, t, spec.rope_theta) for z in k_heads], v_heads)


def n_attention(spec, T, l, h):
    """Attention output [B, S, H] of layer l on the residual stream h, and the attention
    probabilities [B, heads, S, S]."""
    a = "model.layers.%d.self_attn." % l
    B, S, H = h.shape
    nh, hd = spec.num_heads, spec.head_dim
    group = nh // spec.num_kv_heads
    attn = np.zeros((B, S, H))
    probs_all = np.zeros((B, nh, S, S))
    for b in range(B):
        qs, ks, vs = [], [], []
        for t in range(S):
            q_heads, k_heads, v_heads = n_project_token(spec, T, l, h[b, t], t)
            qs.append(q_heads)
            ks.append(k_heads)
            vs.append(v_heads)
        for i in range(S):
            concat = []
            for head in range(nh):
                kvh = head // group
                scores = np.array([qs[i][head] @ ks[j][kvh] / math.sqrt(hd) for j in range(i + 1)])
                pr = n_softmax(scores)
                probs_all[b, head, i, :i + 1] = pr
                concat.append(sum(pr[j] * vs[j][kvh] for j in range(i + 1)))
            o = T[a + "o_proj.weight"] @ np.concatenate(concat)
            if spec.o_bias:
                o = o + T[a + "o_proj.bias"]
            attn[b, i] = o
    return attn, probs_all


# ---------------------------------------------------------------------------------------------
# MoE layers
# ---------------------------------------------------------------------------------------------

def n_odp_sets(spec, xs_b, probs_b):
    """ODP token sets (least important, most important) of one sequence: xs_b [S, H] MoE
    inputs, probs_b [heads, S, S] attention probabilities of the same layer."""
    S = xs_b.shape[0]
    nh = spec.num_heads
    imp = []
    for t in range(S):
        if spec.odp["positional_prior"]:
            a_t = 1.0 / (S - t)
        else:
            col = sum(probs_b[hh, i, t] for hh in range(nh) for i in range(t, S)) / nh
            a_t = col / (S - t)
        imp.append(float(np.abs(xs_b[t]).sum()) * a_t)
    order = sorted(range(S), key=lambda t: (imp[t], t))
    n_low = int(math.floor(spec.odp["tau_low"] * S))
    n_high = int(math.floor(spec.odp["tau_high"] * S))
    low = set(order[:n_low])
    high = set(order[S - n_high:]) if n_high else set()
    return low, high


def n_route(spec, logits, k, beta, low, high):
    """(selected experts, kept flags, weights) of one token."""
    n = len(logits)
    pr = n_softmax(logits)
    sel = sorted(range(n), key=lambda e: -pr[e])[:k]
    kept = [True] * k
    if beta is not None:
        for j in range(1, k):
            kept[j] = not (pr[sel[j]] < beta * pr[sel[0]])
    if low:
        kept = [False] * k
    if high:
        kept = [True] * k
    w = [pr[sel[j]] if kept[j] else 0.0 for j in range(k)]
    if spec.model_type == "deepseek":
        if k > 1 and spec.norm_topk_prob:
            w = [v / (sum(w) + 1e-20) for v in w]
    elif spec.norm_topk_prob and sum(w) > 0:
        w = [v / sum(w) for v in w]
    return sel, kept, w


def n_add_shared(spec, T, m, x, out):
    """Adds the shared experts of the MoE block with prefix m to `out` (in place)."""
    mt = spec.model_type
    if mt == "deepseek" and spec.shared_intermediate_size:
        sp = m + "shared_experts."
        out += n_mlp(x, T[sp + "gate_proj.weight"], T[sp + "up_proj.weight"],
                     T[sp + "down_proj.weight"])
    if mt == "qwen2_moe":
        sp = m + "shared_expert."
        gate = 1.0 / (1.0 + math.exp(-float(T[m + "shared_expert_gate.weight"][0] @ x)))
        out += gate * n_mlp(x, T[sp + "gate_proj.weight"], T[sp + "up_proj.weight"],
                            T[sp + "down_proj.weight"])


def n_moe_layer(spec, T, l, xs, probs_all):
    """MoE output [B, S, H] of layer l on its inputs xs, and the router logits [B*S, n]."""
    B, S, H = xs.shape
    mt = spec.model_type
    m = "model.layers.%d.%s" % (l, "block_sparse_moe." if mt == "mixtral" else "mlp.")
    names = ("w1", "w3", "w2") if mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    n = spec.num_routed_experts(l)
    k = min(spec.top_k, n)
    odp = spec.odp_enabled(l)
    beta = spec.odp["beta"][l] if odp else spec.skip_beta[l]
    layer_logits = np.zeros((B * S, n))
    y = np.zeros((B, S, H))
    for b in range(B):
        low, high = n_odp_sets(spec, xs[b], probs_all[b]) if odp and S > 1 else (set(), set())
        for t in range(S):
            x = xs[b, t]
            if n > 0:
                logits = T[m + "gate.weight"] @ x
                layer_logits[b * S + t] = logits
                sel, kept, w = n_route(spec, logits, k, beta, t in low, t in high)
                for j in range(k):
                    if kept[j]:
                        ep = m + "experts.%d." % sel[j]
                        y[b, t] += w[j] * n_mlp(x, T[ep + names[0] + ".weight"],
                                                T[ep + names[1] + ".weight"],
                                                T[ep + names[2] + ".weight"])
            n_add_shared(spec, T, m, x, y[b, t])
    return y, layer_logits


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def n_mlp_layer(spec, T, l, h, probs_all, routers):
    """Post-attention norm and MLP (dense or MoE) of layer l on h; appends a MoE layer's router
    logits to `routers`."""
    p = "model.layers.%d." % l
    B, S, H = h.shape
    xs = np.zeros((B, S, H))
    for b in range(B):
        for t in range(S):
            xs[b, t] = n_rms(h[b, t], T[p + "post_attention_layernorm.weight"], spec.rms_norm_eps)
    if spec.is_moe_layer(l):
        y, layer_logits = n_moe_layer(spec, T, l, xs, probs_all)
        routers.append(layer_logits)
        return y
    y = np.zeros((B, S, H))
    m = p + "mlp."
    for b in range(B):
        for t in range(S):
            y[b, t] = n_mlp(xs[b, t], T[m + "gate_proj.weight"], T[m + "up_proj.weight"],
                            T[m + "down_proj.weight"])
    return y


def naive_forward(raw, weights, tokens):
    spec = ref.ModelSpec(raw, "naive")
    T = {k: v.numpy().astype(np.float64) for k, v in weights.items()}
    B, S = tokens.shape
    H = spec.hidden_size
    h = np.zeros((B, S, H))
    for b in range(B):
        for t in range(S):
            h[b, t] = T["model.embed_tokens.weight"][int(tokens[b, t])]
    hidden = [h.copy()]
    routers = []
    for l in range(spec.num_layers):
        attn, probs_all = n_attention(spec, T, l, h)
        h = h + attn
        if spec.is_dropped(l):
            hidden.append(h.copy())
            continue
        h = h + n_mlp_layer(spec, T, l, h, probs_all, routers)
        hidden.append(h.copy())
    logits = np.zeros((B, S, spec.vocab_size))
    head = T["model.embed_tokens.weight"] if spec.tie_word_embeddings else T["lm_head.weight"]
    for b in range(B):
        for t in range(S):
            logits[b, t] = head @ n_rms(h[b, t], T["model.norm.weight"], spec.rms_norm_eps)
    return dict(logits=logits, hidden=hidden, router_logits=routers)
