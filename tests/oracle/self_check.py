#!/usr/bin/python3
"""Self-check of the oracle tests/oracle/hf_reference.py.

Builds tiny random checkpoints in memory and checks the oracle
  * against a second, naive implementation in this file (per-token / per-head Python loops in
    numpy float64, written from the same semantics but sharing no code with the oracle's
    vectorized torch forward),
  * against equivalences that must hold exactly (one expert + top-1 == a dense layer, dropped
    MoE layers == zeroed experts, skip_beta 0 == no skipping, skip_beta 1 == top-1, ODP limits,
    ...),
  * on known values (RMSNorm, RoPE, safetensors decoding of F32/F16/BF16, sharded checkpoints),
  * through its command line (exit codes, output sizes).

    /usr/bin/python3 tests/oracle/self_check.py [-v]

Exits 0 when every check passes, 1 otherwise.
"""

import json
import math
import os
import struct
import sys
import tempfile
import traceback

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep tests/oracle free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as ref  # noqa: E402

VERBOSE = "-v" in sys.argv
F64 = torch.float64

# ---------------------------------------------------------------------------------------------
# Tiny random checkpoints
# ---------------------------------------------------------------------------------------------

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


def tensor_shapes(spec):
    """(name, shape, kind) of every tensor a checkpoint of `spec` holds, written here from the
    documented names (docs/formats/model_config.md), independently of the oracle."""
    H, nh, nkv, hd = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim
    out = [("model.embed_tokens.weight", [spec.vocab_size, H], "embed")]
    mt = spec.model_type
    for l in range(spec.num_layers):
        p = "model.layers.%d." % l
        out.append((p + "input_layernorm.weight", [H], "norm"))
        a = p + "self_attn."
        out += [(a + "q_proj.weight", [nh * hd, H], "w"), (a + "k_proj.weight", [nkv * hd, H], "w"),
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
        if spec.is_dropped(l):
            continue
        out.append((p + "post_attention_layernorm.weight", [H], "norm"))
        if not spec.is_moe_layer(l):
            m = p + "mlp."
            I = spec.intermediate_size
            out += [(m + "gate_proj.weight", [I, H], "w"), (m + "up_proj.weight", [I, H], "w"),
                    (m + "down_proj.weight", [H, I], "w")]
            continue
        m = p + ("block_sparse_moe." if mt == "mixtral" else "mlp.")
        n = spec.num_routed_experts(l)
        I = spec.moe_intermediate_size
        if n > 0:
            out.append((m + "gate.weight", [n, H], "router"))
        names = ("w1", "w3", "w2") if mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        for e in range(n):
            ep = m + "experts.%d." % e
            out += [(ep + names[0] + ".weight", [I, H], "w"), (ep + names[1] + ".weight", [I, H], "w"),
                    (ep + names[2] + ".weight", [H, I], "w")]
        if mt == "deepseek" and spec.shared_intermediate_size:
            I = spec.shared_intermediate_size
            sp = m + "shared_experts."
            out += [(sp + "gate_proj.weight", [I, H], "w"), (sp + "up_proj.weight", [I, H], "w"),
                    (sp + "down_proj.weight", [H, I], "w")]
        if mt == "qwen2_moe":
            I = spec.shared_intermediate_size
            sp = m + "shared_expert."
            out += [(sp + "gate_proj.weight", [I, H], "w"), (sp + "up_proj.weight", [I, H], "w"),
                    (sp + "down_proj.weight", [H, I], "w"), (m + "shared_expert_gate.weight", [1, H], "w")]
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


# ---------------------------------------------------------------------------------------------
# The naive second implementation (numpy float64, loops)
# ---------------------------------------------------------------------------------------------

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


def naive_forward(raw, weights, tokens):
    spec = ref.ModelSpec(raw, "naive")
    T = {k: v.numpy().astype(np.float64) for k, v in weights.items()}
    mt = spec.model_type
    B, S = tokens.shape
    H, nh, nkv, hd, eps = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.rms_norm_eps
    group = nh // nkv
    h = np.zeros((B, S, H))
    for b in range(B):
        for t in range(S):
            h[b, t] = T["model.embed_tokens.weight"][int(tokens[b, t])]
    hidden = [h.copy()]
    routers = []
    for l in range(spec.num_layers):
        p = "model.layers.%d." % l
        a = p + "self_attn."
        attn = np.zeros((B, S, H))
        probs_all = np.zeros((B, nh, S, S))
        for b in range(B):
            qs, ks, vs = [], [], []
            for t in range(S):
                x = n_rms(h[b, t], T[p + "input_layernorm.weight"], eps)
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
                qs.append([n_rope(z, t, spec.rope_theta) for z in q_heads])
                ks.append([n_rope(z, t, spec.rope_theta) for z in k_heads])
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
        h = h + attn
        if spec.is_dropped(l):
            hidden.append(h.copy())
            continue
        xs = np.zeros((B, S, H))
        for b in range(B):
            for t in range(S):
                xs[b, t] = n_rms(h[b, t], T[p + "post_attention_layernorm.weight"], eps)
        y = np.zeros((B, S, H))
        if not spec.is_moe_layer(l):
            m = p + "mlp."
            for b in range(B):
                for t in range(S):
                    y[b, t] = n_mlp(xs[b, t], T[m + "gate_proj.weight"], T[m + "up_proj.weight"],
                                    T[m + "down_proj.weight"])
        else:
            m = p + ("block_sparse_moe." if mt == "mixtral" else "mlp.")
            names = ("w1", "w3", "w2") if mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
            n = spec.num_routed_experts(l)
            k = min(spec.top_k, n)
            odp = spec.odp_enabled(l)
            beta = spec.odp["beta"][l] if odp else spec.skip_beta[l]
            layer_logits = np.zeros((B * S, n))
            for b in range(B):
                # ODP token sets of this sequence
                low, high = set(), set()
                if odp and S > 1:
                    imp = []
                    for t in range(S):
                        if spec.odp["positional_prior"]:
                            a_t = 1.0 / (S - t)
                        else:
                            col = sum(probs_all[b, hh, i, t] for hh in range(nh) for i in range(t, S)) / nh
                            a_t = col / (S - t)
                        imp.append(float(np.abs(xs[b, t]).sum()) * a_t)
                    order = sorted(range(S), key=lambda t: (imp[t], t))
                    n_low = int(math.floor(spec.odp["tau_low"] * S))
                    n_high = int(math.floor(spec.odp["tau_high"] * S))
                    low = set(order[:n_low])
                    high = set(order[S - n_high:]) if n_high else set()
                for t in range(S):
                    x = xs[b, t]
                    if n > 0:
                        logits = T[m + "gate.weight"] @ x
                        layer_logits[b * S + t] = logits
                        pr = n_softmax(logits)
                        sel = sorted(range(n), key=lambda e: -pr[e])[:k]
                        kept = [True] * k
                        if beta is not None:
                            for j in range(1, k):
                                kept[j] = not (pr[sel[j]] < beta * pr[sel[0]])
                        if t in low:
                            kept = [False] * k
                        if t in high:
                            kept = [True] * k
                        w = [pr[sel[j]] if kept[j] else 0.0 for j in range(k)]
                        if mt == "deepseek":
                            if k > 1 and spec.norm_topk_prob:
                                w = [v / (sum(w) + 1e-20) for v in w]
                        elif spec.norm_topk_prob and sum(w) > 0:
                            w = [v / sum(w) for v in w]
                        for j in range(k):
                            if kept[j]:
                                ep = m + "experts.%d." % sel[j]
                                y[b, t] += w[j] * n_mlp(x, T[ep + names[0] + ".weight"],
                                                        T[ep + names[1] + ".weight"],
                                                        T[ep + names[2] + ".weight"])
                    if mt == "deepseek" and spec.shared_intermediate_size:
                        sp = m + "shared_experts."
                        y[b, t] += n_mlp(x, T[sp + "gate_proj.weight"], T[sp + "up_proj.weight"],
                                         T[sp + "down_proj.weight"])
                    if mt == "qwen2_moe":
                        sp = m + "shared_expert."
                        gate = 1.0 / (1.0 + math.exp(-float(T[m + "shared_expert_gate.weight"][0] @ x)))
                        y[b, t] += gate * n_mlp(x, T[sp + "gate_proj.weight"], T[sp + "up_proj.weight"],
                                                T[sp + "down_proj.weight"])
            routers.append(layer_logits)
        h = h + y
        hidden.append(h.copy())
    logits = np.zeros((B, S, spec.vocab_size))
    head = T["model.embed_tokens.weight"] if spec.tie_word_embeddings else T["lm_head.weight"]
    for b in range(B):
        for t in range(S):
            logits[b, t] = head @ n_rms(h[b, t], T["model.norm.weight"], eps)
    return dict(logits=logits, hidden=hidden, router_logits=routers)


# ---------------------------------------------------------------------------------------------
# Check harness
# ---------------------------------------------------------------------------------------------

RESULTS = []


CHECKS = []


def check(name):
    """Registers a check; main() runs them in order."""
    def wrap(fn):
        CHECKS.append((name, fn))
        return fn
    return wrap


def run_checks():
    for name, fn in CHECKS:
        try:
            fn()
            RESULTS.append((name, True, ""))
            print("PASS  %s" % name)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            RESULTS.append((name, False, str(e)))
            print("FAIL  %s: %s" % (name, e))
            if VERBOSE:
                traceback.print_exc()


def max_diff(a, b):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError("shape %s vs %s" % (a.shape, b.shape))
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_close(a, b, tol, what):
    d = max_diff(a, b)
    if not d <= tol:
        raise AssertionError("%s: max |diff| %.3g > %.3g" % (what, d, tol))


def assert_far(a, b, tol, what):
    d = max_diff(a, b)
    if not d > tol:
        raise AssertionError("%s: expected a difference, max |diff| %.3g" % (what, d))


def compare_with_naive(raw, seed=0, B=2, S=7, tol=1e-9):
    spec = ref.ModelSpec(raw, "t")
    weights = make_weights(spec, seed)
    tokens = random_tokens(spec.vocab_size, B, S, seed + 1)
    got = run_oracle(raw, weights, tokens)
    want = naive_forward(raw, weights, tokens)
    if got["unused"]:
        raise AssertionError("unused tensors %s" % got["unused"])
    assert_close(got["logits"], want["logits"], tol, "logits")
    for l, (g, w) in enumerate(zip(got["hidden"], want["hidden"])):
        assert_close(g, w, tol, "hidden[%d]" % l)
    if len(got["router_logits"]) != len(want["router_logits"]):
        raise AssertionError("router layers %d vs %d" % (len(got["router_logits"]), len(want["router_logits"])))
    for g, w in zip(got["router_logits"], want["router_logits"]):
        assert_close(g, w, tol, "router logits")
    return got


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

@check("GPTQ: bit-stream unpacking (2, 3, 4, 8 bits) and v1/v2 dequantization by hand")
def _check_gptq():
    rng = np.random.default_rng(7)
    for bits in (2, 3, 4, 8):
        n, cols = 96, 5
        vals = rng.integers(0, 1 << bits, size=(n, cols))
        words = np.zeros(((n * bits + 31) // 32, cols), dtype=np.int64)
        for i in range(n):  # one bit at a time: value i's bit b is stream bit i*bits + b
            for b in range(bits):
                pos = i * bits + b
                words[pos // 32] |= ((vals[i] >> b) & 1) << (pos % 32)
        packed = words.astype(np.uint32).view(np.int32)
        assert (ref._unpack_rows(packed, n, bits) == vals).all(), "unpack %d bits" % bits
    # One 4-bit module, 8 inputs in 2 groups, 8 outputs: W[o, i] = s[g, o] * (q - z[g, o]).
    q = rng.integers(0, 16, size=(8, 8))
    z = rng.integers(1, 15, size=(2, 8))  # v1 cannot store a zero point of 0
    s = rng.random((2, 8)).astype(np.float32)
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    def pack(v):  # 4 bits: 8 values per word along axis 0
        w = np.zeros((v.shape[0] // 8, v.shape[1]), dtype=np.int64)
        for i in range(v.shape[0]):
            w[i // 8] |= v[i].astype(np.int64) << (4 * (i % 8))
        return w.astype(np.uint32).view(np.int32)
    for fmt, stored in (("gptq", z - 1), ("gptq_v2", z)):
        t = {"m.qweight": pack(q), "m.qzeros": np.ascontiguousarray(pack(stored.T).T),
             "m.scales": s, "m.g_idx": g.astype(np.int32)}
        w = ref.dequantize_gptq(t, {"checkpoint_format": fmt, "bits": 4})["m.weight"]
        want = np.array([[s[g[i], o] * (q[i, o] - z[g[i], o]) for i in range(8)] for o in range(8)])
        assert np.allclose(w, want), fmt


@check("known values: RMSNorm, rotate_half, RoPE at position 0 and 1")
def _():
    x = torch.tensor([3.0, 4.0], dtype=F64)
    y = ref.rms_norm(x, torch.tensor([1.0, 2.0], dtype=F64), 0.0)
    assert_close(y, torch.tensor([3 / math.sqrt(12.5), 8 / math.sqrt(12.5)], dtype=F64), 1e-15, "rms")
    assert_close(ref.rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]), 0, "rot")
    cos, sin = ref.rope_cos_sin(2, 4, 100.0, F64)
    assert_close(cos[0], torch.ones(4), 0, "cos0")
    assert_close(sin[0], torch.zeros(4), 0, "sin0")
    # position 1, inv_freq = [1, 1/10]
    assert_close(cos[1], torch.tensor([math.cos(1), math.cos(0.1), math.cos(1), math.cos(0.1)], dtype=F64), 1e-15, "cos1")
    q = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    assert_close(ref.apply_rope(q, cos[1], sin[1]), n_rope(q.numpy(), 1, 100.0), 1e-15, "rope vs naive")


@check("config: MoE-layer rules and defaults")
def _():
    s = ref.ModelSpec(make_config("deepseek", layers=5, first_k_dense_replace=1, moe_layer_freq=2), "t")
    assert [l for l in range(5) if s.is_moe_layer(l)] == [2, 4]
    s = ref.ModelSpec(make_config("qwen2_moe", layers=6, decoder_sparse_step=2, mlp_only_layers=[3]), "t")
    assert [l for l in range(6) if s.is_moe_layer(l)] == [1, 5]
    s = ref.ModelSpec(make_config("qwen3_moe", layers=3, mlp_only_layers=[0]), "t")
    assert [l for l in range(3) if s.is_moe_layer(l)] == [1, 2]
    for mt, eps, theta in [("mixtral", 1e-5, 1e6), ("deepseek", 1e-6, 1e4), ("qwen2_moe", 1e-6, 1e4),
                           ("olmoe", 1e-5, 1e4), ("qwen3_moe", 1e-6, 1e4)]:
        raw = make_config(mt)
        del raw["rms_norm_eps"], raw["rope_theta"]
        s = ref.ModelSpec(raw, "t")
        assert (s.rms_norm_eps, s.rope_theta) == (eps, theta), (mt, s.rms_norm_eps, s.rope_theta)
    s = ref.ModelSpec(make_config("mixtral"), "t")
    assert s.norm_topk_prob and not s.qkv_bias and not s.o_bias
    s = ref.ModelSpec(make_config("qwen2_moe", attention_bias=True), "t")
    assert s.qkv_bias and not s.o_bias
    s = ref.ModelSpec(make_config("olmoe", attention_bias=True), "t")
    assert s.qkv_bias and s.o_bias and s.qk_norm == "full_width"
    s = ref.ModelSpec(make_config("qwen3_moe"), "t")
    assert s.head_dim == 12 and s.qk_norm == "per_head"
    s = ref.ModelSpec(make_config("mixtral", moec={"experts_per_layer": [3, 0]}), "t")
    assert (s.num_routed_experts(0), s.layer_top_k(0), s.num_routed_experts(1), s.layer_top_k(1)) == (3, 2, 0, 0)
    for bad in [dict(moec={"typo": 1}), dict(scoring_func="sigmoid"),
                dict(rope_scaling={"type": "linear", "factor": 2.0}), dict(num_key_value_heads=3),
                dict(moec={"dropped_moe_layers": [0]})]:
        raw = make_config("deepseek", **bad)
        if bad.get("scoring_func") == "sigmoid":
            raw["model_type"] = "deepseek_v2"  # unsupported model_type, checked too
            try:
                ref.ModelSpec(raw, "t")
                raise AssertionError("accepted deepseek_v2")
            except ref.OracleError:
                raw["model_type"] = "deepseek"
        try:
            ref.ModelSpec(raw, "t")
        except ref.OracleError:
            continue
        raise AssertionError("accepted %r" % bad)


for _mt in ARCHS:
    @check("naive vs oracle (float64): %s" % _mt)
    def _(mt=_mt):
        compare_with_naive(make_config(mt, layers=3))

    @check("naive vs oracle (float64): %s, k=3 of 5, norm_topk_prob, biases, MHA" % _mt)
    def _(mt=_mt):
        compare_with_naive(make_config(mt, layers=2, experts=5, top_k=3, kv_heads=4,
                                       norm_topk_prob=True, attention_bias=True), seed=3)


@check("naive vs oracle: olmoe clip_qkv, tied embeddings, B=1 S=1")
def _():
    compare_with_naive(make_config("olmoe", clip_qkv=0.5, tie_word_embeddings=True), seed=4)
    compare_with_naive(make_config("mixtral"), seed=5, B=1, S=1)


@check("naive vs oracle: every moec override (pruned, zero experts, dropped, skip_beta, ODP)")
def _():
    moec = {"experts_per_layer": [3, 0, None, 2], "kept_experts": [[0, 2, 3], [], None, [1, 3]],
            "dropped_moe_layers": [2], "skip_beta": [0.6, None, None, 0.7],
            "odp": {"enabled_layers": [0, 3], "beta": [0.5, None, None, 0.8], "tau_low": 0.25,
                    "tau_high": 0.25}}
    for mt in ARCHS:
        raw = make_config(mt, layers=4, experts=4, moec=moec)
        if mt == "deepseek":
            raw["first_k_dense_replace"] = 0
        compare_with_naive(raw, seed=6, S=8)
    raw = make_config("olmoe", layers=4, experts=4, moec=dict(moec, odp=dict(moec["odp"], positional_prior=True)))
    compare_with_naive(raw, seed=7, S=8)


@check("float32 oracle agrees with float64 oracle (1e-4)")
def _():
    for mt in ARCHS:
        raw, spec, weights = make_model(mt, layers=3, seed=8)
        tokens = random_tokens(spec.vocab_size)
        a = run_oracle(raw, weights, tokens, torch.float32)["logits"].double()
        b = run_oracle(raw, weights, tokens, F64)["logits"]
        assert_close(a, b, 1e-4, mt)


@check("Mixtral with one expert and top-1 == DeepSeek with only dense layers")
def _():
    raw, spec, weights = make_model("mixtral", layers=2, experts=1, top_k=1, seed=9)
    dense_raw = make_config("deepseek", layers=2, experts=1, top_k=1, first_k_dense_replace=2,
                            intermediate_size=spec.intermediate_size)
    dense = {}
    for name, t in weights.items():
        if ".block_sparse_moe.gate." in name:
            continue
        name = name.replace("block_sparse_moe.experts.0.w1", "mlp.gate_proj")
        name = name.replace("block_sparse_moe.experts.0.w3", "mlp.up_proj")
        name = name.replace("block_sparse_moe.experts.0.w2", "mlp.down_proj")
        dense[name] = t
    tokens = random_tokens(spec.vocab_size)
    a = run_oracle(raw, weights, tokens)
    b = run_oracle(dense_raw, dense, tokens)
    assert not b["unused"], b["unused"]
    assert_close(a["logits"], b["logits"], 1e-12, "logits")
    assert len(a["router_logits"]) == 2 and len(b["router_logits"]) == 0


@check("dropping every MoE layer == experts (and shared experts) with zero down projections")
def _():
    for mt in ["mixtral", "qwen2_moe", "olmoe", "qwen3_moe"]:
        raw, spec, weights = make_model(mt, layers=2, seed=10)
        zeroed = {k: (torch.zeros_like(v) if ("down_proj" in k or ".w2." in k) else v) for k, v in weights.items()}
        dropped_raw = make_config(mt, layers=2, moec={"dropped_moe_layers": [0, 1]})
        dropped = {k: v for k, v in weights.items()
                   if "post_attention_layernorm" not in k and ".mlp." not in k and "block_sparse_moe" not in k}
        tokens = random_tokens(spec.vocab_size)
        a = run_oracle(raw, zeroed, tokens)
        b = run_oracle(dropped_raw, dropped, tokens)
        assert not b["unused"], b["unused"]
        assert_close(a["logits"], b["logits"], 1e-12, mt)
        assert b["router_logits"] == []
        assert_far(a["logits"], run_oracle(raw, weights, tokens)["logits"], 1e-3, mt + " (zeroing matters)")


@check("experts_per_layer 0: no router, routed experts contribute nothing, shared experts stay")
def _():
    for mt in ["mixtral", "deepseek", "qwen2_moe"]:
        raw, spec, weights = make_model(mt, layers=2, seed=11, first_k_dense_replace=0)
        zero_routed = {k: (torch.zeros_like(v) if ".experts." in k and ("down_proj" in k or ".w2." in k) else v)
                       for k, v in weights.items()}
        raw0 = make_config(mt, layers=2, first_k_dense_replace=0, moec={"experts_per_layer": [0, 0]})
        w0 = {k: v for k, v in weights.items() if ".experts." not in k and not k.endswith("mlp.gate.weight")
              and "block_sparse_moe.gate" not in k}
        tokens = random_tokens(spec.vocab_size)
        a = run_oracle(raw, zero_routed, tokens)
        b = run_oracle(raw0, w0, tokens)
        assert not b["unused"], b["unused"]
        assert_close(a["logits"], b["logits"], 1e-12, mt)
        assert [r.shape for r in b["router_logits"]] == [(14, 0), (14, 0)]


@check("skip_beta 0 changes nothing; skip_beta 1 == top-1 for Mixtral")
def _():
    for mt in ARCHS:
        raw, spec, weights = make_model(mt, layers=2, seed=12)
        tokens = random_tokens(spec.vocab_size)
        base = run_oracle(raw, weights, tokens)["logits"]
        betas = [0.0 if spec.is_moe_layer(l) else None for l in range(2)]
        skip0 = run_oracle(make_config(mt, layers=2, moec={"skip_beta": betas}), weights, tokens)["logits"]
        assert_close(base, skip0, 0.0, mt)
    raw, spec, weights = make_model("mixtral", layers=2, seed=13)
    tokens = random_tokens(spec.vocab_size)
    skip1 = run_oracle(make_config("mixtral", layers=2, moec={"skip_beta": [1.0, 1.0]}), weights, tokens)["logits"]
    top1 = run_oracle(make_config("mixtral", layers=2, top_k=1), weights, tokens)["logits"]
    assert_close(skip1, top1, 1e-12, "skip_beta 1 vs top-1")
    assert_far(skip1, run_oracle(raw, weights, tokens)["logits"], 1e-3, "top-1 vs top-2")


@check("skip_beta: DeepSeek (no renormalization) keeps the raw probability of the kept expert")
def _():
    raw, spec, weights = make_model("deepseek", layers=2, seed=14)
    x = torch.randn(5, spec.hidden_size, dtype=F64, generator=torch.Generator().manual_seed(0))
    logits = ref.linear(x, weights["model.layers.1.mlp.gate.weight"])
    p = torch.softmax(logits, -1)
    s = ref.ModelSpec(make_config("deepseek", layers=2, moec={"skip_beta": [None, 1.0]}), "t")
    experts, w, keep = ref.route_tokens(s, 1, logits, x.view(1, 5, -1), None)
    assert keep[:, 0].all() and not keep[:, 1].any()
    assert_close(w[:, 0], p.max(-1).values, 1e-15, "raw p1")
    assert_close(w[:, 1], torch.zeros(5), 0, "dropped weight")
    # with norm_topk_prob the kept expert gets p1 / (p1 + 1e-20)
    s = ref.ModelSpec(make_config("deepseek", layers=2, norm_topk_prob=True, moec={"skip_beta": [None, 1.0]}), "t")
    _, w, _ = ref.route_tokens(s, 1, logits, x.view(1, 5, -1), None)
    assert_close(w[:, 0], torch.ones(5), 1e-15, "renormalized p1")


@check("skip rule is strict: p2 == beta * p1 keeps expert 2 (tie at beta 1)")
def _():
    s = ref.ModelSpec(make_config("mixtral", layers=1, experts=4, top_k=3, moec={"skip_beta": [1.0]}), "t")
    logits = torch.tensor([[2.0, 0.0, 2.0, -1.0]], dtype=F64)  # p1 == p2 > p3
    experts, w, keep = ref.route_tokens(s, 0, logits, torch.zeros(1, 1, s.hidden_size, dtype=F64), None)
    assert keep.tolist() == [[True, True, False]], keep.tolist()
    assert sorted(experts[0, :2].tolist()) == [0, 2]
    assert_close(w, torch.tensor([[0.5, 0.5, 0.0]], dtype=F64), 1e-15, "weights")


@check("DeepSeek top-1 with norm_topk_prob keeps the raw probability (MoEGate: top_k > 1 and ...)")
def _():
    raw, spec, weights = make_model("deepseek", layers=2, top_k=1, seed=15)
    tokens = random_tokens(spec.vocab_size)
    a = run_oracle(raw, weights, tokens)["logits"]
    b = run_oracle(make_config("deepseek", layers=2, top_k=1, norm_topk_prob=True), weights, tokens)["logits"]
    assert_close(a, b, 0.0, "deepseek")
    # Qwen3-MoE top-1 with norm_topk_prob renormalizes to weight 1 (differs from raw p1)
    raw, spec, weights = make_model("qwen3_moe", layers=2, top_k=1, seed=15)
    a = run_oracle(raw, weights, tokens)["logits"]
    b = run_oracle(make_config("qwen3_moe", layers=2, top_k=1, norm_topk_prob=True), weights, tokens)["logits"]
    assert_far(a, b, 1e-3, "qwen3_moe")


@check("ODP limits: tau 0 == skip_beta; tau_high 1 == no skipping; tau_low 1 == no routed experts")
def _():
    for mt in ["mixtral", "qwen2_moe"]:
        raw, spec, weights = make_model(mt, layers=2, seed=16)
        tokens = random_tokens(spec.vocab_size, S=9)
        base = run_oracle(raw, weights, tokens)["logits"]

        def odp(**kw):
            o = {"enabled_layers": [0, 1], "beta": [0.7, 0.9], "tau_low": 0.0, "tau_high": 0.0}
            o.update(kw)
            return run_oracle(make_config(mt, layers=2, moec={"odp": o}), weights, tokens)["logits"]
        skip = run_oracle(make_config(mt, layers=2, moec={"skip_beta": [0.7, 0.9]}), weights, tokens)["logits"]
        assert_close(odp(), skip, 0.0, mt + " tau 0")
        assert_far(skip, base, 1e-3, mt + " beta matters")
        assert_close(odp(tau_high=1.0), base, 0.0, mt + " tau_high 1")
        zero = {k: (torch.zeros_like(v) if ".experts." in k and ("down_proj" in k or ".w2." in k) else v)
                for k, v in weights.items()}
        assert_close(odp(tau_low=1.0), run_oracle(raw, zero, tokens)["logits"], 1e-12, mt + " tau_low 1")
        # skip_beta on an ODP layer is ignored in favour of ODP's own beta
        o = {"enabled_layers": [0, 1], "beta": [0.7, 0.9], "tau_low": 0.0, "tau_high": 0.0}
        both = run_oracle(make_config(mt, layers=2, moec={"odp": o, "skip_beta": [0.1, 0.1]}), weights, tokens)
        assert_close(both["logits"], skip, 0.0, mt + " odp over skip_beta")


@check("ODP importance: column-sum statistic, positional prior, ranking ties by position")
def _():
    B, nh, S, H = 1, 2, 4, 3
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, nh, S, S, dtype=F64, generator=g)
    scores = scores.masked_fill(torch.triu(torch.ones(S, S, dtype=torch.bool), 1), float("-inf"))
    probs = torch.softmax(scores, -1)
    x = torch.randn(B, S, H, dtype=F64, generator=g)
    imp = ref.odp_token_importance(x, probs, False)
    for t in range(S):
        col = sum(float(probs[0, h, i, t]) for h in range(nh) for i in range(t, S)) / nh
        want = float(x[0, t].abs().sum()) * col / (S - t)
        assert abs(float(imp[0, t]) - want) < 1e-14, (t, float(imp[0, t]), want)
    imp = ref.odp_token_importance(x, probs, True)
    for t in range(S):
        assert abs(float(imp[0, t]) - float(x[0, t].abs().sum()) / (S - t)) < 1e-14
    assert ref.odp_rank(torch.tensor([2.0, 1.0, 2.0, 1.0])) == [1, 3, 0, 2]


@check("GQA: kv head j serves query heads j*g .. j*g+g-1 (not j, j+nkv, ...)")
def _():
    # Two kv heads, four query heads: making kv head 1 all zeros in v must zero query heads 2, 3.
    raw, spec, weights = make_model("mixtral", layers=1, seed=17)
    a = "model.layers.0.self_attn."
    w = dict(weights)
    v = w[a + "v_proj.weight"].clone()
    v[spec.head_dim:] = 0  # kv head 1
    w[a + "v_proj.weight"] = v
    Wt = ref.Weights(w, F64)
    x = torch.randn(1, 5, spec.hidden_size, dtype=F64, generator=torch.Generator().manual_seed(1))
    cos, sin = ref.rope_cos_sin(5, spec.head_dim, spec.rope_theta, F64)
    o_w = w[a + "o_proj.weight"]
    out, _ = ref.self_attention(spec, Wt, 0, x, cos, sin)
    per_head = torch.linalg.lstsq(o_w, out.reshape(-1, spec.hidden_size).t()).solution.t()  # [5, nh*hd]
    hd = spec.head_dim
    assert float(per_head[:, 2 * hd:].abs().max()) < 1e-9, "query heads 2, 3 should read kv head 1"
    assert float(per_head[:, :2 * hd].abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------
# safetensors reader and the command line
# ---------------------------------------------------------------------------------------------

def to_bf16_bits(t):
    """float tensor -> uint16 numpy (truncation; values are chosen exactly representable)."""
    return (t.to(torch.float32).numpy().view(np.uint32) >> 16).astype("<u2")


def write_safetensors(path, tensors, dtype="F32"):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if dtype == "F32":
            blob = t.to(torch.float32).numpy().astype("<f4").tobytes()
        elif dtype == "F16":
            blob = t.to(torch.float16).numpy().astype("<f2").tobytes()
        elif dtype == "BF16":
            blob = to_bf16_bits(t).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def bf16_exact(weights):
    """Round every value to bfloat16 (and keep it in F64) so F32/F16?/BF16 files compare exactly."""
    out = {}
    for k, v in weights.items():
        bits = to_bf16_bits(v).astype(np.uint32) << np.uint32(16)
        out[k] = torch.from_numpy(bits.view(np.float32).astype(np.float64))
    return out


@check("safetensors: known bytes for F32, F16, BF16 (and F64)")
def _():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        # 1.5 = 0x3FC00000 (f32), 0x3E00 (f16), 0x3FC0 (bf16); -2 = 0xC0000000 / 0xC000 / 0xC000
        data = struct.pack("<ff", 1.5, -2.0) + struct.pack("<HH", 0x3E00, 0xC000) + \
            struct.pack("<HH", 0x3FC0, 0xC000) + struct.pack("<d", 0.25)
        header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "b": {"dtype": "F16", "shape": [2, 1], "data_offsets": [8, 12]},
                  "c": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [12, 16]},
                  "d": {"dtype": "F64", "shape": [], "data_offsets": [16, 24]}}
        h = json.dumps(header).encode()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + data)
        t = ref.read_safetensors(path)
        assert t["a"].tolist() == [1.5, -2.0] and t["a"].dtype == np.float32
        assert t["b"].tolist() == [[1.5], [-2.0]] and t["b"].dtype == np.float32
        assert t["c"].tolist() == [[1.5, -2.0]] and t["c"].dtype == np.float32
        assert t["d"].tolist() == 0.25
        for bad_header in [{"a": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}},
                           {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                           {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}]:
            h = json.dumps(bad_header).encode()
            with open(path, "wb") as f:
                f.write(struct.pack("<Q", len(h)) + h + data)
            try:
                ref.read_safetensors(path)
            except ref.OracleError:
                continue
            raise AssertionError("accepted %r" % bad_header)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", 1000) + b"{}")
        try:
            ref.read_safetensors(path)
            raise AssertionError("accepted a truncated header")
        except ref.OracleError:
            pass


@check("checkpoints on disk: F32, BF16, F16 single files and a sharded BF16 one load identically")
def _():
    raw, spec, weights = make_model("qwen2_moe", layers=2, seed=18)
    weights = bf16_exact(weights)
    tokens = random_tokens(spec.vocab_size)
    want = run_oracle(raw, weights, tokens, torch.float32)["logits"]
    with tempfile.TemporaryDirectory() as d:
        for dtype in ["F32", "BF16"]:
            write_safetensors(os.path.join(d, "model.safetensors"), weights, dtype)
            loaded = {k: torch.from_numpy(v) for k, v in ref.load_checkpoint(d).items()}
            got = run_oracle(raw, loaded, tokens, torch.float32)["logits"]
            assert_close(got, want, 0.0, dtype)
        # F16 loses bits of bf16 values with small exponents only; compare loosely
        write_safetensors(os.path.join(d, "model.safetensors"), weights, "F16")
        loaded = {k: torch.from_numpy(v) for k, v in ref.load_checkpoint(d).items()}
        assert_close(run_oracle(raw, loaded, tokens, torch.float32)["logits"], want, 1e-3, "F16")
        os.remove(os.path.join(d, "model.safetensors"))
        names = sorted(weights)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        weight_map = {}
        for shard, shard_names in shards.items():
            write_safetensors(os.path.join(d, shard), {n: weights[n] for n in shard_names}, "BF16")
            weight_map.update({n: shard for n in shard_names})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        loaded = {k: torch.from_numpy(v) for k, v in ref.load_checkpoint(d).items()}
        assert sorted(loaded) == names
        assert_close(run_oracle(raw, loaded, tokens, torch.float32)["logits"], want, 0.0, "sharded")
        weight_map[names[0]] = "model-00002-of-00002.safetensors"  # wrong shard
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        try:
            ref.load_checkpoint(d)
            raise AssertionError("accepted a wrong weight_map")
        except ref.OracleError:
            pass


@check("command line: outputs, sizes, exit codes")
def _():
    raw, spec, weights = make_model("deepseek", layers=3, seed=19)
    tokens = random_tokens(spec.vocab_size, B=2, S=5)
    want = run_oracle(raw, weights, tokens, torch.float32)
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "model")
        os.mkdir(model)
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump(raw, f)
        write_safetensors(os.path.join(model, "model.safetensors"), weights, "F32")
        tok = os.path.join(d, "tokens.json")
        with open(tok, "w") as f:
            json.dump(tokens.tolist(), f)
        out, hid, rout = (os.path.join(d, n) for n in ("logits.bin", "hidden.bin", "router.bin"))
        rc = ref.main(["--model", model, "--tokens", tok, "--out", out, "--hidden-out", hid, "--router-out", rout])
        assert rc == 0, rc
        logits = np.fromfile(out, "<f4").reshape(2, 5, spec.vocab_size)
        assert_close(logits, want["logits"].numpy(), 1e-5, "logits file")  # weights stored as f32
        hidden = np.fromfile(hid, "<f4").reshape(4, 2, 5, spec.hidden_size)
        assert_close(hidden[3], want["hidden"][3].numpy(), 1e-5, "hidden file")
        router = np.fromfile(rout, "<f4")
        assert router.size == 2 * 10 * 4, router.size  # layers 1, 2 are MoE (first_k_dense_replace 1)
        assert_close(router[:40].reshape(10, 4), want["router_logits"][0].numpy(), 1e-5, "router file")
        with open(tok, "w") as f:
            json.dump([[1, 2], [3]], f)
        assert ref.main(["--model", model, "--tokens", tok, "--out", out]) == 2
        with open(tok, "w") as f:
            json.dump([[1, spec.vocab_size]], f)
        assert ref.main(["--model", model, "--tokens", tok, "--out", out]) == 2
        assert ref.main(["--model", os.path.join(d, "nowhere"), "--tokens", tok, "--out", out]) == 2


def main():
    run_checks()
    failed = [r for r in RESULTS if not r[1]]
    print("\n%d checks, %d failed" % (len(RESULTS), len(failed)))
    for name, _, msg in failed:
        print("  FAILED %s: %s" % (name, msg))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
