#include "tools/trainer.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/fingerprint.h"
#include "common/status_macros.h"
#include "model/config/config.h"
#include "model/config/tensor_names.h"
#include "model/data/datasets.h"
#include "model/runtime/forward.h"
#include "model/runtime/layers.h"
#include "model/runtime/weights.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"
#include "tools/bpe_trainer.h"
#include "tools/tiny_model.h"

namespace moec::tools {

using model::DecoderLayer;
using model::EmbeddingTensorName;
using model::FinalNormTensorName;
using model::ForwardObserver;
using model::LayerWeights;
using model::LmHeadTensorName;
using model::MakeRopeTables;
using model::ModelConfig;
using model::ModelRunner;
using model::NamedTensor;
using model::ParseModelConfig;
using model::PerplexityResult;
using model::RmsNorm;
using model::RopeTables;
using model::TensorRole;
using model::TensorSpec;
using model::TokenWindows;
using model::Tokenizer;
using model::UniformBelow;
using model::WriteCheckpointTensors;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t kMaxCorpusBytes = 64ull << 20;
constexpr char kDefaultCorpusDir[] = "/usr/share/common-licenses";
constexpr char kTrainingFile[] = "moec_training.json";
// Bumped whenever the training procedure changes what a fingerprint produces.
constexpr int kTrainerVersion = 1;

absl::StatusOr<std::vector<std::string>> CorpusFiles(const TrainOptions& o) {
  if (!o.corpus_files.empty()) return o.corpus_files;
  std::vector<std::string> files;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(kDefaultCorpusDir, ec)) {
    if (e.is_regular_file()) files.push_back(e.path().string());
  }
  if (ec || files.empty()) {
    return absl::NotFoundError(absl::StrCat("no training text: ", kDefaultCorpusDir,
                                            " is missing or empty; pass corpus files"));
  }
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<std::vector<std::string>> ReadCorpus(const std::vector<std::string>& files) {
  std::vector<std::string> texts;
  uint64_t total = 0;
  for (const std::string& f : files) {
    MOEC_ASSIGN_OR_RETURN(std::string text, storage::ReadFileToString(f, kMaxCorpusBytes));
    total += text.size();
    if (total > kMaxCorpusBytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("training corpus over ", kMaxCorpusBytes >> 20, " MiB"));
    }
    texts.push_back(std::move(text));
  }
  return texts;
}

TinyModelOptions ArchitectureOptions(const TrainOptions& o, int vocab_without_specials) {
  TinyModelOptions t;
  t.model_type = o.arch;
  t.num_layers = o.layers;
  t.hidden = o.hidden;
  t.heads = o.heads;
  t.kv_heads = o.kv_heads;
  t.experts = o.experts;
  t.top_k = o.top_k;
  t.moe_intermediate = o.moe_intermediate;
  t.intermediate = o.intermediate;
  t.shared_experts = o.shared_experts;
  t.vocab = vocab_without_specials;
  t.seed = o.seed;
  return t;
}

// Collects router logits (with their autograd history) for the load-balancing loss.
class RouterCollector : public ForwardObserver {
 public:
  void OnRouterLogits(int layer, const at::Tensor& logits) override { logits_.push_back(logits); }
  std::vector<at::Tensor> Take() { return std::move(logits_); }

 private:
  std::vector<at::Tensor> logits_;
};

// Switch Transformer load balancing: E * sum_e f_e * P_e, f_e = share of top-k slots, P_e =
// mean router probability.
at::Tensor LoadBalancingLoss(const at::Tensor& logits, int top_k) {
  const int64_t experts = logits.size(1);
  at::Tensor probs = at::softmax(logits, -1);
  at::Tensor chosen = std::get<1>(probs.topk(top_k, -1));
  at::Tensor counts =
      at::zeros({experts}, probs.options()).index_add_(0, chosen.reshape(-1),
                                                       at::ones({chosen.numel()}, probs.options()));
  at::Tensor f = (counts / static_cast<double>(chosen.numel())).detach();
  return static_cast<double>(experts) * (f * probs.mean(0)).sum();
}

