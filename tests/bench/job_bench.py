#!/usr/bin/env python3
"""Whole-job benchmark (issue #19): `moec eval` and a GPTQ job on a mid-size random Mixtral,
against the GEMM rate and a PyTorch eager forward measured in the same run, with the same threads.

    .venv/bin/python3 tests/bench/job_bench.py [--build build] [--work DIR] [--quick] [--only PART]

The model (written by `moec make-tiny-model` with its shape flags): 4 layers, hidden 1024, 16
heads (4 KV heads), 8 experts of width 2816, top-2, bf16 weights, 0.29 B parameters. The text is
/usr/share/common-licenses. --quick runs a small shape in seconds (CTest's bench.job).

Every figure is printed as a ratio to what this run measured:
- eval: tokens/s at 48 and 336 windows of 512 tokens (fp32), and at 48 in bf16; counted FLOPs
  per token (every linear, attention over the causal half, router, head) times tokens/s over the
  GEMM rate of the same dtype; against tests/bench/eager_forward.py on the same windows' shape.
- gptq job: `moec run` of gptq (W4 g128, 32 x 128 calibration tokens) + export with 1 worker;
  its roofline is the FLOPs the job needs at the fp32 GEMM rate: one pass through each layer
  with the quantized weights, the Hessians (X^T X per distinct input) and the solves (lazy
  updates 2 out in^2 and the factorisation 2/3 in^3 per linear), over the job's wall time.
- calibrate, calibrate + quant_loss, calibrate + expert_prune (layerwise, keep E - 2) and
  prune_weights (Wanda 50%), likewise (other_jobs() says what each needs).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

FULL = dict(layers=4, hidden=1024, heads=16, kv_heads=4, experts=8, width=2816, top_k=2,
            seqlen=512, windows=(48, 336), calib=(32, 128))
QUICK = dict(layers=2, hidden=256, heads=4, kv_heads=2, experts=4, width=512, top_k=2,
             seqlen=128, windows=(4, 8), calib=(8, 64))


def run(cmd, **kw):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit("job_bench: %s failed (%d):\n%s%s" % (" ".join(cmd), p.returncode, p.stdout[-3000:],
                                                       p.stderr[-3000:]))
    return p.stdout, time.perf_counter() - t0


def forward_flops_per_token(s, seqlen, vocab):
    """Counted FLOPs of one token through the model (multiply-add = 2)."""
    h, hd = s["hidden"], s["hidden"] // s["heads"]
    kv = s["kv_heads"] * hd
    attn_linears = 2 * h * (h + 2 * kv + h)
    attn_core = 2 * 2 * ((seqlen + 1) / 2) * h  # q k^T and p v over the causal half
    router = 2 * h * s["experts"]
    experts = s["top_k"] * 3 * 2 * h * s["width"]
    return s["layers"] * (attn_linears + attn_core + router + experts) + 2 * h * vocab


def gptq_job_flops(s, tokens, seqlen, vocab):
    """FLOPs a GPTQ job needs: one pass with quantized weights, Hessians, solves."""
    h, hd = s["hidden"], s["hidden"] // s["heads"]
    kv, f, e = s["kv_heads"] * hd, s["width"], s["experts"]
    rows = tokens * s["top_k"] / e  # tokens per expert, on average

    def solve(out, inp):
        return 2 * out * inp * inp

    def factor(inp):
        return 2 / 3 * inp ** 3

    hess = 2 * tokens * h * h * 2 + e * (2 * rows * h * h + 2 * rows * f * f)
    solves = (solve(h, h) * 2 + solve(kv, h) * 2 + factor(h) * 2
              + e * (2 * solve(f, h) + solve(h, f) + factor(h) + factor(f)))
    per_layer = hess + solves
    fwd = forward_flops_per_token(s, seqlen, vocab) * tokens
    return s["layers"] * per_layer + fwd


def other_jobs(s, tokens, seqlen, vocab):
    """(name, stages YAML, FLOPs the job needs) of the forward-dominated jobs."""
    h, f, e, k, L = s["hidden"], s["width"], s["experts"], s["top_k"], s["layers"]
    one_pass = forward_flops_per_token(s, seqlen, vocab) * tokens
    expert_per_token = 3 * 2 * h * f  # one expert's three linears on one token
    calib = "  - {id: stats, kind: calibrate}\n"
    return [
        # One pass; each layer's output is stored for the layers after it.
        ("calibrate", calib, one_pass),
        # + per layer the experts' original outputs and those at each of the 2 widths, on the
        # rows routed to them (MC-MoE's RTN on every expert).
        ("calibrate + quant_loss", calib + "  - {id: loss, kind: quant_loss, needs: [stats], "
         "with: {bits: [2, 3], group_size: 128}}\n",
         one_pass + L * tokens * k * expert_per_token * 3),
        # + per layer every expert on every token (candidates combine their outputs).
        ("calibrate + expert_prune", calib + "  - {id: prune, kind: expert_prune, needs: [stats], "
         "with: {keep: %d, mode: layerwise, batch_size: 8}}\n" % max(1, e - 2),
         one_pass + L * tokens * e * expert_per_token),
        # Wanda's statistics from the unpruned layer and the pruned layer's output: two passes.
        ("prune_weights (wanda)", "  - {id: slim, kind: prune_weights, with: {method: wanda, "
         "sparsity: 0.5, pattern: unstructured}}\n", 2 * one_pass),
    ]


def run_job(moec, args, s, tag, stages):
    samples, seqlen = s["calib"]
    recipe = os.path.join(args.work, "job.yaml")
    data = os.path.join(args.work, "data-" + tag)
    shutil.rmtree(data, ignore_errors=True)
    with open(recipe, "w") as f:
        f.write("name: bench-%s\nmodel: %s\noutput: %s\n" % (tag, args.model,
                                                             os.path.join(args.work, "out-" + tag)))
        f.write("calibration: {path: %s, samples: %d, seqlen: %d, seed: 0, sampling: random_windows}\n"
                % (args.text, samples, seqlen))
        f.write("workers: 1\nstages:\n" + stages)
    _, wall = run([moec, "run", recipe, "--workers", "1", "--data-dir", data])
    time = job_time(data)
    shutil.rmtree(data, ignore_errors=True)
    return wall, time


def job_time(data):
    """The job's own time breakdown (report.json's "time", docs/cli.md): what moec counted."""
    reports = os.path.join(data, "reports")
    for job in sorted(os.listdir(reports)) if os.path.isdir(reports) else []:
        with open(os.path.join(reports, job, "report.json")) as f:
            return json.load(f).get("time")
    return None


def print_time(time):
    """One line per stage: moec's counted GFLOP, its own GEMM-rate fraction and phase shares."""
    for s in (time or {}).get("stages", []):
        shares = ", ".join("%s %.0f%%" % (p, 100 * v / s["seconds"]) for p, v in s["phases"].items()
                           if p != "commit" and s["seconds"] > 0 and v / s["seconds"] >= 0.01)
        print("    %-10s %6.2f s, counted %6.1f GFLOP: %.2f of its worker's GEMM (%.0f GFLOP/s); %s"
              % (s["stage"], s["seconds"], s["gflop"], s["fraction_of_gemm"], s["gemm_gflops"], shares))


