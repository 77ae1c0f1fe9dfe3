#!/usr/bin/python3
"""Independent reference forward pass (test oracle) of five Hugging Face MoE architectures.

This file is deliberately self-contained and written from the Hugging Face `transformers`
modeling code (and DeepSeek's remote `modeling_deepseek.py`), not from moec's C++ sources, so
that moec's libtorch forward can be cross-checked against it. It needs only torch and numpy
(Debian's /usr/bin/python3 with torch 1.13); it does not use transformers or safetensors.

Supported `model_type`s: mixtral, deepseek (DeepSeek-MoE v1), qwen2_moe, olmoe, qwen3_moe,
plus moec's `moec` override object in config.json (pruned experts, dropped MoE layers, dynamic
skipping, Online Dynamic Pruning). See tests/oracle/README.md for usage and the exact
semantics, including the places where we had to choose.

    /usr/bin/python3 tests/oracle/hf_reference.py --model DIR --tokens TOKENS.json \
        --out LOGITS.bin [--hidden-out HIDDEN.bin] [--router-out ROUTER.bin]

Everything is computed in float32 (or float64 with --dtype float64) whatever the checkpoint
dtype; the outputs are always written as raw little-endian float32.
"""

import argparse
import json
import math
import os
import re
import struct
import sys

import numpy as np
import torch


class OracleError(Exception):
    """A problem with the inputs (checkpoint, config, tokens); reported without a traceback."""


# ---------------------------------------------------------------------------------------------
# safetensors reader
# ---------------------------------------------------------------------------------------------

# The dtypes we decode, with their element size in bytes.
_SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I32": 4}


def _decode_tensor(raw, dtype, shape):
    """raw: 1-D uint8 numpy array holding little-endian elements. Returns a float32/64 array."""
    if dtype == "F32":
        values = raw.view("<f4").astype(np.float32)
    elif dtype == "F64":
        values = raw.view("<f8").astype(np.float64)
    elif dtype == "F16":
        values = raw.view("<f2").astype(np.float32)
    elif dtype == "I32":
        return np.array(raw.view("<i4").reshape(shape), copy=True)
    elif dtype == "BF16":
        # bfloat16 is the upper half of a float32: widen to 32 bits and shift into place.
        widened = raw.view("<u2").astype(np.uint32) << np.uint32(16)
        values = widened.view(np.float32)
    else:
        raise OracleError("unsupported safetensors dtype %r" % dtype)
    return np.array(values.reshape(shape), copy=True)  # own, aligned memory