struct Model {
  ModelConfig config;
  std::vector<NamedTensor> params;  // ModelTensors order
  std::map<std::string, at::Tensor> by_name;
};

Model InitModel(const ModelConfig& config, uint64_t seed) {
  Model m;
  m.config = config;
  at::manual_seed(seed);
  for (const TensorSpec& spec : ModelTensors(config)) {
    at::Tensor t;
    if (spec.shape.size() == 1 && spec.role == TensorRole::kNorm) {
      t = at::ones(spec.shape);
    } else if (spec.shape.size() == 1) {
      t = at::zeros(spec.shape);
    } else {
      t = at::randn(spec.shape) * 0.02;
    }
    t.set_requires_grad(true);
    m.params.push_back({spec.name, t, std::nullopt});
    m.by_name[spec.name] = t;
  }
  return m;
}

// Logits of tokens [batch, seq] through the trainable parameters.
at::Tensor ForwardTrain(const Model& m, const at::Tensor& tokens, const RopeTables& rope,
                        ForwardObserver* observer) {
  const ModelConfig& c = m.config;
  at::Tensor h = at::embedding(m.by_name.at(EmbeddingTensorName()), tokens);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    absl::StatusOr<LayerWeights> w = AssembleLayer(
        c, l, [&](const TensorSpec& s) -> absl::StatusOr<at::Tensor> { return m.by_name.at(s.name); });
    h = DecoderLayer(c, *w, h, rope, observer);
  }
  h = RmsNorm(h, m.by_name.at(FinalNormTensorName()), c.rms_norm_eps);
  return at::linear(h, m.by_name.at(LmHeadTensorName(c)));
}

double UnigramPerplexity(const std::vector<int32_t>& train, const std::vector<int32_t>& heldout,
                         int64_t vocab) {
  std::vector<double> counts(vocab, 1.0);  // add-one smoothing
  for (int32_t t : train) counts[t] += 1;
  const double total = static_cast<double>(train.size() + vocab);
  double nll = 0;
  for (int32_t t : heldout) nll -= std::log(counts[t] / total);
  return std::exp(nll / static_cast<double>(heldout.size()));
}

// Mean normalized per-token router entropy over MoE layers.
class EntropyObserver : public ForwardObserver {
 public:
  void OnRouterLogits(int layer, const at::Tensor& logits) override {
    at::Tensor p = at::softmax(logits, -1);
    const double h = -(p * at::log(p.clamp_min(1e-30))).sum(-1).mean().item<double>();
    sum_ += h / std::log(static_cast<double>(logits.size(1)));
    ++n_;
  }
  double mean() const { return n_ > 0 ? sum_ / n_ : 1.0; }

 private:
  double sum_ = 0;
  int n_ = 0;
};

json ReportJson(const TrainReport& r) {
  return json{{"fingerprint", r.fingerprint},
              {"steps", r.steps},
              {"seconds", r.seconds},
              {"final_loss", r.final_loss},
              {"heldout_perplexity", r.heldout_perplexity},
              {"unigram_perplexity", r.unigram_perplexity},
              {"router_entropy", r.router_entropy}};
}

json OptionsJson(const TrainOptions& o, const std::vector<std::string>& files) {
  return json{{"arch", o.arch},          {"corpus_files", files},
              {"vocab", o.vocab},        {"layers", o.layers},
              {"hidden", o.hidden},      {"heads", o.heads},
              {"kv_heads", o.kv_heads},  {"experts", o.experts},
              {"top_k", o.top_k},        {"moe_intermediate", o.moe_intermediate},
              {"intermediate", o.intermediate}, {"shared_experts", o.shared_experts},
              {"seqlen", o.seqlen},      {"batch", o.batch},
              {"steps", o.steps},        {"lr", o.lr},
              {"weight_decay", o.weight_decay}, {"aux_loss", o.aux_loss},
              {"heldout_fraction", o.heldout_fraction}, {"seed", o.seed},
              {"trainer_version", kTrainerVersion}};
}

