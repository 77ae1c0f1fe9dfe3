"""Unit checks of self_check.py: GPTQ unpacking and dequantization by hand, known values of
the building blocks (RMSNorm, rotate_half, RoPE), and the config parser (MoE-layer rules,
defaults, rejected configs)."""

import math

import numpy as np
import torch

import hf_reference as ref
from selfcheck_harness import assert_close, check
from selfcheck_models import F64, make_config
from selfcheck_naive import n_rope


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


def _check_layer_rules_and_defaults():
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


def _check_rejected_configs():
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


@check("config: MoE-layer rules and defaults")
def _():
    _check_layer_rules_and_defaults()
    _check_rejected_configs()
