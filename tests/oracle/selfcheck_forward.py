"""Forward-pass checks of self_check.py: the oracle against the naive implementation
(selfcheck_naive.py) for every architecture and moec override, float32 against float64, and
exact equivalences (one expert == dense, dropped == zeroed, skip_beta and ODP limits, DeepSeek
top-1, GQA head mapping, ODP token importance)."""

import torch

import hf_reference as ref
from selfcheck_harness import assert_close, assert_far, check
from selfcheck_models import ARCHS, F64, make_config, make_model, make_weights, random_tokens, run_oracle
from selfcheck_naive import naive_forward


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