def gemm_rates(py, args):
    out, _ = run([py, os.path.join(HERE, "eager_forward.py"), "--windows", "0"])
    j = json.loads(out)
    return j["gemm_gflops"], j["gemm_bf16_gflops"]


def moec_eval(moec, args, windows, seqlen, dtype):
    out, wall = run([moec, "eval", args.model, "--text", args.text, "--seqlen", str(seqlen),
                     "--max-windows", str(windows), "--dtype", dtype, "--json"])
    return json.loads(out)


def eager(py, args, windows, seqlen, dtype):
    out, _ = run([py, os.path.join(HERE, "eager_forward.py"), "--model", args.model, "--text",
                  args.text, "--seqlen", str(seqlen), "--windows", str(windows), "--dtype", dtype])
    return json.loads(out)


def gptq_job(moec, args, s):
    samples, seqlen = s["calib"]
    recipe = os.path.join(args.work, "gptq.yaml")
    out_dir, data = os.path.join(args.work, "out-gptq"), os.path.join(args.work, "data")
    for d in (out_dir, data):
        shutil.rmtree(d, ignore_errors=True)
    with open(recipe, "w") as f:
        f.write("name: bench-gptq\nmodel: %s\noutput: %s\n" % (args.model, out_dir))
        f.write("calibration: {path: %s, samples: %d, seqlen: %d, seed: 0, sampling: random_windows}\n"
                % (args.text, samples, seqlen))
        f.write("workers: 1\nstages:\n"
                "  - {id: quant, kind: gptq, with: {bits: 4, attn_bits: 4, shared_bits: 4, group_size: 128}}\n"
                "  - {id: out, kind: export, needs: [quant], with: {format: gptq}}\n")
    _, wall = run([moec, "run", recipe, "--workers", "1", "--data-dir", data])
    return wall, job_time(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default="/tmp/moec_job_bench")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("eval", "gptq", "jobs"),
                    help="run one part: the eval comparison, the GPTQ job, or the other jobs")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    moec = os.path.join(args.build, "client", "moec")
    os.makedirs(args.work, exist_ok=True)
    args.model = os.path.join(args.work, "model-quick" if args.quick else "model")
    args.text = os.path.join(args.work, "text.txt")
    if not os.path.exists(args.model):
        run([moec, "make-tiny-model", args.model, "--arch", "mixtral", "--layers", str(s["layers"]),
             "--hidden", str(s["hidden"]), "--heads", str(s["heads"]), "--kv-heads", str(s["kv_heads"]),
             "--experts", str(s["experts"]), "--expert-width", str(s["width"]), "--top-k",
             str(s["top_k"]), "--dtype", "BF16"])
    with open(args.text, "wb") as out:
        lic = "/usr/share/common-licenses"
        for name in sorted(os.listdir(lic)):
            path = os.path.join(lic, name)
            if os.path.isfile(path):
                out.write(open(path, "rb").read())
    vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
    seqlen = s["seqlen"]
    per_token = forward_flops_per_token(s, seqlen, vocab)
    print("job_bench: mixtral, %d layers, hidden %d, %d experts of width %d, top-%d; %.1f MFLOP per "
          "token at seqlen %d" % (s["layers"], s["hidden"], s["experts"], s["width"], s["top_k"],
                                  per_token / 1e6, seqlen))

    m = measure(moec, args, s, vocab)
    print_report(s, per_token, vocab, m)


