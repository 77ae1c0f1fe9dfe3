"""Where the activation chain goes (issue #22, docs/data_plane.md "The activation chain"): the
bytes of task outputs the coordinator's factor store receives per layer, for an MC-MoE job
(calibrate, quant_loss, allocate_bits, gptq, export) on a mid-size random Mixtral with 2 workers,
with the hidden states in the workers' activation stores (--scratch, the default of `moec run`)
and through the coordinator (workers without --scratch, as before). Read from the coordinator's
counters (the dashboard's /api/overview health: factor_bytes_stored, factor_bytes_held).

    .venv/bin/python tests/bench/factor_bytes_bench.py build [--layers 8] [--hidden 512]
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from moec_cluster import MCMOE_STAGES, Cluster  # noqa: E402

RECIPE = """\
name: bytes
model: mid
output: out
calibration: {path: calib.txt, samples: 64, seqlen: 256, seed: 0, sampling: random_windows}
workers: 2
threads: 1
stages:
""" + MCMOE_STAGES


def health(c):
    req = urllib.request.Request(c.dashboard_url + "/api/overview",
                                 headers={"Authorization": "Bearer " + c.client_token})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["health"]


def run(bin_dir, args, scratch):
    with Cluster(bin_dir, workers=2, dashboard=True, scratch=scratch) as c:
        subprocess.run([c.moec, "make-tiny-model", c.path("mid"), "--arch", "mixtral",
                        "--hidden", str(args.hidden), "--experts", "8",
                        "--expert-width", str(2 * args.hidden), "--layers", str(args.layers)],
                       check=True, capture_output=True)
        with open(c.path("bytes.yaml"), "w") as f:
            f.write(RECIPE)
        start = time.time()
        c.cli("submit", c.path("bytes.yaml"), "--watch")
        seconds = time.time() - start
        h = health(c)
        return h["factor_bytes_stored"], h["factor_bytes_held"], seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bin_dir")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    args = p.parse_args()
    # The hidden states between layers: calibrate's chain and gptq's, 64 windows x 256 tokens of
    # F32 each.
    hidden_per_layer = 2 * 64 * 256 * args.hidden * 4
    rows = []
    for name, scratch in (("through the coordinator", False), ("activation stores", True)):
        stored, held, seconds = run(args.bin_dir, args, scratch)
        rows.append((name, stored / args.layers, held / args.layers, seconds))
    print("hidden states: %.2f MiB per layer" % (hidden_per_layer / 2**20))
    print("| bulk outputs | coordinator bytes per layer | held by workers per layer | "
          "coordinator / hidden states | job |")
    print("|---|---:|---:|---:|---:|")
    for name, stored, held, seconds in rows:
        print("| %s | %.1f KiB | %.2f MiB | %.3f%% | %.1f s |" % (
            name, stored / 2**10, held / 2**20, 100 * stored / hidden_per_layer, seconds))


if __name__ == "__main__":
    main()
