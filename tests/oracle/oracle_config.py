"""config.json for the oracle (see hf_reference.py): ModelSpec, the parts of a Hugging Face
config (and of moec's `moec` override object) the forward pass depends on, with the defaults
of the transformers config classes and the per-layer questions (MoE layer? dropped? how many
routed experts?)."""

import json
import os

from oracle_common import OracleError, is_int, is_number

# Per model_type: the routed-expert count field and the defaults of the transformers config
# class (DeepSeek: configuration_deepseek.py) for fields config.json may omit. A default
# num_key_value_heads of None means "= num_attention_heads".
_ARCHS = {
    "mixtral": dict(experts_key="num_local_experts", rms_norm_eps=1e-5, rope_theta=1e6,
                    num_key_value_heads=8),
    "deepseek": dict(experts_key="n_routed_experts", rms_norm_eps=1e-6, rope_theta=10000.0,
                     num_key_value_heads=None),
    "qwen2_moe": dict(experts_key="num_experts", rms_norm_eps=1e-6, rope_theta=10000.0,
                      num_key_value_heads=16),
    "olmoe": dict(experts_key="num_experts", rms_norm_eps=1e-5, rope_theta=10000.0,
                  num_key_value_heads=None),
    "qwen3_moe": dict(experts_key="num_experts", rms_norm_eps=1e-6, rope_theta=10000.0,
                      num_key_value_heads=4),
}

_REQUIRED = object()


class _Fields:
    """Typed access to a JSON object, with messages naming the field."""

    def __init__(self, obj, where):
        self.obj = obj
        self.where = where

    def _fail(self, key, what):
        raise OracleError("%s: field '%s': %s" % (self.where, key, what))

    def int(self, key, default=_REQUIRED, minimum=None):
        v = self.obj.get(key)
        if v is None:
            if default is _REQUIRED:
                self._fail(key, "missing required integer")
            return default
        if not is_int(v):
            self._fail(key, "expected an integer, got %r" % (v,))
        if minimum is not None and v < minimum:
            self._fail(key, "must be >= %d, got %d" % (minimum, v))
        return v

    def number(self, key, default):
        v = self.obj.get(key)
        if v is None:
            return default
        if not is_number(v):
            self._fail(key, "expected a number, got %r" % (v,))
        return float(v)

    def bool(self, key, default):
        v = self.obj.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            self._fail(key, "expected a boolean, got %r" % (v,))
        return v