def read_safetensors(path):
    """Returns {name: numpy array (float32, or float64 for F64)} for every tensor in `path`."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise OracleError("cannot read %s: %s" % (path, e))
    if data.size < 8:
        raise OracleError("%s: too short for a safetensors file" % path)
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if 8 + header_len > data.size:
        raise OracleError("%s: header length %d runs past the end of the file" % (path, header_len))
    try:
        header = json.loads(bytes(data[8:8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise OracleError("%s: malformed JSON header: %s" % (path, e))
    if not isinstance(header, dict):
        raise OracleError("%s: header is not a JSON object" % path)
    data_start = 8 + header_len
    data_len = data.size - data_start
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise OracleError("%s: tensor %r has a malformed header entry %r" % (path, name, info))
        if dtype not in _SAFETENSORS_DTYPES:
            raise OracleError("%s: tensor %r has unsupported dtype %r (supported: %s)" %
                              (path, name, dtype, ", ".join(sorted(_SAFETENSORS_DTYPES))))
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_len:
            raise OracleError("%s: tensor %r has bad shape %r or offsets [%d, %d)" %
                              (path, name, shape, begin, end))
        expected = int(np.prod(shape, dtype=np.int64)) * _SAFETENSORS_DTYPES[dtype]
        if end - begin != expected:
            raise OracleError("%s: tensor %r: %d bytes for shape %r of %s (expected %d)" %
                              (path, name, end - begin, shape, dtype, expected))
        raw = np.asarray(data[data_start + begin:data_start + end])
        tensors[name] = _decode_tensor(raw, dtype, shape)
    return tensors


def load_checkpoint(model_dir):
    """All tensors of a checkpoint directory: model.safetensors.index.json (sharded) when present,
    else model.safetensors. Returns {name: numpy array}."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single_path = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                index = json.load(f)
            weight_map = index["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise OracleError("%s: cannot read weight_map: %s" % (index_path, e))
        if not isinstance(weight_map, dict):
            raise OracleError("%s: weight_map is not an object" % index_path)
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(model_dir, shard)
            shard_tensors = read_safetensors(shard_path)
            for name in [n for n, s in weight_map.items() if s == shard]:
                if name not in shard_tensors:
                    raise OracleError("%s: weight_map puts %r in %s, which does not hold it" %
                                      (index_path, name, shard))
                tensors[name] = shard_tensors[name]
            for name in shard_tensors:
                if weight_map.get(name) != shard:
                    raise OracleError("%s holds %r, which weight_map does not assign to it" %
                                      (shard_path, name))
        return tensors
    if os.path.exists(single_path):
        return read_safetensors(single_path)
    raise OracleError("%s: neither model.safetensors.index.json nor model.safetensors" % model_dir)


# ---------------------------------------------------------------------------------------------
# GPTQ checkpoints
# ---------------------------------------------------------------------------------------------

def _unpack_rows(packed, count, bits):
    """Values of `bits` bits packed along axis 0 of int32 words, as the GPTQ format lays them:
    value i of a column occupies bits [i*bits, (i+1)*bits) of that column's little-endian bit
    stream (word w holds stream bits 32w..32w+31; a 3-bit value may straddle two words)."""
    words = packed.astype(np.int64) & 0xFFFFFFFF
    out = np.zeros((count, words.shape[1]), dtype=np.int64)
    mask = (1 << bits) - 1
    for i in range(count):
        pos = i * bits
        w, s = divmod(pos, 32)
        v = words[w] >> s
        if s + bits > 32:
            v = v | (words[w + 1] << (32 - s))
        out[i] = v & mask
    return out


def dequantize_gptq(tensors, quantization):
    """Replaces every GPTQ module (X.qweight, X.qzeros, X.scales, X.g_idx) by X.weight [out, in]:
    W[o, i] = scales[g_idx[i], o] * (q[i, o] - z[g_idx[i], o]), z the stored zero plus one in
    checkpoint_format "gptq" (v1), as stored in "gptq_v2". The width of each module follows from
    its qweight's shape (mixed-width checkpoints carry per-module `dynamic` overrides)."""
    fmt = quantization.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise OracleError("unsupported GPTQ checkpoint_format %r" % fmt)
    default_bits = quantization.get("bits")
    dynamic = quantization.get("dynamic") or {}
    for name in [n for n in tensors if n.endswith(".qweight")]:
        prefix = name[:-len("qweight")]
        module = prefix[:-1]
        try:
            qweight, qzeros = tensors.pop(name), tensors.pop(prefix + "qzeros")
            scales, g_idx = tensors.pop(prefix + "scales"), tensors.pop(prefix + "g_idx")
        except KeyError as e:
            raise OracleError("GPTQ module %s lacks %s" % (prefix, e))
        # The width: `bits`, or the first `dynamic` override whose regex matches the module
        # (GPTQModel's convention: "+:<regex>" keys, re.match on the module name).
        bits = default_bits
        for key, override in dynamic.items():
            if key.startswith("+:") and re.match(key[2:], module) and "bits" in override:
                bits = override["bits"]
                break
        if bits not in (2, 3, 4, 8):
            raise OracleError("%s: unsupported GPTQ width %r" % (module, bits))
        in_features, out_features = g_idx.shape[0], qweight.shape[1]
        if qweight.shape[0] != (in_features * bits + 31) // 32 or \
                qzeros.shape[1] != (out_features * bits + 31) // 32:
            raise OracleError("%s: qweight %s / qzeros %s do not hold %d x %d values of %d bits" %
                              (module, list(qweight.shape), list(qzeros.shape), in_features,
                               out_features, bits))
        q = _unpack_rows(qweight, in_features, bits)                       # [in, out]
        z = _unpack_rows(np.ascontiguousarray(qzeros.T), out_features, bits).T  # [groups, out]
        if fmt == "gptq":
            z = z + 1
        g = g_idx.astype(np.int64)
        w = (q - z[g]).astype(np.float32) * scales.astype(np.float32)[g]   # [in, out]
        tensors[prefix + "weight"] = np.ascontiguousarray(w.T)
    return tensors


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------

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


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
        if not _is_int(v):
            self._fail(key, "expected an integer, got %r" % (v,))
        if minimum is not None and v < minimum:
            self._fail(key, "must be >= %d, got %d" % (minimum, v))
        return v

    def number(self, key, default):
        v = self.obj.get(key)
        if v is None:
            return default
        if not _is_number(v):
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

        # head_dim: OlmoeAttention always uses hidden_size // num_heads; the others use the
        # config's head_dim when it is set, else hidden_size // num_heads.
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

        # Sliding-window attention is not implemented; refuse the configs where it is active.
        if mt == "mixtral":
            self.sliding_window = raw.get("sliding_window")
        elif mt in ("qwen2_moe", "qwen3_moe") and raw.get("use_sliding_window", False):
            self.sliding_window = raw.get("sliding_window")
        else:
            self.sliding_window = None

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

        # Which layers hold a MoE block.
        self.first_k_dense_replace = f.int("first_k_dense_replace", default=0, minimum=0)
        self.moe_layer_freq = f.int("moe_layer_freq", default=1, minimum=1)
        self.decoder_sparse_step = f.int("decoder_sparse_step", default=1, minimum=1)
        mlp_only = raw.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list) or not all(_is_int(v) for v in mlp_only):
            raise OracleError("%s: field 'mlp_only_layers': expected a list of integers" % source)
        self.mlp_only_layers = set(mlp_only)

        # Attention layout.
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

        self._parse_moec(raw.get("moec"), source)

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
            dropped = moec["dropped_moe_layers"]
            if not isinstance(dropped, list) or not all(_is_int(l) for l in dropped):
                raise OracleError("%s: field 'moec.dropped_moe_layers': expected integers" % source)
            for l in dropped:
                if not self.is_architectural_moe_layer(l):
                    raise OracleError("%s: field 'moec.dropped_moe_layers': %d is not a MoE layer"
                                      % (source, l))
            self.dropped_moe_layers = set(dropped)

        counts = self._layer_list(moec["experts_per_layer"], "experts_per_layer", source) \
            if moec.get("experts_per_layer") is not None else [None] * L
        kept = self._layer_list(moec["kept_experts"], "kept_experts", source) \
            if moec.get("kept_experts") is not None else [None] * L
        for l in range(L):
            n = counts[l]
            if n is not None and (not _is_int(n) or not 0 <= n <= self.num_experts):
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

        if moec.get("skip_beta") is not None:
            betas = self._layer_list(moec["skip_beta"], "skip_beta", source)
            for l, b in enumerate(betas):
                if b is not None and (not _is_number(b) or not 0 <= b <= 1):
                    raise OracleError("%s: field 'moec.skip_beta[%d]': expected a number in [0, 1]"
                                      % (source, l))
                self.skip_beta[l] = None if b is None else float(b)

        if moec.get("odp") is not None:
            odp = moec["odp"]
            if not isinstance(odp, dict):
                raise OracleError("%s: field 'moec.odp': expected an object" % source)
            unknown = sorted(set(odp) - {"enabled_layers", "beta", "tau_low", "tau_high",
                                         "positional_prior"})
            if unknown:
                raise OracleError("%s: field 'moec.odp': unknown keys %s" % (source, unknown))
            of = _Fields(odp, source + " (moec.odp)")
            enabled = odp.get("enabled_layers") or []
            if not isinstance(enabled, list) or not all(_is_int(l) for l in enabled):
                raise OracleError("%s: field 'moec.odp.enabled_layers': expected integers" % source)
            betas = self._layer_list(odp.get("beta"), "odp.beta", source)
            for l in enabled:
                if not self.is_moe_layer(l):
                    raise OracleError("%s: moec.odp.enabled_layers: %d is not a MoE layer" % (source, l))
                if not _is_number(betas[l]):
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


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def read_tokens(path, vocab_size):
    try:
        with open(path) as f:
            tokens = json.load(f)
    except OSError as e:
        raise OracleError("cannot read %s: %s" % (path, e))
    except ValueError as e:
        raise OracleError("%s: malformed JSON: %s" % (path, e))
    if not isinstance(tokens, list) or not tokens or not all(isinstance(r, list) for r in tokens):
        raise OracleError("%s: expected a non-empty JSON array of token-id arrays [B][S]" % path)
    S = len(tokens[0])
    if S == 0 or any(len(r) != S for r in tokens):
        raise OracleError("%s: sequences must be non-empty and of equal length" % path)
    for row in tokens:
        for t in row:
            if not _is_int(t) or not 0 <= t < vocab_size:
                raise OracleError("%s: token %r is not an integer in [0, %d)" % (path, t, vocab_size))
    return torch.tensor(tokens, dtype=torch.int64)


