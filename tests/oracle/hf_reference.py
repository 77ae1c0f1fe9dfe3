#!/usr/bin/env python3
"""Independent reference forward pass (test oracle) of five Hugging Face MoE architectures.

The oracle is deliberately self-contained and written from the Hugging Face `transformers`
modeling code (and DeepSeek's remote `modeling_deepseek.py`), not from moec's C++ sources, so
that moec's libtorch forward can be cross-checked against it. It needs only torch and numpy
(the project's .venv python with its torch, deploy/requirements.txt); it does not use transformers or safetensors.

Supported `model_type`s: mixtral, deepseek (DeepSeek-MoE v1), qwen2_moe, olmoe, qwen3_moe,
plus moec's `moec` override object in config.json (pruned experts, dropped MoE layers, dynamic
skipping, Online Dynamic Pruning). See tests/oracle/README.md for usage and the exact
semantics, including the places where we had to choose.

    .venv/bin/python3 tests/oracle/hf_reference.py --model DIR --tokens TOKENS.json \
        --out LOGITS.bin [--hidden-out HIDDEN.bin] [--router-out ROUTER.bin]

Everything is computed in float32 (or float64 with --dtype float64) whatever the checkpoint
dtype; the outputs are always written as raw little-endian float32.

This file is the command line and the importable facade; the implementation lives in the
sibling modules oracle_common.py (OracleError), oracle_checkpoint.py (safetensors, GPTQ),
oracle_config.py (ModelSpec) and oracle_forward.py (the forward pass).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep tests/oracle free of __pycache__
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# The oracle's API, re-exported so that `import hf_reference` gives all of it.
from oracle_common import OracleError, is_int  # noqa: E402
from oracle_checkpoint import (  # noqa: E402
    _unpack_rows, dequantize_gptq, load_checkpoint, read_safetensors)
from oracle_config import ModelSpec, load_config  # noqa: E402
from oracle_forward import (  # noqa: E402
    Weights, apply_rope, dense_mlp, expert_names, forward, linear, load_mlp, moe_block,
    odp_rank, odp_token_importance, rms_norm, rope_cos_sin, rotate_half, route_tokens,
    self_attention, swiglu_mlp)

__all__ = [
    "OracleError", "read_safetensors", "load_checkpoint", "dequantize_gptq", "_unpack_rows",
    "ModelSpec", "load_config", "Weights", "rms_norm", "linear", "swiglu_mlp", "rope_cos_sin",
    "rotate_half", "apply_rope", "self_attention", "odp_token_importance", "odp_rank",
    "route_tokens", "expert_names", "load_mlp", "moe_block", "dense_mlp", "forward",
    "read_tokens", "write_f32", "main",
]


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
            if not is_int(t) or not 0 <= t < vocab_size:
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