class ModelSpec:
    """The parts of config.json the forward pass depends on, with per-layer questions."""

    def __init__(self, raw, source="config.json"):
        if not isinstance(raw, dict):
            raise OracleError("%s: top level is not a JSON object" % source)
        f = _Fields(raw, source)
        self.raw = raw
        self.model_type = raw.get("model_type")
        if self.model_type not in _ARCHS:
            raise OracleError("%s: unsupported model_type %r; supported: %s" %
                              (source, self.model_type, ", ".join(_ARCHS)))
        arch = _ARCHS[self.model_type]

        self._parse_sizes(f, raw, source, arch)
        self._parse_head_dim(f, raw, source)
        self._parse_rope(f, raw, source, arch)
        self._parse_sliding_window(raw)
        self._parse_experts(f, raw, source, arch)
        self._parse_layer_kinds(f, raw, source)
        self._parse_attention_layout(f)
        self._parse_moec(raw.get("moec"), source)

    # -- the architecture's fields ----------------------------------------------------------

    def _parse_sizes(self, f, raw, source, arch):
        mt = self.model_type
        self.hidden_size = f.int("hidden_size", minimum=1)
        self.intermediate_size = f.int("intermediate_size", minimum=1)
        self.num_layers = f.int("num_hidden_layers", minimum=1)
        self.num_heads = f.int("num_attention_heads", minimum=1)
        kv_default = arch["num_key_value_heads"] or self.num_heads
        self.num_kv_heads = f.int("num_key_value_heads", default=kv_default, minimum=1)
        if self.num_heads % self.num_kv_heads != 0:
            raise OracleError("%s: num_key_value_heads %d does not divide num_attention_heads %d%s"
                              % (source, self.num_kv_heads, self.num_heads,
                                 "" if "num_key_value_heads" in raw else
                                 " (num_key_value_heads absent: %s's config class default)" % mt))
        self.vocab_size = f.int("vocab_size", minimum=1)
        self.rms_norm_eps = f.number("rms_norm_eps", arch["rms_norm_eps"])
        self.tie_word_embeddings = f.bool("tie_word_embeddings", False)

        hidden_act = raw.get("hidden_act", "silu")
        if hidden_act not in ("silu", "swish"):
            raise OracleError("%s: hidden_act %r is not implemented (only silu)" % (source, hidden_act))

    def _parse_head_dim(self, f, raw, source):
        # head_dim: OlmoeAttention always uses hidden_size // num_heads; the others use the
        # config's head_dim when it is set, else hidden_size // num_heads.
        mt = self.model_type
        head_dim_field = raw.get("head_dim")
        if mt == "olmoe" or head_dim_field is None:
            if self.hidden_size % self.num_heads != 0:
                raise OracleError("%s: num_attention_heads %d does not divide hidden_size %d" %
                                  (source, self.num_heads, self.hidden_size))
            self.head_dim = self.hidden_size // self.num_heads
            if mt == "olmoe" and head_dim_field is not None and head_dim_field != self.head_dim:
                raise OracleError("%s: OLMoE uses head_dim = hidden_size / heads = %d, config says %r"
                                  % (source, self.head_dim, head_dim_field))
        else:
            self.head_dim = f.int("head_dim", minimum=1)
        if self.head_dim % 2 != 0:
            raise OracleError("%s: head_dim %d is odd; RoPE needs an even head_dim" %
                              (source, self.head_dim))

    def _parse_rope(self, f, raw, source, arch):
        # RoPE: only the default (unscaled) rotary embedding is implemented.
        self.rope_theta = f.number("rope_theta", arch["rope_theta"])
        if raw.get("rope_scaling") is not None:
            raise OracleError("%s: rope_scaling %r is not implemented" % (source, raw["rope_scaling"]))
        rope_parameters = raw.get("rope_parameters")  # transformers >= 5 spelling
        if rope_parameters is not None:
            if not isinstance(rope_parameters, dict) or \
                    rope_parameters.get("rope_type", "default") != "default":
                raise OracleError("%s: rope_parameters %r is not implemented" % (source, rope_parameters))
            if "rope_theta" not in raw and rope_parameters.get("rope_theta") is not None:
                self.rope_theta = float(rope_parameters["rope_theta"])

    def _parse_sliding_window(self, raw):
        # Sliding-window attention is not implemented; refuse the configs where it is active.
        mt = self.model_type
        if mt == "mixtral":
            self.sliding_window = raw.get("sliding_window")
        elif mt in ("qwen2_moe", "qwen3_moe") and raw.get("use_sliding_window", False):
            self.sliding_window = raw.get("sliding_window")
        else:
            self.sliding_window = None

    def _parse_experts(self, f, raw, source, arch):
        mt = self.model_type
        # Routed experts.
        self.num_experts = f.int(arch["experts_key"], minimum=1)
        self.top_k = f.int("num_experts_per_tok", minimum=1)
        if mt in ("deepseek", "qwen2_moe", "qwen3_moe"):
            self.moe_intermediate_size = f.int("moe_intermediate_size", minimum=1)
        else:  # Mixtral and OLMoE experts have the (only) intermediate_size
            self.moe_intermediate_size = self.intermediate_size
        # Mixtral always renormalizes the top-k weights (MixtralSparseMoeBlock has no switch).
        self.norm_topk_prob = True if mt == "mixtral" else f.bool("norm_topk_prob", False)

        # Shared experts.
        self.shared_intermediate_size = 0
        if mt == "deepseek":
            n_shared = f.int("n_shared_experts", default=0, minimum=0)  # null: no shared experts
            self.shared_intermediate_size = n_shared * self.moe_intermediate_size
            scoring = raw.get("scoring_func", "softmax")
            if scoring != "softmax":
                raise OracleError("%s: scoring_func %r is not implemented (DeepSeek-MoE v1 uses "
                                  "softmax)" % (source, scoring))
        if mt == "qwen2_moe":
            self.shared_intermediate_size = f.int("shared_expert_intermediate_size", minimum=1)

    def _parse_layer_kinds(self, f, raw, source):
        # Which layers hold a MoE block.
        self.first_k_dense_replace = f.int("first_k_dense_replace", default=0, minimum=0)
        self.moe_layer_freq = f.int("moe_layer_freq", default=1, minimum=1)
        self.decoder_sparse_step = f.int("decoder_sparse_step", default=1, minimum=1)
        mlp_only = raw.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list) or not all(is_int(v) for v in mlp_only):
            raise OracleError("%s: field 'mlp_only_layers': expected a list of integers" % source)
        self.mlp_only_layers = set(mlp_only)

    def _parse_attention_layout(self, f):
        mt = self.model_type
        attention_bias = f.bool("attention_bias", False)
        if mt == "mixtral":
            self.qkv_bias, self.o_bias = False, False
        elif mt == "qwen2_moe":
            # Qwen2MoeAttention: q/k/v always carry a bias, o_proj never. ("qkv_bias" is a
            # moec-documented optional switch, default true.)
            self.qkv_bias, self.o_bias = f.bool("qkv_bias", True), False
        else:
            self.qkv_bias, self.o_bias = attention_bias, attention_bias
        self.qk_norm = {"olmoe": "full_width", "qwen3_moe": "per_head"}.get(mt, "none")
        self.clip_qkv = f.number("clip_qkv", None) if mt == "olmoe" else None

    # -- moec overrides ---------------------------------------------------------------------

    def _layer_list(self, value, key, source):
        if not isinstance(value, list) or len(value) != self.num_layers:
            raise OracleError("%s: field 'moec.%s': expected a list of %d entries" %
                              (source, key, self.num_layers))
        return value

    def _parse_moec(self, moec, source):
        L = self.num_layers
        self.experts_per_layer = [None] * L
        self.dropped_moe_layers = set()
        self.skip_beta = [None] * L
        self.odp = None
        if moec is None:
            return
        if not isinstance(moec, dict):
            raise OracleError("%s: field 'moec': expected an object" % source)
        known = {"format_version", "experts_per_layer", "kept_experts", "dropped_moe_layers",
                 "skip_beta", "odp"}
        unknown = sorted(set(moec) - known)
        if unknown:
            raise OracleError("%s: field 'moec': unknown keys %s" % (source, unknown))
        if moec.get("format_version", 1) != 1:
            raise OracleError("%s: field 'moec.format_version': must be 1" % source)

        if moec.get("dropped_moe_layers") is not None:
            self._parse_dropped(moec["dropped_moe_layers"], source)
        self._parse_expert_counts(moec, source)
        if moec.get("skip_beta") is not None:
            self._parse_skip_beta(moec["skip_beta"], source)
        if moec.get("odp") is not None:
            self._parse_odp(moec["odp"], source)

    def _parse_dropped(self, dropped, source):
        if not isinstance(dropped, list) or not all(is_int(l) for l in dropped):
            raise OracleError("%s: field 'moec.dropped_moe_layers': expected integers" % source)
        for l in dropped:
            if not self.is_architectural_moe_layer(l):
                raise OracleError("%s: field 'moec.dropped_moe_layers': %d is not a MoE layer"
                                  % (source, l))
        self.dropped_moe_layers = set(dropped)

    def _parse_expert_counts(self, moec, source):
        L = self.num_layers
        counts = self._layer_list(moec["experts_per_layer"], "experts_per_layer", source) \
            if moec.get("experts_per_layer") is not None else [None] * L
        kept = self._layer_list(moec["kept_experts"], "kept_experts", source) \
            if moec.get("kept_experts") is not None else [None] * L
        for l in range(L):
            n = counts[l]
            if n is not None and (not is_int(n) or not 0 <= n <= self.num_experts):
                raise OracleError("%s: field 'moec.experts_per_layer[%d]': expected an integer in "
                                  "[0, %d]" % (source, l, self.num_experts))
            if kept[l] is not None:
                if not isinstance(kept[l], list):
                    raise OracleError("%s: field 'moec.kept_experts[%d]': expected a list" % (source, l))
                if n is not None and n != len(kept[l]):
                    raise OracleError("%s: moec.experts_per_layer[%d] = %d but kept_experts[%d] "
                                      "has %d entries" % (source, l, n, l, len(kept[l])))
                n = len(kept[l])  # kept_experts only says which originals they were
            self.experts_per_layer[l] = n

    def _parse_skip_beta(self, skip_beta, source):
        betas = self._layer_list(skip_beta, "skip_beta", source)
        for l, b in enumerate(betas):
            if b is not None and (not is_number(b) or not 0 <= b <= 1):
                raise OracleError("%s: field 'moec.skip_beta[%d]': expected a number in [0, 1]"
                                  % (source, l))
            self.skip_beta[l] = None if b is None else float(b)

    def _parse_odp(self, odp, source):
        if not isinstance(odp, dict):
            raise OracleError("%s: field 'moec.odp': expected an object" % source)
        unknown = sorted(set(odp) - {"enabled_layers", "beta", "tau_low", "tau_high",
                                     "positional_prior"})
        if unknown:
            raise OracleError("%s: field 'moec.odp': unknown keys %s" % (source, unknown))
        of = _Fields(odp, source + " (moec.odp)")
        enabled = odp.get("enabled_layers") or []
        if not isinstance(enabled, list) or not all(is_int(l) for l in enabled):
            raise OracleError("%s: field 'moec.odp.enabled_layers': expected integers" % source)
        betas = self._layer_list(odp.get("beta"), "odp.beta", source)
        for l in enabled:
            if not self.is_moe_layer(l):
                raise OracleError("%s: moec.odp.enabled_layers: %d is not a MoE layer" % (source, l))
            if not is_number(betas[l]):
                raise OracleError("%s: moec.odp.beta[%d] must be a number (layer %d is enabled)"
                                  % (source, l, l))
        self.odp = dict(
            enabled_layers=set(enabled),
            beta=[None if b is None else float(b) for b in betas],
            tau_low=of.number("tau_low", 0.0),
            tau_high=of.number("tau_high", 0.02),
            positional_prior=of.bool("positional_prior", False),
        )

    # -- per-layer questions ----------------------------------------------------------------

    def is_architectural_moe_layer(self, l):
        """The architecture's own rule (as the transformers decoder-layer constructors)."""
        if not 0 <= l < self.num_layers:
            return False
        if self.model_type == "deepseek":
            return l >= self.first_k_dense_replace and l % self.moe_layer_freq == 0
        if self.model_type in ("qwen2_moe", "qwen3_moe"):
            return l not in self.mlp_only_layers and (l + 1) % self.decoder_sparse_step == 0
        return True  # mixtral, olmoe

    def is_dropped(self, l):
        return l in self.dropped_moe_layers

    def is_moe_layer(self, l):
        return self.is_architectural_moe_layer(l) and not self.is_dropped(l)

    def num_routed_experts(self, l):
        if not self.is_moe_layer(l):
            return 0
        n = self.experts_per_layer[l]
        return self.num_experts if n is None else n

    def layer_top_k(self, l):
        return min(self.top_k, self.num_routed_experts(l))

    def odp_enabled(self, l):
        return self.odp is not None and l in self.odp["enabled_layers"]


def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as e:
        raise OracleError("cannot read %s: %s" % (path, e))
    except ValueError as e:
        raise OracleError("%s: malformed JSON: %s" % (path, e))
    return ModelSpec(raw, path)