def measure(moec, args, s, vocab):
    """Runs everything (or args.only); returns the figures (GEMM rates: the better of before and
    after)."""
    seqlen, (few, many) = s["seqlen"], s["windows"]
    want = lambda part: args.only in (None, part)
    m = {}
    gemm32, gemm16 = gemm_rates(args.python, args)
    if want("eval"):
        m["e_few"] = moec_eval(moec, args, few, seqlen, "fp32")
        m["e_many"] = moec_eval(moec, args, many, seqlen, "fp32")
        m["e_bf16"] = moec_eval(moec, args, few, seqlen, "bf16")
        m["r_fp32"] = eager(args.python, args, few, seqlen, "fp32")
        m["r_bf16"] = eager(args.python, args, few, seqlen, "bf16")
    samples, cseq = s["calib"]
    m["tokens"], m["cseq"] = samples * cseq, cseq
    if want("gptq"):
        m["job_s"], m["job_time"] = gptq_job(moec, args, s)
    if want("jobs"):
        m["jobs"] = [(name, *run_job(moec, args, s, "job%d" % i, stages), need)
                     for i, (name, stages, need) in enumerate(other_jobs(s, m["tokens"], m["cseq"], vocab))]
    g2, g16b = gemm_rates(args.python, args)
    m["gemm32"], m["gemm16"] = max(gemm32, g2), max(gemm16, g16b)
    return m


def print_report(s, per_token, vocab, m):
    gemm32, gemm16 = m["gemm32"], m["gemm16"]
    print("GEMM 4096^2: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s (best of before and after)"
          % (gemm32, gemm16))
    if "e_few" in m:
        print_eval(s, per_token, m)
    if "job_s" in m:
        need = gptq_job_flops(s, m["tokens"], m["cseq"], vocab)
        roof = need / (gemm32 * 1e9)
        print("gptq job (W4 g128, %d calibration tokens, 1 worker, gptq + export):" % m["tokens"])
        print("  wall %.1f s; needs %.0f GFLOP, %.1f s at the GEMM rate: %.2f of roofline "
              "(issue #19: >= 0.5)" % (m["job_s"], need / 1e9, roof, roof / m["job_s"]))
        print_time(m["job_time"])
    if "jobs" in m:
        print("other jobs (1 worker, the same calibration tokens; issue #19: each >= 0.4 of roofline):")
        for name, wall, time, flops in m["jobs"]:
            t = flops / (gemm32 * 1e9)
            print("  %-26s wall %5.1f s; needs %6.0f GFLOP, %5.2f s at the GEMM rate: %.2f of roofline"
                  % (name, wall, flops / 1e9, t, t / wall))
            print_time(time)


def print_eval(s, per_token, m):
    seqlen, (few, many) = s["seqlen"], s["windows"]
    gemm32, gemm16 = m["gemm32"], m["gemm16"]
    e_few, e_many, e_bf16, r_fp32, r_bf16 = m["e_few"], m["e_many"], m["e_bf16"], m["r_fp32"], m["r_bf16"]

    def line(name, r, gemm):
        rate = r["tokens_per_second"] * per_token / 1e9
        print("  %-26s %8.0f tokens/s  %6.1f GFLOP/s  %.2f of GEMM" % (name, r["tokens_per_second"], rate,
                                                                     rate / gemm))
    print("eval (%d-token windows):" % seqlen)
    line("moec eval %d windows fp32" % few, e_few, gemm32)
    line("moec eval %d windows fp32" % many, e_many, gemm32)
    line("moec eval %d windows bf16" % few, e_bf16, gemm16)
    line("eager %d windows fp32" % few, r_fp32, gemm32)
    line("eager %d windows bf16" % few, r_bf16, gemm16)
    print("  %d vs %d windows: %.2f (issue #19: within 10%%)" % (
        many, few, e_many["tokens_per_second"] / e_few["tokens_per_second"]))
    print("  moec / eager: fp32 %.2f, bf16 %.2f; moec bf16 / eager fp32 %.2f (issue #19: >= 2.5)" % (
        e_few["tokens_per_second"] / r_fp32["tokens_per_second"],
        e_bf16["tokens_per_second"] / r_bf16["tokens_per_second"],
        e_bf16["tokens_per_second"] / r_fp32["tokens_per_second"]))
    print("  perplexity fp32 %.4f, bf16 %.4f (%+.3f%%)" % (
        e_few["perplexity"], e_bf16["perplexity"],
        100 * (e_bf16["perplexity"] / e_few["perplexity"] - 1)))


if __name__ == "__main__":
    main()
