#include "tools/trainer.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/fingerprint.h"
#include "common/status_macros.h"
#include "model/config/config.h"
#include "model/data/datasets.h"
#include "model/runtime/forward.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"
#include "tools/bpe_trainer.h"
#include "tools/tiny_model.h"
#include "tools/train_loop.h"

namespace moec::tools {

using model::ForwardObserver;
using model::ModelConfig;
using model::ModelRunner;
using model::ParseModelConfig;
using model::PerplexityResult;
using model::TokenWindows;
using model::Tokenizer;

using internal::InitModel;
using internal::Model;
using internal::SecondsSince;
using internal::TrainSteps;
using internal::WriteTrainedCheckpoint;

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

template <typename T>
absl::Status BadValue(absl::string_view field, T value) {
  return absl::InvalidArgumentError(absl::StrCat("train: bad value ", value, " for '", field, "'"));
}

// TrainOptions::Validate's checks of the vocabulary, depth and attention shape.
absl::Status ValidateShape(const TrainOptions& o) {
  if (o.vocab < 258 + 16 || o.vocab > 256 + kTinyMaxMerges + kTinyNumSpecialTokens) {
    return BadValue("vocab", o.vocab);
  }
  if (o.layers < 1 || o.layers > 64) return BadValue("layers", o.layers);
  if (o.heads < 1 || o.hidden % o.heads != 0 || (o.hidden / o.heads) % 2 != 0) {
    return BadValue("hidden", o.hidden);
  }
  if (o.kv_heads < 1 || o.heads % o.kv_heads != 0) return BadValue("kv_heads", o.kv_heads);
  return absl::OkStatus();
}

// TrainOptions::Validate's checks of the experts and MLP widths.
absl::Status ValidateExperts(const TrainOptions& o) {
  if (o.experts < 1 || o.experts > 256) return BadValue("experts", o.experts);
  if (o.top_k < 1 || o.top_k > o.experts) return BadValue("top_k", o.top_k);
  if (o.moe_intermediate < 1) return BadValue("moe_intermediate", o.moe_intermediate);
  if (o.intermediate < 1) return BadValue("intermediate", o.intermediate);
  if (o.shared_experts < 0) return BadValue("shared_experts", o.shared_experts);
  return absl::OkStatus();
}

// TrainOptions::Validate's checks of the training schedule.
absl::Status ValidateSchedule(const TrainOptions& o) {
  if (o.seqlen < 8) return BadValue("seqlen", o.seqlen);
  if (o.batch < 1) return BadValue("batch", o.batch);
  if (o.steps < 1) return BadValue("steps", o.steps);
  if (!(o.lr > 0)) return BadValue("lr", o.lr);
  if (!(o.heldout_fraction > 0 && o.heldout_fraction < 0.5)) {
    return BadValue("heldout_fraction", o.heldout_fraction);
  }
  return absl::OkStatus();
}

absl::Status WriteInto(const std::string& dir, const char* name, absl::string_view text) {
  return storage::WriteFileAtomically((fs::path(dir) / name).string(), text);
}

// The training text and the held-out text after it. The corpus is split by characters first (at
// a line break) so that the tokenizer never sees the held-out text.
std::pair<std::string, std::string> SplitHeldout(const std::vector<std::string>& texts,
                                                 double heldout_fraction) {
  std::string all = absl::StrJoin(texts, "\n\n");
  const size_t cut = all.size() - static_cast<size_t>(all.size() * heldout_fraction);
  const size_t boundary = all.find('\n', cut) == std::string::npos ? cut : all.find('\n', cut);
  return {all.substr(0, boundary), all.substr(boundary)};
}

// The tokenizer trained on the training text and the model's config.
struct TrainingSetup {
  std::unique_ptr<Tokenizer> tokenizer;
  ModelConfig config;
  int vocab_total = 0;  // the tokenizer's vocabulary, special tokens included
};

// Trains the tokenizer and writes it, config.json, generation_config.json, train.txt and
// heldout.txt into `tmp`.
absl::StatusOr<TrainingSetup> WriteTokenizerAndConfig(const TrainOptions& o,
                                                      const std::string& train_text,
                                                      const std::string& heldout_text,
                                                      const std::string& tmp) {
  BpeTrainerOptions bpe;
  bpe.vocab_size = o.vocab;
  bpe.bos_token = std::string(kTinyBosToken);
  bpe.eos_token = std::string(kTinyEosToken);
  bpe.special_tokens = {bpe.bos_token, bpe.eos_token};
  MOEC_RETURN_IF_ERROR(WriteTrainedTokenizer({train_text}, bpe, tmp));
  TrainingSetup setup;
  MOEC_ASSIGN_OR_RETURN(setup.tokenizer, Tokenizer::Load(tmp));
  const Tokenizer& tokenizer = *setup.tokenizer;
  setup.vocab_total = tokenizer.vocab_size();
  const int vocab_total = setup.vocab_total;
  MOEC_ASSIGN_OR_RETURN(std::string config_text,
                        TinyModelConfigJson(ArchitectureOptions(o, vocab_total - 2)));
  MOEC_ASSIGN_OR_RETURN(setup.config, ParseModelConfig(config_text, "trained config.json"));
  MOEC_RETURN_IF_ERROR(WriteInto(tmp, "config.json", config_text));
  const json generation = {{"bos_token_id", tokenizer.bos_id().value_or(vocab_total - 2)},
                           {"eos_token_id", tokenizer.eos_id().value_or(vocab_total - 1)}};
  MOEC_RETURN_IF_ERROR(WriteInto(tmp, "generation_config.json", generation.dump(2) + "\n"));
  MOEC_RETURN_IF_ERROR(WriteInto(tmp, "train.txt", train_text));
  MOEC_RETURN_IF_ERROR(WriteInto(tmp, "heldout.txt", heldout_text));
  return setup;
}

// The held-out perplexity (windows of o.seqlen) and router entropy (on at most 8 of those
// windows) of the checkpoint in `dir`, into `report`.
absl::Status EvaluateTrained(const std::string& dir, const std::vector<int32_t>& heldout_ids,
                             const TrainOptions& o, TrainReport* report) {
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, ModelRunner::Open(dir));
  TokenWindows windows;
  windows.seqlen = o.seqlen;
  const size_t n = heldout_ids.size() / o.seqlen;
  windows.tokens.assign(heldout_ids.begin(), heldout_ids.begin() + n * o.seqlen);
  MOEC_ASSIGN_OR_RETURN(PerplexityResult ppl, runner->Perplexity(windows));
  report->heldout_perplexity = ppl.perplexity;
  EntropyObserver entropy;
  const int64_t k = std::min<int64_t>(n, 8);
  at::Tensor sample = at::from_blob(windows.tokens.data(), {k, o.seqlen}, at::kInt).to(at::kLong);
  MOEC_RETURN_IF_ERROR(runner->Forward(sample, &entropy).status());
  report->router_entropy = entropy.mean();
  return absl::OkStatus();
}

}  // namespace