absl::StatusOr<TrainReport> ReadCachedReport(const std::string& dir) {
  MOEC_ASSIGN_OR_RETURN(std::string text,
                        storage::ReadFileToString((fs::path(dir) / kTrainingFile).string(), 1 << 20));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("report") || !j["report"].is_object()) {
    return absl::DataLossError(absl::StrCat(dir, "/", kTrainingFile, " is malformed"));
  }
  const json& r = j["report"];
  TrainReport report;
  try {
    report.fingerprint = r.at("fingerprint").get<std::string>();
    report.steps = r.at("steps").get<int>();
    report.seconds = r.at("seconds").get<double>();
    report.final_loss = r.at("final_loss").get<double>();
    report.heldout_perplexity = r.at("heldout_perplexity").get<double>();
    report.unigram_perplexity = r.at("unigram_perplexity").get<double>();
    report.router_entropy = r.at("router_entropy").get<double>();
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat(dir, "/", kTrainingFile, ": ", e.what()));
  }
  return report;
}

}  // namespace

absl::Status TrainOptions::Validate() const {
  auto bad = [](absl::string_view field, auto value) {
    return absl::InvalidArgumentError(
        absl::StrCat("train: bad value ", value, " for '", field, "'"));
  };
  if (arch != "mixtral" && arch != "deepseek") {
    return absl::InvalidArgumentError(
        absl::StrCat("train: arch '", arch, "' not supported; supported: mixtral, deepseek"));
  }
  if (vocab < 258 + 16 || vocab > 256 + kTinyMaxMerges + kTinyNumSpecialTokens) {
    return bad("vocab", vocab);
  }
  if (layers < 1 || layers > 64) return bad("layers", layers);
  if (heads < 1 || hidden % heads != 0 || (hidden / heads) % 2 != 0) return bad("hidden", hidden);
  if (kv_heads < 1 || heads % kv_heads != 0) return bad("kv_heads", kv_heads);
  if (experts < 1 || experts > 256) return bad("experts", experts);
  if (top_k < 1 || top_k > experts) return bad("top_k", top_k);
  if (moe_intermediate < 1) return bad("moe_intermediate", moe_intermediate);
  if (intermediate < 1) return bad("intermediate", intermediate);
  if (shared_experts < 0) return bad("shared_experts", shared_experts);
  if (seqlen < 8) return bad("seqlen", seqlen);
  if (batch < 1) return bad("batch", batch);
  if (steps < 1) return bad("steps", steps);
  if (!(lr > 0)) return bad("lr", lr);
  if (!(heldout_fraction > 0 && heldout_fraction < 0.5)) {
    return bad("heldout_fraction", heldout_fraction);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TrainOptions::Fingerprint() const {
  MOEC_RETURN_IF_ERROR(Validate());
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> files, CorpusFiles(*this));
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> texts, ReadCorpus(files));
  Sha256 h;
  h.AddField(OptionsJson(*this, files).dump());
  for (const std::string& t : texts) h.AddField(t);
  return h.FinishHex();
}

