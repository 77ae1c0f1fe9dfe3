"""The scaling model of docs/data_plane.md ("Scaling model") as a script: predicted GPTQ-stage
time per MoE layer and per job for Mixtral-8x7B and DeepSeek-V3 on W GPUs, with the activation
chain through the coordinator (before issue #22) and in the workers' activation stores (after),
and the chunk counts that scale with the gang.

    python3 tests/bench/scaling_model.py [--store-write MIBPS] [--store-read MIBPS]
                                         [--coordinator-write MIBPS] [--coordinator-read MIBPS]

The transfer rates default to what tests/bench/activation_transfer_bench.cc measured on this
project's 2-core VM (docs/benchmarks.md): a worker's activation store written and read locally,
and the coordinator's factor store written (PutFactor + commit) and read (GetFactor) over TCP,
one server for every rank. Compute rates are assumed (no GPU has been lent to the project):
F FLOP/s per GPU, all_to_all 200 GB/s per GPU within a node of 8 and 50 GB/s across nodes.
"""
import argparse

F = 25e12
# MiB/s measured by activation_transfer_bench (docs/benchmarks.md, 2026-12-08, medians of 3).
STORE_WRITE, STORE_READ = 234, 1168
COORDINATOR_WRITE, COORDINATOR_READ = 226, 526
NVLINK, NET = 200e9, 50e9

MODELS = {
    # h, E, f, k, shared width, attention (out, in) with the inputs they share, MoE layers
    "Mixtral-8x7B": dict(h=4096, E=8, f=14336, k=2, fs=0, layers=32, attn_width=4096,
                         attn=[(4096, 4096, "x"), (1024, 4096, "x"), (1024, 4096, "x"),
                               (4096, 4096, "o")]),
    # MLA: q_a, q_b, kv_a (with the decoupled RoPE dims), kv_b, o; 58 MoE layers of 61.
    "DeepSeek-V3": dict(h=7168, E=256, f=2048, k=8, fs=2048, layers=58, attn_width=16384,
                        attn=[(1536, 7168, "x"), (24576, 1536, "qa"), (576, 7168, "x"),
                              (32768, 512, "kva"), (7168, 16384, "o")]),
}


def chunks(windows, W, seqlen, chunk_tokens=4096):
    """GangChunkWindows: at least 8 windows and chunk_tokens tokens, at least 2 chunks per rank."""
    default = max(8, -(-chunk_tokens // seqlen))
    per = max(1, min(default, windows // (2 * W)))
    return -(-windows // per)


def layer(m, W, windows=128, s=2048, before=False, rates=None):
    T = windows * s
    h, E, f, k, fs = m["h"], m["E"], m["f"], m["k"], m["fs"]
    C = 16 if before else chunks(windows, W, s)
    # Data-parallel work (attention, shared expert) and its Gram matrices over distinct inputs.
    inputs = {}
    for out, inp, group in m["attn"]:
        inputs.setdefault(group, inp)
    if fs:
        inputs["shared_in"], inputs["shared_down"] = h, fs
    dp = (2 * T * sum(o * i for o, i, _ in m["attn"]) + 2 * T * s * m["attn_width"]
          + 6 * T * h * fs + 2 * T * sum(i * i for i in inputs.values()))
    expert = (6 * T * k * h * f + 2 * T * k * (h * h + f * f)
              + E * (2 * f * h * h + 2 / 3 * h ** 3 + h * f * f + 2 / 3 * f ** 3))
    # Attention (and shared) solves, largest first onto the least loaded of W ranks.
    solves = sorted([o * i * i for o, i, _ in m["attn"]] + [2 / 3 * i ** 3 for i in inputs.values()]
                    + ([2 * fs * h * h, h * fs * fs] if fs else []), reverse=True)
    load = [0.0] * min(W, len(solves))
    for x in solves:
        load[load.index(min(load))] += x
    compute = dp / F / min(W, C) + expert / F / min(W, E) + max(load) / F
    a2a_bytes = 3 * (T * k / W) * ((W - 1) / W) * (2 * 4 * h + 16)
    off = max(0, W - 8) / W
    a2a = a2a_bytes * ((1 - off) / NVLINK + off / NET)
    chain = 2 * 4 * T * h  # bytes of hidden states per layer: written, then read
    if before:  # every rank's chunks through the one coordinator
        io = chain / 2 / rates["coordinator_write"] + chain / 2 / rates["coordinator_read"]
    else:  # each rank its own chunks, in its own store (the next layer's gang is the same)
        per_rank = chain / 2 / min(W, C)
        io = per_rank / rates["write"] + per_rank / rates["read"]
    return C, compute, a2a_bytes, a2a, chain, io


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--store-write", type=float, default=STORE_WRITE)
    p.add_argument("--store-read", type=float, default=STORE_READ)
    p.add_argument("--coordinator-write", type=float, default=COORDINATOR_WRITE)
    p.add_argument("--coordinator-read", type=float, default=COORDINATOR_READ)
    a = p.parse_args()
    mib = 2**20
    rates = {"write": a.store_write * mib, "read": a.store_read * mib,
             "coordinator_write": a.coordinator_write * mib,
             "coordinator_read": a.coordinator_read * mib}
    print("| model | GPUs | chunks | compute / layer | all_to_all / rank / layer | hidden states / layer "
          "| through the coordinator | in activation stores | job before | job after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in MODELS.items():
        for W in (1, 8, 32, 256):
            C, compute, a2a_b, a2a, chain, io = layer(m, W, rates=rates)
            _, compute_b, _, a2a_old, _, io_b = layer(m, W, before=True, rates=rates)
            job_b = m["layers"] * (compute_b + a2a_old + io_b)
            job_a = m["layers"] * (compute + a2a + io)
            print("| %s | %d | %d | %.2f s | %s | %.1f GiB | %.2f s | %.2f s | %.1f min | %.1f min |" % (
                name, W, C, compute, "—" if W == 1 else "%.1f GiB, %.2f s" % (a2a_b / 2**30, a2a),
                chain / 2**30, io_b, io, job_b / 60, job_a / 60))


if __name__ == "__main__":
    main()