absl::Status TrainOptions::Validate() const {
  if (arch != "mixtral" && arch != "deepseek") {
    return absl::InvalidArgumentError(
        absl::StrCat("train: arch '", arch, "' not supported; supported: mixtral, deepseek"));
  }
  MOEC_RETURN_IF_ERROR(ValidateShape(*this));
  MOEC_RETURN_IF_ERROR(ValidateExperts(*this));
  return ValidateSchedule(*this);
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
  MOEC_ASSIGN_OR_RETURN(std::string fingerprint, o.Fingerprint());
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> files, CorpusFiles(o));
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> texts, ReadCorpus(files));
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_empty(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not empty"));
  }
  const auto [train_text, heldout_text] = SplitHeldout(texts, o.heldout_fraction);

  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ec.message()));
  MOEC_ASSIGN_OR_RETURN(TrainingSetup setup,
                        WriteTokenizerAndConfig(o, train_text, heldout_text, tmp));

  const std::vector<int32_t> train_ids = setup.tokenizer->Encode(train_text, false);
  const std::vector<int32_t> heldout_ids = setup.tokenizer->Encode(heldout_text, false);
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

  Model m = InitModel(setup.config, o.seed);
  const std::vector<double> recent = TrainSteps(o, corpus, &m, progress, start);
  MOEC_RETURN_IF_ERROR(WriteTrainedCheckpoint(m, tmp));

  TrainReport report;
  report.fingerprint = fingerprint;
  report.steps = o.steps;
  double sum = 0;
  for (double v : recent) sum += v;
  report.final_loss = sum / recent.size();
  report.unigram_perplexity = UnigramPerplexity(train_ids, heldout_ids, setup.vocab_total);
  MOEC_RETURN_IF_ERROR(EvaluateTrained(tmp, heldout_ids, o, &report));
  report.seconds = SecondsSince(start);
  const json record = {{"options", OptionsJson(o, files)}, {"report", ReportJson(report)}};
  MOEC_RETURN_IF_ERROR(WriteInto(tmp, kTrainingFile, record.dump(2) + "\n"));
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
