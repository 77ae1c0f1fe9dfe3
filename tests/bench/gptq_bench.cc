// GPTQ solve throughput on Mixtral-sized weights against the GEMM throughput measured in the same
// process (issue #3: >= 0.5 in fp32; issue #18: >= 0.6).
//
// Shapes: in_features 4096 for both (so one 4096 x 4096 Hessian), out_features 4096 (attention
// q/o projection) and 14336 (expert w1/w3), i.e. W [4096, 4096] and [14336, 4096]; 4 bits,
// group 128, blocksize 128, act-order off and on. The Hessian is accumulated once from random
// correlated inputs (its accumulation is timed and reported separately).
//
// FLOPs counted (quant::CountGptqFlops; derivation in docs/quantization.md): the lazy batch
// updates sum_b 2*out*B*(in - i2_b) ~= out*in^2, the intra-block rank-1 updates out*B*(B-1) per
// block ~= out*in*B, and the factorisation at LAPACK's nominal counts: 2/3 in^3 for moec's
// default (one Cholesky + one triangular inverse), 4/3 in^3 for the reference's
// chol + cholesky_inverse + chol (also run, act-order off, for comparison). The quantizer's
// element work, input copies and permutations are not counted but are in the time.
// Baseline: at::matmul([out, in] x [in, in]) in fp32, best of the repeats.
//
// With --device cuda:N everything (inputs, Hessian, weights, GEMMs) is on that device, GPTQ runs
// its ATen solve there (quant/gptq_aten.cc), and the bf16 GEMM rate is printed as a second
// baseline; times include a synchronization of the device.
//
// Usage: gptq_bench [--repeats N] [--threads N] [--tokens N] [--solve-threads N] [--out N]
//                   [--in N] [--device cpu|cuda:N]
// (--solve-threads: GptqOptions::threads, the per-row loop's threads; default hardware threads)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <functional>
#include <string>
#include <utility>

#include "common/process_tuning.h"
#include "quant/gptq.h"
#include "tests/bench/device_timing.h"

namespace {

using moec::bench::BestOf;
using moec::bench::TimeOnce;

struct Args {
  int repeats = 3;
  int64_t tokens = 8192;
  int solve_threads = 0;
  int64_t only_out = 0;
  int64_t in = 4096;  // smaller with --in (CTest runs it tiny once)
  at::Device device = at::kCPU;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--in") == 0) a.in = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--repeats") == 0) a.repeats = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--threads") == 0) at::set_num_threads(std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--tokens") == 0) a.tokens = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--solve-threads") == 0) a.solve_threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--out") == 0) a.only_out = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--device") == 0) a.device = at::Device(std::string(argv[i + 1]));
  }
  return a;
}

// Hessian of correlated inputs: X = Z M with M = I + 0.05 N(0,1); *seconds: the time its
// accumulation took. False when it failed.
bool AccumulateHessian(const Args& a, moec::quant::HessianAccumulator& acc, double* seconds) {
  at::manual_seed(0);
  const at::TensorOptions on(a.device);
  const at::Tensor mix = at::eye(a.in, on) + 0.05 * at::randn({a.in, a.in}, on);
  const int64_t batch = 2048;
  double hess_s = 0;
  for (int64_t t = 0; t < a.tokens; t += batch) {
    const at::Tensor x = at::matmul(at::randn({std::min(batch, a.tokens - t), a.in}, on), mix);
    bool ok = false;
    hess_s += TimeOnce(a.device, [&] { ok = acc.Add(x, 1).ok(); });
    if (!ok) return false;
  }
  *seconds = hess_s;
  return true;
}

struct Config {
  bool act;
  moec::quant::InverseFactorMethod method;
};

