// The CLI commands that run libtorch (`moec eval`, `make-tiny-model --trained`), built as the
// module libmoec_torch_commands.so that `moec` loads on first use (torch_commands.cc), so that
// every other command starts without loading libtorch.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/eval.h"
#include "client/progress_bar.h"
#include "tools/trainer.h"

namespace moec::client::cli {
namespace {

int TorchMakeTrainedTinyModel(const Args& args, const std::string& dir, const TinyModelFlags& f) {
  tools::TrainOptions o;
  o.arch = args.Get("arch");
  if (f.layers > 0) o.layers = static_cast<int>(f.layers);
  if (f.experts > 0) o.experts = static_cast<int>(f.experts);
  if (f.steps > 0) o.steps = static_cast<int>(f.steps);
  o.top_k = std::min(o.top_k, o.experts);
  o.seed = f.seed;
  o.corpus_files = args.All("corpus");
  if (absl::Status s = o.Validate(); !s.ok()) return Error(kUsage, s);
  ProgressBar bar("train");
  absl::StatusOr<tools::TrainReport> r = tools::TrainOrReuseTinyModel(
      o, dir, [&](const tools::TrainProgress& p) { bar.Update(p.step, p.steps); });
  if (!r.ok()) {
    return Error(absl::IsFailedPrecondition(r.status()) || absl::IsNotFound(r.status()) ? kUsage : kJobFailed,
                 r.status());
  }
  std::printf("%s a trained tiny %s model in %s: %d steps, %.0f s; held-out perplexity %.2f "
              "(unigram baseline %.2f), router entropy %.2f of uniform\n",
              r->reused ? "reused" : "wrote", o.arch.c_str(), dir.c_str(), r->steps, r->seconds,
              r->heldout_perplexity, r->unigram_perplexity, r->router_entropy);
  return kOk;
}

int TorchCmdEval(const Args& args) {
  if (args.positional.size() != 1 || args.Get("text").empty()) {
    return Error(kUsage, absl::InvalidArgumentError(
                             "usage: moec eval MODEL --text FILE [--seqlen N] [--max-windows K] "
                             "[--dtype fp32|bf16] [--text-field F] [--json]"));
  }
  EvalOptions o;
  o.model = args.positional[0];
  o.text = args.Get("text");
  o.text_field = args.Get("text-field", o.text_field);
  o.dtype = args.Get("dtype", o.dtype);
  for (auto [flag, out, lo] : {std::tuple<const char*, int64_t*, int64_t>{"seqlen", &o.seqlen, 2},
                               {"max-windows", &o.max_windows, 0}}) {
    const std::string v = args.Get(flag);
    if (!v.empty() && (!absl::SimpleAtoi(v, out) || *out < lo)) {
      return Error(kUsage, absl::InvalidArgumentError(absl::StrCat(
                               "eval: --", flag, " must be an integer >= ", lo, ", got '", v, "'")));
    }
  }
  ProgressBar bar("eval");
  absl::StatusOr<EvalReport> r =
      EvaluatePerplexity(o, [&](int64_t done, int64_t total) { bar.Update(done, total); });
  if (!r.ok()) {
    const bool usage = absl::IsInvalidArgument(r.status()) || absl::IsNotFound(r.status()) ||
                       absl::IsFailedPrecondition(r.status()) || absl::IsUnimplemented(r.status());
    return Error(usage ? kUsage : kJobFailed, r.status());
  }
  if (args.Has("json")) {
    std::printf("%s\n", EvalReportJson(*r).dump().c_str());
  } else {
    std::printf("perplexity %.4f  (mean NLL %.4f over %lld windows of %lld tokens, %s, %.1f s, "
                "%.0f tokens/s)\n",
                r->perplexity, r->mean_nll, static_cast<long long>(r->windows),
                static_cast<long long>(r->seqlen), r->dtype.c_str(), r->seconds,
                r->tokens_per_second);
  }
  return kOk;
}

}  // namespace
}  // namespace moec::client::cli

// The module's entry points (looked up by name with dlsym).
extern "C" __attribute__((visibility("default"))) int moec_torch_eval(
    const moec::client::Args& args) {
  return moec::client::cli::TorchCmdEval(args);
}

extern "C" __attribute__((visibility("default"))) int moec_torch_make_trained_tiny_model(
    const moec::client::Args& args, const std::string& dir,
    const moec::client::cli::TinyModelFlags& flags) {
  return moec::client::cli::TorchMakeTrainedTinyModel(args, dir, flags);
}
