// `moec eval`: perplexity of a model directory on a local text file by the GPTQ protocol
// (tokenize the whole text once, non-overlapping windows of seqlen tokens, mean next-token NLL
// per window averaged over windows, exp). Torch-free header; eval.cc runs the model runtime.
#ifndef MOEC_CLIENT_EVAL_H_
#define MOEC_CLIENT_EVAL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace moec::client {

struct EvalOptions {
  std::string model;            // model directory (config.json, safetensors, tokenizer.json)
  std::string text;             // .jsonl / .json / .txt (model/datasets.h)
  std::string text_field = "text";
  int64_t seqlen = 2048;
  int64_t max_windows = 0;      // 0: every complete window
  std::string dtype = "fp32";   // compute dtype: fp32 or bf16
  int64_t activation_budget_bytes = int64_t{1} << 30;
};

struct EvalReport {
  std::string model, text, dtype;
  int64_t seqlen = 0, windows = 0, text_tokens = 0, predicted_tokens = 0;
  double mean_nll = 0, perplexity = 0;
  double seconds = 0;  // forward time (excluding tokenization)
  double tokens_per_second = 0;
  // Where `seconds` went (common/task_profile.h: load, forward, other) and the FLOPs counted.
  struct Phase {
    std::string name;
    double seconds = 0, flops = 0;
  };
  std::vector<Phase> phases;
};

// (done, total) steps of the streaming forward, for progress bars.
using EvalProgressFn = std::function<void(int64_t done, int64_t total)>;

// Possible errors: those of LoadModelConfig, Tokenizer::Load, LoadTexts, EvaluationWindows
// (FailedPrecondition when the text is shorter than one window) and ModelRunner.
absl::StatusOr<EvalReport> EvaluatePerplexity(const EvalOptions& options,
                                              const EvalProgressFn& progress = nullptr);

nlohmann::json EvalReportJson(const EvalReport& report);

}  // namespace moec::client

#endif  // MOEC_CLIENT_EVAL_H_