def write_f32(path, tensor):
    np.ascontiguousarray(tensor.detach().cpu().numpy().astype("<f4")).tofile(path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Reference (oracle) forward pass of HF MoE checkpoints; see tests/oracle/README.md")
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--tokens", required=True, help="JSON array of equal-length token-id arrays [B][S]")
    parser.add_argument("--out", required=True, help="logits, raw little-endian float32 [B, S, vocab]")
    parser.add_argument("--hidden-out", help="residual stream, float32 [num_layers+1, B, S, hidden]")
    parser.add_argument("--router-out", help="router logits of the MoE layers, float32, each [B*S, n_l]")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="compute dtype (outputs are float32 either way)")
    parser.add_argument("--strict", action="store_true",
                        help="fail when the checkpoint holds tensors the forward pass does not use")
    args = parser.parse_args(argv)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64

    try:
        spec = load_config(args.model)
        tokens = read_tokens(args.tokens, spec.vocab_size)
        tensors = load_checkpoint(args.model)
        quantization = spec.raw.get("quantization_config") if isinstance(spec.raw, dict) else None
        if isinstance(quantization, dict) and quantization.get("quant_method") == "gptq":
            tensors = dequantize_gptq(tensors, quantization)
        W = Weights(tensors, dtype)
        with torch.no_grad():
            result = forward(spec, W, tokens, dtype)
        unused = W.unused()
        if unused:
            message = "%d checkpoint tensors not used by the forward pass: %s" % (
                len(unused), ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""))
            if args.strict:
                raise OracleError(message)
            print("hf_reference: warning: " + message, file=sys.stderr)
        write_f32(args.out, result["logits"])
        if args.hidden_out:
            write_f32(args.hidden_out, torch.stack(result["hidden"]))
        if args.router_out:
            parts = [r.reshape(-1) for r in result["router_logits"]]
            write_f32(args.router_out, torch.cat(parts) if parts else torch.zeros(0))
    except OracleError as e:
        print("hf_reference: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    sys.exit(main())