static absl::StatusOr<TrainReport> TrainInto(const TrainOptions& o, const std::string& dir,
                                      const std::string& tmp, const TrainProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  MOEC_ASSIGN_OR_RETURN(std::string fingerprint, o.Fingerprint());
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> files, CorpusFiles(o));
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> texts, ReadCorpus(files));
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_empty(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not empty"));
  }
  // Split by characters first so that the tokenizer never sees the held-out text.
  std::string all = absl::StrJoin(texts, "\n\n");
  const size_t cut = all.size() - static_cast<size_t>(all.size() * o.heldout_fraction);
  const size_t boundary = all.find('\n', cut) == std::string::npos ? cut : all.find('\n', cut);
  const std::string train_text = all.substr(0, boundary);
  const std::string heldout_text = all.substr(boundary);

  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ec.message()));
  auto write = [&](const char* name, absl::string_view text) {
    return storage::WriteFileAtomically((fs::path(tmp) / name).string(), text);
  };

  BpeTrainerOptions bpe;
  bpe.vocab_size = o.vocab;
  bpe.bos_token = std::string(kTinyBosToken);
  bpe.eos_token = std::string(kTinyEosToken);
  bpe.special_tokens = {bpe.bos_token, bpe.eos_token};
  MOEC_RETURN_IF_ERROR(WriteTrainedTokenizer({train_text}, bpe, tmp));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(tmp));
  const int vocab_total = tokenizer->vocab_size();
  MOEC_ASSIGN_OR_RETURN(std::string config_text,
                        TinyModelConfigJson(ArchitectureOptions(o, vocab_total - 2)));
  MOEC_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_text, "trained config.json"));
  MOEC_RETURN_IF_ERROR(write("config.json", config_text));
  const json generation = {{"bos_token_id", tokenizer->bos_id().value_or(vocab_total - 2)},
                           {"eos_token_id", tokenizer->eos_id().value_or(vocab_total - 1)}};
  MOEC_RETURN_IF_ERROR(write("generation_config.json", generation.dump(2) + "\n"));
  MOEC_RETURN_IF_ERROR(write("train.txt", train_text));
  MOEC_RETURN_IF_ERROR(write("heldout.txt", heldout_text));

  const std::vector<int32_t> train_ids = tokenizer->Encode(train_text, false);
  const std::vector<int32_t> heldout_ids = tokenizer->Encode(heldout_text, false);
  if (static_cast<int64_t>(train_ids.size()) < 4 * o.seqlen ||
      static_cast<int64_t>(heldout_ids.size()) < 2 * o.seqlen) {
    return absl::FailedPreconditionError(
        absl::StrCat("training text too short: ", train_ids.size(), " training and ",
                     heldout_ids.size(), " held-out tokens for seqlen ", o.seqlen));
  }
  at::Tensor corpus =
      at::from_blob(const_cast<int32_t*>(train_ids.data()),
                    {static_cast<int64_t>(train_ids.size())}, at::kInt)
          .to(at::kLong);

  Model m = InitModel(config, o.seed);
  const RopeTables rope = MakeRopeTables(o.seqlen, config.head_dim, config.rope_theta);
  std::vector<at::Tensor> adam_m, adam_v;
  for (const NamedTensor& p : m.params) {
    adam_m.push_back(at::zeros_like(p.tensor));
    adam_v.push_back(at::zeros_like(p.tensor));
  }
  std::mt19937_64 rng(o.seed ^ 0x5eedULL);
  const int64_t positions = corpus.size(0) - o.seqlen - 1;
  const int warmup = std::max(1, o.steps / 20);
  std::vector<double> recent;
  for (int step = 0; step < o.steps; ++step) {
    std::vector<at::Tensor> rows;
    for (int b = 0; b < o.batch; ++b) {
      const int64_t at_pos = static_cast<int64_t>(UniformBelow(rng, positions));
      rows.push_back(corpus.narrow(0, at_pos, o.seqlen + 1));
    }
    at::Tensor batch = at::stack(rows);
    at::Tensor input = batch.narrow(1, 0, o.seqlen), target = batch.narrow(1, 1, o.seqlen);
    RouterCollector routers;
    at::Tensor logits = ForwardTrain(m, input, rope, &routers);
    at::Tensor loss = at::nll_loss(at::log_softmax(logits.reshape({-1, logits.size(2)}), -1),
                                   target.reshape(-1));
    const double ce = loss.item<double>();
    for (const at::Tensor& r : routers.Take()) {
      loss = loss + o.aux_loss * LoadBalancingLoss(r, o.top_k);
    }
    for (NamedTensor& p : m.params) p.tensor.mutable_grad() = at::Tensor();
    loss.backward();
    // Clip the global gradient norm to 1, then AdamW with linear warmup and cosine decay to 10%.
    double norm2 = 0;
    for (const NamedTensor& p : m.params) {
      if (p.tensor.grad().defined()) norm2 += p.tensor.grad().pow(2).sum().item<double>();
    }
    const double clip = std::min(1.0, 1.0 / (std::sqrt(norm2) + 1e-6));
    const double progress_frac = static_cast<double>(step) / o.steps;
    const double lr = step < warmup ? o.lr * (step + 1) / warmup
                                    : o.lr * (0.1 + 0.45 * (1 + std::cos(M_PI * progress_frac)));
    const double b1 = 0.9, b2 = 0.95, eps = 1e-8;
    const double c1 = 1 - std::pow(b1, step + 1), c2 = 1 - std::pow(b2, step + 1);
    {
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < m.params.size(); ++i) {
        at::Tensor& p = m.params[i].tensor;
        if (!p.grad().defined()) continue;
        at::Tensor g = p.grad() * clip;
        adam_m[i].mul_(b1).add_(g, 1 - b1);
        adam_v[i].mul_(b2).addcmul_(g, g, 1 - b2);
        if (p.dim() >= 2) p.mul_(1 - lr * o.weight_decay);
        p.addcdiv_(adam_m[i] / c1, (adam_v[i] / c2).sqrt_().add_(eps), -lr);
      }
    }
    recent.push_back(ce);
    if (recent.size() > 10) recent.erase(recent.begin());
    if (progress) progress({step + 1, o.steps, ce, elapsed()});
  }
  std::vector<NamedTensor> out;
  for (const NamedTensor& p : m.params) {
    if (p.name == LmHeadTensorName(config) && config.tie_word_embeddings) continue;
    out.push_back({p.name, p.tensor.detach(), std::nullopt});
  }
  MOEC_RETURN_IF_ERROR(WriteCheckpointTensors(tmp, out));

  TrainReport report;
  report.fingerprint = fingerprint;
  report.steps = o.steps;
  double sum = 0;
  for (double v : recent) sum += v;
  report.final_loss = sum / recent.size();
  report.unigram_perplexity = UnigramPerplexity(train_ids, heldout_ids, vocab_total);
  {
    MOEC_ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, ModelRunner::Open(tmp));
    TokenWindows windows;
    windows.seqlen = o.seqlen;
    const size_t n = heldout_ids.size() / o.seqlen;
    windows.tokens.assign(heldout_ids.begin(), heldout_ids.begin() + n * o.seqlen);
    MOEC_ASSIGN_OR_RETURN(PerplexityResult ppl, runner->Perplexity(windows));
    report.heldout_perplexity = ppl.perplexity;
    EntropyObserver entropy;
    const int64_t k = std::min<int64_t>(n, 8);
    at::Tensor sample = at::from_blob(windows.tokens.data(), {k, o.seqlen}, at::kInt).to(at::kLong);
    MOEC_RETURN_IF_ERROR(runner->Forward(sample, &entropy).status());
    report.router_entropy = entropy.mean();
  }
  report.seconds = elapsed();
  const json record = {{"options", OptionsJson(o, files)}, {"report", ReportJson(report)}};
  MOEC_RETURN_IF_ERROR(write(kTrainingFile, record.dump(2) + "\n"));
  fs::remove(dir, ec);  // an empty directory may exist
  fs::rename(tmp, dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", dir, ": ", ec.message()));
  return report;
}

