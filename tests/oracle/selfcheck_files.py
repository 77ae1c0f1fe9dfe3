"""File and command-line checks of self_check.py: the safetensors reader on known bytes and
malformed files, F32/BF16/F16 and sharded checkpoints on disk, and hf_reference's command line
(output files and sizes, exit codes)."""

import json
import os
import struct
import tempfile

import numpy as np
import torch

import hf_reference as ref
from selfcheck_harness import assert_close, check
from selfcheck_models import make_model, random_tokens, run_oracle


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
