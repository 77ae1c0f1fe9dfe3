// Trains a tiny Mixture-of-Experts model (Mixtral- or DeepSeek-style) on local English text in a
// few minutes on 2 CPU cores, with a byte-level BPE tokenizer trained on the same text, and writes
// it as a Hugging Face checkpoint that every moec stage, the demo and the benchmarks use. The
// training reuses the forward's building blocks (model/layers.h) under autograd. Deterministic
// for the same options and thread count; cached by an options fingerprint. Torch-free header.
// See docs/formats/tiny_model.md ("Trained tiny models").
#ifndef MOEC_TOOLS_TRAINER_H_
#define MOEC_TOOLS_TRAINER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moec::tools {

struct TrainOptions {
  std::string arch = "mixtral";  // "mixtral" or "deepseek"
  // Text files to train on; empty: every regular file of /usr/share/common-licenses, sorted.
  std::vector<std::string> corpus_files;
  int vocab = 768;          // BPE vocabulary including the two special tokens
  int layers = 4;
  int hidden = 128;
  int heads = 4;
  int kv_heads = 2;
  int experts = 8;
  int top_k = 2;
  int moe_intermediate = 256;  // routed expert width
  int intermediate = 512;      // DeepSeek: the dense first layer's width
  int shared_experts = 1;      // DeepSeek shared experts (width shared_experts * moe_intermediate)
  int seqlen = 128;
  int batch = 16;
  int steps = 600;
  double lr = 3e-3;
  double weight_decay = 0.01;
  double aux_loss = 0.01;      // Switch-style load-balancing loss coefficient
  double heldout_fraction = 0.1;  // tail of the tokenized corpus held out for evaluation
  uint64_t seed = 0;

  // InvalidArgument naming the first bad field.
  absl::Status Validate() const;
  // SHA-256 of the canonical options (corpus file names and contents included).
  absl::StatusOr<std::string> Fingerprint() const;
};

struct TrainReport {
  std::string fingerprint;
  int steps = 0;
  double seconds = 0;
  double final_loss = 0;           // mean training cross-entropy of the last 10 steps
  double heldout_perplexity = 0;   // moec's forward on heldout.txt, windows of seqlen
  double unigram_perplexity = 0;   // add-one unigram model of the training split, on the heldout
  // Mean over MoE layers of the per-token router entropy divided by log(experts), on heldout
  // text (1 = uniform routing).
  double router_entropy = 0;
  bool reused = false;             // true when the cached model was returned
};

struct TrainProgress {
  int step = 0, steps = 0;
  double loss = 0;
  double seconds = 0;
};
using TrainProgressFn = std::function<void(const TrainProgress&)>;

// Trains and writes into `dir` (created; must be absent or empty): config.json, model.safetensors,
// tokenizer.json, tokenizer_config.json, generation_config.json, train.txt and heldout.txt (the
// two splits, for calibration and evaluation) and moec_training.json (options, fingerprint,
// report). Written into a temporary sibling and renamed, so `dir` is complete or absent.
absl::StatusOr<TrainReport> TrainTinyModel(const TrainOptions& options, const std::string& dir,
                                           const TrainProgressFn& progress = nullptr);

// Returns the report of `dir` when it holds a model trained with the same fingerprint; else
// trains it (replacing a stale `dir` that holds moec_training.json; any other non-empty `dir` is
// FailedPrecondition).
absl::StatusOr<TrainReport> TrainOrReuseTinyModel(const TrainOptions& options,
                                                  const std::string& dir,
                                                  const TrainProgressFn& progress = nullptr);

}  // namespace moec::tools

#endif  // MOEC_TOOLS_TRAINER_H_
