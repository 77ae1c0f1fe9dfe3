"""Checkpoint reading for the oracle (see hf_reference.py): a self-written safetensors reader
(single file or sharded with model.safetensors.index.json) and the GPTQ dequantizer, written
from the formats rather than from moec's C++ or the safetensors package."""

import json
import os
import re
import struct

import numpy as np

from oracle_common import OracleError

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


def _read_header(path, data):
    """The JSON header of the safetensors bytes `data` and the offset where the tensor data
    starts."""
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
    return header, 8 + header_len


def _tensor_entry(path, name, info, data_len):
    """(dtype, shape, begin, end) of one header entry, validated against the data length."""
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
    return dtype, shape, begin, end


def read_safetensors(path):
    """Returns {name: numpy array (float32, or float64 for F64)} for every tensor in `path`."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise OracleError("cannot read %s: %s" % (path, e))
    header, data_start = _read_header(path, data)
    data_len = data.size - data_start
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _tensor_entry(path, name, info, data_len)
        raw = np.asarray(data[data_start + begin:data_start + end])
        tensors[name] = _decode_tensor(raw, dtype, shape)
    return tensors


def _load_sharded(model_dir, index_path):
    """All tensors of a sharded checkpoint, checked against its weight_map both ways."""
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


def load_checkpoint(model_dir):
    """All tensors of a checkpoint directory: model.safetensors.index.json (sharded) when present,
    else model.safetensors. Returns {name: numpy array}."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single_path = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index_path):
        return _load_sharded(model_dir, index_path)
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


def _module_bits(module, default_bits, dynamic):
    """The width of a GPTQ module: `bits`, or the first `dynamic` override whose regex matches
    the module (GPTQModel's convention: "+:<regex>" keys, re.match on the module name)."""
    bits = default_bits
    for key, override in dynamic.items():
        if key.startswith("+:") and re.match(key[2:], module) and "bits" in override:
            bits = override["bits"]
            break
    if bits not in (2, 3, 4, 8):
        raise OracleError("%s: unsupported GPTQ width %r" % (module, bits))
    return bits


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
        bits = _module_bits(module, default_bits, dynamic)
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