// Times GPTQ on w (best of the repeats) in one configuration and prints its figures against the
// GEMM's. False when GPTQ failed.
bool BenchGptq(const Args& a, const at::Tensor& w, const at::Tensor& hessian, Config cfg,
               const std::function<double()>& gemm_once, double gemm_flops) {
  const int64_t out = w.size(0), in = a.in;
  const moec::quant::GptqFlops flops = moec::quant::CountGptqFlops(out, in, 128, cfg.method);
  moec::quant::GptqOptions o;
  o.quantizer.bits = 4;
  o.groupsize = 128;
  o.actorder = cfg.act;
  o.inverse_factor = cfg.method;
  o.threads = a.solve_threads;
  moec::quant::GptqResult best_r;
  double best = 1e30;
  double gemm_s = 1e30;
  for (int r = 0; r < a.repeats; ++r) {
    gemm_s = std::min(gemm_s, gemm_once());  // alternating: a drifting machine moves both alike
    absl::StatusOr<moec::quant::GptqResult> res;
    const double s = TimeOnce(a.device, [&] { res = moec::quant::GptqQuantize(w, hessian, o); });
    if (!res.ok()) {
      std::fprintf(stderr, "gptq: %s\n", std::string(res.status().message()).c_str());
      return false;
    }
    if (s < best) {
      best = s;
      best_r = std::move(*res);
    }
  }
  const double gemm_gflops = gemm_flops / gemm_s / 1e9;
  const double gflops = flops.total() / best / 1e9;
  const auto& t = best_r.seconds;
  const double solve_s = t.blocks + t.lazy_update;
  const double solve_gflops = (flops.lazy_update + flops.intra_block) / solve_s / 1e9;
  const bool ref = cfg.method == moec::quant::InverseFactorMethod::kReference;
  std::printf("  GPTQ act-order %-3s%s: %.3f s, %.1f GFLOP/s counted (%.1f GFLOP: lazy %.1f, "
              "intra-block %.1f, factorisation %.1f), GEMM alongside %.1f GFLOP/s, ratio %.2f "
              "(issue #18's bar: >= 0.6)\n",
              cfg.act ? "on" : "off", ref ? ", reference factorisation" : "", best, gflops,
              flops.total() / 1e9, flops.lazy_update / 1e9, flops.intra_block / 1e9,
              flops.factorization / 1e9, gemm_gflops, gflops / gemm_gflops);
  std::printf("    phases: prepare %.3f s, factorisation %.3f s (%.1f GFLOP/s), blocks %.3f s, "
              "lazy updates %.3f s (%.1f GFLOP/s), finish %.3f s; blocked solve alone "
              "(blocks + lazy) %.1f GFLOP/s, ratio %.2f; loss %.4g\n",
              t.prepare, t.factorization, flops.factorization / t.factorization / 1e9,
              t.blocks, t.lazy_update, flops.lazy_update / t.lazy_update / 1e9, t.finish,
              solve_gflops, solve_gflops / gemm_gflops, best_r.total_loss);
  return true;
}

// The GEMM baseline and GPTQ for W [out, in]. False when GPTQ failed.
bool BenchShape(const Args& a, int64_t out, const at::Tensor& hessian, double hess_s,
                double hess_flops) {
  const int64_t in = a.in;
  const at::Tensor w = at::randn({out, in}, at::TensorOptions(a.device));
  const at::Tensor b = at::randn({in, in}, at::TensorOptions(a.device));
  at::matmul(w, b);  // warm up
  const double gemm_s = BestOf(a.repeats, a.device, [&] { at::matmul(w, b); });
  const double gemm_gflops = 2.0 * out * in * in / gemm_s / 1e9;
  std::printf("\nW [%ld, %ld]: GEMM [%ld,%ld]x[%ld,%ld] %.3f s, %.1f GFLOP/s\n",
              static_cast<long>(out), static_cast<long>(in), static_cast<long>(out),
              static_cast<long>(in), static_cast<long>(in), static_cast<long>(in), gemm_s,
              gemm_gflops);
  if (!a.device.is_cpu()) {
    const at::Tensor wb = w.to(at::kBFloat16), bb = b.to(at::kBFloat16);
    at::matmul(wb, bb);
    const double bf16_s = BestOf(a.repeats, a.device, [&] { at::matmul(wb, bb); });
    const double bf16_gflops = 2.0 * out * in * in / bf16_s / 1e9;
    std::printf("  GEMM in bf16: %.4f s, %.1f GFLOP/s (GPTQ's fp32 solve below as a fraction of "
                "it: multiply its ratio by %.3f)\n",
                bf16_s, bf16_gflops, gemm_gflops / bf16_gflops);
  }
  if (out == 4096) {
    const double hg = hess_flops / hess_s / 1e9;
    std::printf("  Hessian accumulation (%ld tokens, X^T X): %.3f s, %.1f GFLOP/s, ratio %.2f\n",
                static_cast<long>(a.tokens), hess_s, hg, hg / gemm_gflops);
  }
  for (Config cfg : {Config{false, moec::quant::InverseFactorMethod::kReversedCholesky},
                     Config{true, moec::quant::InverseFactorMethod::kReversedCholesky},
                     Config{false, moec::quant::InverseFactorMethod::kReference}}) {
    const auto gemm_once = [&] { return TimeOnce(a.device, [&] { at::matmul(w, b); }); };
    if (!BenchGptq(a, w, hessian, cfg, gemm_once, 2.0 * out * in * in)) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  moec::UsePassiveThreadWait(argv);  // as moec-worker does: idle OpenMP threads sleep
  const Args a = ParseArgs(argc, argv);
  std::printf("gptq_bench: fp32, in_features %ld, group 128, blocksize 128, 4 bits, repeats %d, "
              "at::get_num_threads %d, device %s\n",
              static_cast<long>(a.in), a.repeats, at::get_num_threads(), a.device.str().c_str());
  moec::quant::HessianAccumulator acc(a.in, a.device);
  double hess_s = 0;
  if (!AccumulateHessian(a, acc, &hess_s)) return 1;
  const double hess_flops = 2.0 * static_cast<double>(a.tokens) * a.in * a.in;
  const std::vector<int64_t> outs =
      a.only_out != 0 ? std::vector<int64_t>{a.only_out} : std::vector<int64_t>{4096, 14336};
  for (int64_t out : outs) {
    if (!BenchShape(a, out, acc.hessian(), hess_s, hess_flops)) return 1;
  }
  return 0;
}
