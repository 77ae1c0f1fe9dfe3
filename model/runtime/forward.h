// The layer-streaming forward of a Hugging Face MoE checkpoint: one decoder layer's weights are
// resident at a time, read from the mapped checkpoint; hidden states of a batch of token windows
// flow layer by layer. Honours everything moec exports write (pruned experts, dropped MoE
// sub-blocks, dynamic skipping, ODP). See docs/forward.md. Includes ATen (via layers.h): include
// it only from files that compute with tensors.
#ifndef MOEC_MODEL_RUNTIME_FORWARD_H_
#define MOEC_MODEL_RUNTIME_FORWARD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "model/config/config.h"
#include "model/data/datasets.h"
#include "model/runtime/layers.h"
#include "model/runtime/prefetch.h"
#include "model/runtime/weights.h"

namespace moec::model {

struct RunnerOptions {
  ComputeDtype dtype = ComputeDtype::kF32;
  // Where layers run: weights are read on the host and copied there (docs/forward.md, "Devices");
  // hidden states, rotary tables and logits live there.
  at::Device device = at::kCPU;
  // Hidden states of at most this many bytes are kept for one pass over the layers; more
  // windows are processed in several passes (each streams the layers again).
  int64_t activation_budget_bytes = int64_t{1} << 30;
  // Perplexity runs each layer of a pass over micro-batches of whole windows of about this many
  // tokens (at least one window): expert GEMMs of thousands of rows, with intermediates that
  // stay in cache and in reused heap memory instead of fresh pages (docs/forward.md, "Passes and
  // micro-batches"). 0: the whole pass at once.
  int64_t micro_batch_tokens = 8192;
  // Whether Forward and Perplexity load the next layer on a background thread (and, on a GPU, a
  // side stream) while this one computes (prefetch.h). Unset: on for devices other than the CPU.
  // The TensorSource of a view is then called from that thread, one call at a time.
  std::optional<bool> prefetch_layers;
};

// Final norm and output projection.
struct HeadWeights {
  at::Tensor norm;
  at::Tensor lm_head;  // [vocab, hidden]
};

// Called after each unit of work with (done, total); units are (pass, layer) steps.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct PerplexityResult {
  int64_t windows = 0;
  int64_t seqlen = 0;
  double mean_nll = 0;    // mean over windows of the mean next-token NLL (GPTQ's protocol)
  double perplexity = 0;  // exp(mean_nll)
  int64_t predicted_tokens = 0;
};

// Produces the tensor of `spec` (e.g. from a checkpoint, or a trainer's parameters).
using TensorSource = std::function<absl::StatusOr<at::Tensor>(const TensorSpec& spec)>;

// Assembles the weights of decoder layer `layer` from `source`, one call per tensor of
// LayerTensors(config, layer). Errors: InvalidArgument for a layer out of range, and the
// source's errors.
absl::StatusOr<LayerWeights> AssembleLayer(const ModelConfig& config, int layer,
                                           const TensorSource& source);

class ModelRunner {
 public:
  // Loads config.json and maps the checkpoint in `model_dir`. Errors: as LoadModelConfig and
  // WeightLoader::Open; InvalidArgument when the config's tensors are missing (checked lazily).
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Open(const std::string& model_dir,
                                                           const RunnerOptions& options = {});
  // A view of the checkpoint in `model_dir` as the model `config` describes (e.g. with experts
  // or layers removed): every tensor comes from `source`, called with the view's TensorSpec and
  // expected to return it in fp32 or the compute dtype (converted here). The tokenizer and the
  // mapped checkpoint stay those of `model_dir`. Errors: as WeightLoader::Open.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> OpenView(const std::string& model_dir,
                                                               ModelConfig config,
                                                               TensorSource source,
                                                               const RunnerOptions& options = {});

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return loader_->dtype(); }
  // Where layers run (RunnerOptions::device).
  at::Device device() const { return options_.device; }
  const WeightLoader& loader() const { return *loader_; }

  // Weights of decoder layer `layer` (owned copies in the compute dtype).
  // Errors: NotFound / InvalidArgument naming the missing or misshapen tensor.
  absl::StatusOr<LayerWeights> LoadLayer(int layer) const;
  // As LoadLayer, reading only the routed experts e with want_expert(e); the others are left as
  // empty tensors and must not be run (a rank of the data plane reads the experts it owns).
  absl::StatusOr<LayerWeights> LoadLayer(int layer,
                                         const std::function<bool(int)>& want_expert) const;
  absl::StatusOr<HeadWeights> LoadHead() const;

  // Token ids [batch, seq] (int64) to embeddings [batch, seq, hidden]. InvalidArgument for ids
  // outside [0, vocab_size).
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& tokens) const;
  // One decoder layer on the residual stream; `experts` runs its routed experts (null: here);
  // `memo` keeps and reuses parts of it between passes (LayerMemo).
  at::Tensor RunLayer(const LayerWeights& weights, const at::Tensor& hidden,
                      ForwardObserver* observer = nullptr, ExpertExecutor* experts = nullptr,
                      LayerMemo* memo = nullptr) const;
  // Final norm and lm_head: [batch, seq, hidden] -> fp32 logits [batch, seq, vocab].
  at::Tensor ApplyHead(const HeadWeights& head, const at::Tensor& hidden) const;

  // The whole model on tokens [batch, seq]: fp32 logits [batch, seq, vocab], streaming layers.
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& tokens, ForwardObserver* observer = nullptr,
                                     const ProgressFn& progress = nullptr) const;

  // Perplexity by the GPTQ protocol over `windows` (each scored independently, next-token NLL
  // over its seqlen-1 predictions). Returns Cancelled when `cancelled` becomes true.
  // `observer` sees every layer of every pass.
  absl::StatusOr<PerplexityResult> Perplexity(const TokenWindows& windows,
                                              const ProgressFn& progress = nullptr,
                                              const std::atomic<bool>* cancelled = nullptr,
                                              ForwardObserver* observer = nullptr) const;

  // Rotary tables for sequences of at least `seq` tokens (cached; grows, never shrinks, so a
  // returned reference stays valid until a longer sequence is requested).
  RopeTables Rope(int64_t seq) const;
  // Layers 0.. in order for one pass, loaded ahead when options.prefetch_layers says so.
  std::unique_ptr<LayerPrefetcher> StreamLayers() const;

 private:
  // RunLayer over micro-batches of whole windows (RunnerOptions::micro_batch_tokens), written
  // into the pass's hidden state on the device. The observer must run whole layers (kAll).
  at::Tensor RunLayerInMicroBatches(const LayerWeights& weights, const at::Tensor& hidden,
                                    ForwardObserver* observer) const;
  ModelRunner(ModelConfig config, std::unique_ptr<WeightLoader> loader, RunnerOptions options,
              TensorSource source = nullptr)
      : config_(std::move(config)),
        loader_(std::move(loader)),
        source_(std::move(source)),
        options_(options) {}

  absl::StatusOr<at::Tensor> Load(const TensorSpec& spec) const;

  const ModelConfig config_;
  const std::unique_ptr<WeightLoader> loader_;
  const TensorSource source_;  // null: tensors come from loader_ by name
  const RunnerOptions options_;
  mutable absl::Mutex rope_mu_;
  mutable RopeTables rope_ ABSL_GUARDED_BY(rope_mu_);
  mutable int64_t rope_seq_ ABSL_GUARDED_BY(rope_mu_) = 0;
};

}  // namespace moec::model

#endif  // MOEC_MODEL_RUNTIME_FORWARD_H_