absl::StatusOr<TrainReport> TrainTinyModel(const TrainOptions& o, const std::string& dir,
                                           const TrainProgressFn& progress) {
  // Everything is written into a sibling temporary directory, renamed over `dir` at the end and
  // removed on failure, so `dir` is either complete or untouched.
  const std::string tmp = absl::StrCat(dir, ".tmp-", getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  absl::StatusOr<TrainReport> report = TrainInto(o, dir, tmp, progress);
  if (!report.ok()) fs::remove_all(tmp, ec);
  return report;
}

absl::StatusOr<TrainReport> TrainOrReuseTinyModel(const TrainOptions& o, const std::string& dir,
                                                  const TrainProgressFn& progress) {
  MOEC_ASSIGN_OR_RETURN(std::string fingerprint, o.Fingerprint());
  std::error_code ec;
  if (fs::exists(fs::path(dir) / kTrainingFile, ec)) {
    absl::StatusOr<TrainReport> cached = ReadCachedReport(dir);
    if (cached.ok() && cached->fingerprint == fingerprint &&
        fs::exists(fs::path(dir) / "model.safetensors", ec)) {
      cached->reused = true;
      return cached;
    }
    fs::remove_all(dir, ec);  // stale: a model moec trained with other options
  }
  return TrainTinyModel(o, dir, progress);
}

}  // namespace moec::tools
