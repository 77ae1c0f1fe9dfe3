// MC-MoE's packed export and online dynamic pruning, checked against direct computations on tiny
// random models: the hqq export's forward equals the fake_quant export's forward of the same
// codes, evaluate's average widths equal hand-computed ones, the odp stage's β equals the median
// p2/p1 of the router, and the exported forward prunes exactly the second experts a direct
// application of ODP's rules selects.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/stage_test_util.h"
#include "dataplane/model_inputs.h"
#include "dataplane/tiny_model_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/hqq.h"
#include "model/config/parameter_count.h"
#include "model/config/tensor_names.h"
#include "model/runtime/forward.h"
#include "model/runtime/layers.h"
#include "stages/calibrate_stage.h"
#include "stages/evaluate_stage.h"
#include "stages/export_stage.h"
#include "stages/odp_stage.h"
#include "stages/quantize_stage.h"
#include "tests/testing/oracle.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

using dataplane::TestRecipe;
using dataplane::TestRecipeWith;
using dataplane::TestStage;

using dataplane::CalibrationTokens;
using dataplane::GetTensor;
using dataplane::MapFactorIo;
using dataplane::PutTensor;
using dataplane::SmallStageTestModel;


using ::moec::testing::TempDir;

namespace {

constexpr int kLayers = 3;
constexpr int64_t kSeq = 16;

class McMoeExportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const tools::TinyModelOptions o = SmallStageTestModel(GetParam(), kLayers, 6);
    ASSERT_OK(tools::WriteTinyModel(o, dir_.Join("model")));
    std::string text;
    for (int i = 0; i < 60; ++i) text += "packed experts and pruned routes, line " + std::to_string(i) + "\n";
    dir_.WriteFile("calib.txt", text);
    ASSERT_OK_AND_ASSIGN(runner_, model::ModelRunner::Open(dir_.Join("model")));
  }

  // Runs stage `stage` (id `id`, needs `needs`) as the task of `layer` (-1: global).
  absl::Status Run(Stage& stage, const std::string& id, int layer, const nlohmann::json& params,
                   const std::vector<std::string>& needs, const std::string& output) {
    nlohmann::json stages = nlohmann::json::array();
    for (const auto& [sid, kind] : kinds_) {
      nlohmann::json st = {{"id", sid}, {"kind", kind}};
      st["needs"] = sid == id ? nlohmann::json(needs) : nlohmann::json::array();
      stages.push_back(st);
    }
    recipe_ = {{"model", dir_.Join("model")},
               {"output", output},
               {"calibration", {{"path", dir_.Join("calib.txt")}, {"samples", 6}, {"seqlen", kSeq},
                                {"seed", 3}}},
               {"stages", stages}};
    v1::TaskRecord task;
    task.set_job_id("job");
    task.set_stage_id(id);
    task.set_layer(layer);
    task.set_task_id(layer < 0 ? "job/" + id : "job/" + id + "/L" + std::to_string(layer));
    task.set_fingerprint(layer < 0 ? id : id + std::to_string(layer));
    StageContext ctx;
    ctx.task = &task;
    ctx.SetRecipe(TestRecipeWith(recipe_, id, params), id);
    ctx.inputs["job/odp"] = "odp";
    for (int l = 0; l < kLayers; ++l) {
      ctx.inputs["job/stats/L" + std::to_string(l)] = "stats" + std::to_string(l);
      ctx.inputs["job/quant/L" + std::to_string(l)] = "quant" + std::to_string(l);
    }
    io_.SetTask(task.fingerprint());
    ctx.io = &io_;
    return stage.Run(ctx);
  }
  absl::StatusOr<at::Tensor> Get(const std::string& key) {
    StageContext ctx;
    ctx.io = &io_;
    return GetTensor(ctx, key);
  }
  at::Tensor Tokens() {
    StageContext ctx;
    ctx.recipe = TestRecipe(recipe_);
    absl::StatusOr<at::Tensor> t = CalibrationTokens(ctx);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : at::Tensor();
  }
  // Replaces every stored scale and zero point of the quantize stage by its fp16 rounding, the
  // precision the hqq format stores, so that both exports dequantize the same numbers.
  void RoundScalesToHalf() {
    std::vector<std::pair<std::string, std::string>> keys;
    for (const auto& [key, factor] : store_) {
      const size_t slash = key.find('/');
      if (key.rfind("quant", 0) == 0 &&
          (absl::EndsWith(key, ".scales") || absl::EndsWith(key, ".zeros"))) {
        keys.emplace_back(key.substr(0, slash), key.substr(slash + 1));
      }
    }
    ASSERT_FALSE(keys.empty());
    for (const auto& [task, name] : keys) {
      ASSERT_OK_AND_ASSIGN(at::Tensor t, Get(task + "/" + name));
      StageContext ctx;
      ctx.io = &io_;
      io_.SetTask(task);
      ASSERT_OK(PutTensor(ctx, name, t.to(at::kHalf).to(t.scalar_type())));
    }
  }

  TempDir dir_;
  std::unique_ptr<model::ModelRunner> runner_;
  std::map<std::string, storage::Factor> store_;
  MapFactorIo io_{&store_};
  nlohmann::json recipe_;
  std::vector<std::pair<std::string, std::string>> kinds_ = {
      {"stats", "calibrate"}, {"odp", "odp"}, {"quant", "rtn"}, {"out", "export"}};
};

// For every width 1..8: the hqq export (packed codes) and the fake_quant export (dequantized
// floats) of the same codes give the same logits, and evaluate reports the widths and bytes
// computed here from the quantize stage's summaries and the format's tensor shapes.
TEST_P(McMoeExportTest, HqqForwardEqualsFakeQuantAndEvaluateCountsItsBits) {
  const model::ModelConfig& c = runner_->config();
  for (int bits = 1; bits <= 8; ++bits) {
    SCOPED_TRACE(absl::StrCat(bits, " bits"));
    const int attn_bits = bits == 8 ? 3 : bits + 1;
    QuantizeStage rtn(/*gptq=*/false);
    for (int l = 0; l < kLayers; ++l) {
      ASSERT_OK(Run(rtn, "quant", l,
                    {{"bits", bits}, {"attn_bits", attn_bits}, {"group_size", 8}},
                    {}, dir_.Join("unused")));
    }
    RoundScalesToHalf();
    ExportStage exporter;
    ASSERT_OK(Run(exporter, "out", -1, {{"format", "hqq"}}, {"quant"}, dir_.Join("hqq")));
    ASSERT_OK(Run(exporter, "out", -1, {{"format", "fake_quant"}}, {"quant"}, dir_.Join("fq")));
    ASSERT_OK_AND_ASSIGN(auto packed, model::ModelRunner::Open(dir_.Join("hqq")));
    ASSERT_OK_AND_ASSIGN(auto fake, model::ModelRunner::Open(dir_.Join("fq")));
    const at::Tensor tokens = Tokens();
    ASSERT_OK_AND_ASSIGN(at::Tensor a, packed->Forward(tokens));
    ASSERT_OK_AND_ASSIGN(at::Tensor b, fake->Forward(tokens));
    ASSERT_OK_AND_ASSIGN(at::Tensor original, runner_->Forward(tokens));
    EXPECT_LE((a - b).abs().max().item<double>(), 1e-5 * (1.0 + b.abs().max().item<double>()));
    EXPECT_FALSE(at::allclose(a, original, 1e-3, 1e-3));  // quantization did change the model

    // Widths and bytes by hand: summaries give each quantized module's width; hqq stores W_q
    // ([ceil(R / c), G] of 1 or 4 bytes), fp16 scale and zero [R, 1], int32 nbits, group_size
    // and shape [2].
    double expert_bits = 0, expert_n = 0, linear_bits = 0, linear_n = 0, bytes = 0;
    std::map<std::string, int> widths;
    for (int l = 0; l < kLayers; ++l) {
      ASSERT_OK_AND_ASSIGN(storage::Factor f, io_.Get("quant" + std::to_string(l) + "/summary"));
      const nlohmann::json summary = nlohmann::json::parse(f.data);
      for (const auto& [name, info] : summary.items()) widths[name] = info.at("bits");
    }
    for (const model::TensorSpec& t : model::ModelTensors(c)) {
      const double n = static_cast<double>(t.NumElements());
      auto it = widths.find(t.name);
      if (it == widths.end()) {
        bytes += 4 * n;  // F32 tiny model
        if (t.role != model::TensorRole::kRouter && t.shape.size() == 2 &&
            t.role != model::TensorRole::kEmbedding && t.role != model::TensorRole::kLmHead) {
          linear_bits += 32 * n;  // an unquantized linear (none expected)
          linear_n += n;
        }
        continue;
      }
      const int w = it->second;
      const int64_t r = t.NumElements() / 8;
      bytes += kernels::HqqPackedRows(r, w) * 8 * (w == 3 ? 4 : 1) + 2 * 2 * r + 4 + 4 + 8;
      linear_bits += w * n;
      linear_n += n;
      if (t.role == model::TensorRole::kRoutedExpert) {
        EXPECT_EQ(w, bits) << t.name;
        expert_bits += w * n;
        expert_n += n;
      }
    }
    ASSERT_OK_AND_ASSIGN(nlohmann::json r, EvaluateModel(dir_.Join("hqq"), dir_.Join("calib.txt"), kSeq, 2, nullptr));
    EXPECT_DOUBLE_EQ(r.at("average_expert_bits").get<double>(), expert_bits / expert_n);
    EXPECT_DOUBLE_EQ(r.at("average_expert_bits").get<double>(), bits);
    EXPECT_NEAR(r.at("average_bits_mcmoe").get<double>(), linear_bits / linear_n, 1e-12);
    EXPECT_LE(r.at("average_bits_mcmoe").get<double>(), std::max(bits, attn_bits));
    EXPECT_GE(r.at("average_bits_mcmoe").get<double>(), std::min(bits, attn_bits));
    EXPECT_NEAR(r.at("average_bits_all").get<double>(),
                8 * bytes / static_cast<double>(model::CountParameters(c).total), 1e-12);
    ASSERT_OK_AND_ASSIGN(nlohmann::json rf, EvaluateModel(dir_.Join("fq"), dir_.Join("calib.txt"), kSeq, 2, nullptr));
    EXPECT_DOUBLE_EQ(rf.at("average_bits_mcmoe").get<double>(), 32.0);  // dequantized F32
    EXPECT_DOUBLE_EQ(rf.at("average_bits_all").get<double>(), 32.0);
    EXPECT_NEAR(rf.at("perplexity").get<double>(), r.at("perplexity").get<double>(),
                1e-5 * r.at("perplexity").get<double>());
  }
}

// Overwrites the bytes of tensor `name` in the safetensors file(s) of `dir` (same size).
void PatchTensor(const std::string& dir, const std::string& name, const std::string& bytes) {
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    std::fstream f(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    uint64_t header_size = 0;
    f.read(reinterpret_cast<char*>(&header_size), 8);
    std::string header(header_size, '\0');
    f.read(header.data(), static_cast<std::streamsize>(header_size));
    const nlohmann::json h = nlohmann::json::parse(header);
    if (!h.contains(name)) continue;
    const auto& offsets = h.at(name).at("data_offsets");
    ASSERT_EQ(offsets[1].get<uint64_t>() - offsets[0].get<uint64_t>(), bytes.size());
    f.seekp(static_cast<std::streamoff>(8 + header_size + offsets[0].get<uint64_t>()));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return;
  }
  FAIL() << name << " not found in " << dir;
}

// A corrupted hqq checkpoint is refused with a precise error, not read out of bounds.
TEST_P(McMoeExportTest, HqqLoaderRefusesInconsistentMetaData) {
  const model::ModelConfig& c = runner_->config();
  QuantizeStage rtn(/*gptq=*/false);
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_OK(Run(rtn, "quant", l, {{"bits", 2}, {"group_size", 8}}, {}, dir_.Join("unused")));
  }
  ExportStage exporter;
  ASSERT_OK(Run(exporter, "out", -1, {{"format", "hqq"}}, {"quant"}, dir_.Join("hqq")));
  const int l = kLayers - 1;
  const std::string name = model::ExpertTensorName(c, l, 0, model::ExpertProj::kGate);
  const std::string prefix = name.substr(0, name.size() - std::strlen("weight"));
  auto int32s = [](std::vector<int32_t> v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
  };
  {
    ASSERT_OK_AND_ASSIGN(auto packed, model::ModelRunner::Open(dir_.Join("hqq")));
    ASSERT_OK(packed->LoadLayer(l).status());
  }
  struct Corruption {
    const char* tensor;
    std::string bytes;
    const char* message;
  };
  const Corruption corruptions[] = {
      {"shape", int32s({static_cast<int32_t>(c.moe_intermediate_size + 1), static_cast<int32_t>(c.hidden_size)}),
       "shape must be"},
      {"group_size", int32s({4}), "group_size must be"},
      {"nbits", int32s({9}), "nbits 9"},
      {"nbits", int32s({3}), "W_q has shape"},  // 2-bit codes read as 3-bit: wrong packed shape
  };
  for (const Corruption& k : corruptions) {
    SCOPED_TRACE(k.tensor);
    ASSERT_OK(Run(exporter, "out", -1, {{"format", "hqq"}}, {"quant"}, dir_.Join("hqq")));
    PatchTensor(dir_.Join("hqq"), prefix + k.tensor, k.bytes);
    ASSERT_OK_AND_ASSIGN(auto packed, model::ModelRunner::Open(dir_.Join("hqq")));
    absl::StatusOr<model::LayerWeights> w = packed->LoadLayer(l);
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << w.status();
    EXPECT_THAT(std::string(w.status().message()), ::testing::HasSubstr(k.message));
  }
}

// Router probabilities of `x` [tokens, hidden] under `router`: fp32 softmax.
at::Tensor Probabilities(const at::Tensor& x, const at::Tensor& router) {
  return at::softmax(at::linear(x.to(at::kFloat), router.to(at::kFloat)), -1);
}

// Collects, per layer, the residual entering it, the MoE input and the rows routed to experts.
struct Trace : model::ForwardObserver {
  bool WantsLinearInputs(int) const override { return true; }
  void OnLayerInput(int layer, const at::Tensor& h) override { residual[layer] = h.clone(); }
  void OnMoeInput(int layer, const at::Tensor& x) override { moe_input[layer] = x.clone(); }
  void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
    if (id.kind == model::LinearKind::kExpertGate) rows[id.layer] += x.size(0);
  }
  std::map<int, at::Tensor> residual, moe_input;
  std::map<int, int64_t> rows;
};

// The odp stage's β is the lower median of p2/p1 over the calibration tokens (computed here from
// the router), its export parses, and in every enabled layer the exported forward runs exactly
// the routed rows left after applying ODP's rules by hand: second..k-th experts with
// p_j < β·p_1 dropped unless the token is among the floor(τ_h·S) most important of its sequence
// (importance ‖x_t‖_1 · a_t; a_t the column-sum attention statistic, or 1 / (S − t)).
TEST_P(McMoeExportTest, OdpBetaAndPrunedExpertsMatchADirectCount) {
  const model::ModelConfig& c = runner_->config();
  CalibrateStage calibrate;
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_OK(Run(calibrate, "stats", l, {{"batch_size", 4}}, {}, dir_.Join("unused")));
  }
  Trace original;
  ASSERT_OK(runner_->Forward(Tokens(), &original).status());
  for (bool positional : {false, true}) {
    SCOPED_TRACE(positional ? "positional prior" : "column-sum statistic");
    const double protect = 0.15;  // floor(0.15 * 16) = 2 protected tokens per sequence
    OdpStage odp;
    ASSERT_OK(Run(odp, "odp", -1,
                  {{"protect_fraction", protect}, {"enable_fraction", 1.0}, {"odp_positional_prior", positional}},
                  {"stats"}, dir_.Join("unused")));
    ASSERT_OK_AND_ASSIGN(at::Tensor beta, Get("odp/odp_beta"));
    ASSERT_OK_AND_ASSIGN(at::Tensor enabled, Get("odp/enabled_layers"));
    int moe = 0;
    for (int l = 0; l < kLayers; ++l) {
      if (!c.IsMoeLayer(l)) {
        EXPECT_TRUE(std::isnan(beta[l].item<double>()));
        continue;
      }
      ++moe;
      ASSERT_OK_AND_ASSIGN(model::LayerWeights w, runner_->LoadLayer(l));
      at::Tensor top = std::get<0>(Probabilities(original.moe_input.at(l), w.moe->router).topk(2, -1));
      std::vector<float> ratio(top.size(0));
      for (int64_t t = 0; t < top.size(0); ++t) ratio[t] = top[t][1].item<float>() / top[t][0].item<float>();
      std::sort(ratio.begin(), ratio.end());
      EXPECT_NEAR(beta[l].item<double>(), ratio[(ratio.size() - 1) / 2], 1e-6) << "layer " << l;
    }
    ASSERT_EQ(enabled.numel(), moe);  // enable_fraction 1: every MoE layer

    ExportStage exporter;
    ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"odp"}, dir_.Join("odp")));
    ASSERT_OK_AND_ASSIGN(auto exported, model::ModelRunner::Open(dir_.Join("odp")));
    const model::OdpSettings& s = *exported->config().moec.odp;
    EXPECT_EQ(s.enabled_layers.size(), static_cast<size_t>(moe));
    EXPECT_DOUBLE_EQ(s.tau_high, protect);
    EXPECT_EQ(s.positional_prior, positional);
    Trace pruned;
    ASSERT_OK(exported->Forward(Tokens(), &pruned).status());
    int64_t total_dropped = 0;
    for (int l : s.enabled_layers) {
      EXPECT_DOUBLE_EQ(s.beta[l].value_or(-1), beta[l].item<double>());
      ASSERT_OK_AND_ASSIGN(model::LayerWeights w, exported->LoadLayer(l));
      const int k = c.NumActiveExperts(l);
      const at::Tensor x = pruned.moe_input.at(l);
      const at::Tensor h = pruned.residual.at(l);
      const int64_t batch = h.size(0), seq = h.size(1);
      at::Tensor a;
      if (positional) {
        a = (1.0 / at::arange(seq, 0, -1, at::kLong).to(at::kDouble)).repeat({batch});
      } else {
        const model::RopeTables rope = model::MakeRopeTables(seq, c.head_dim, c.rope_theta);
        a = model::Attention(c, l, w.attention, model::RmsNorm(h, w.input_norm, c.rms_norm_eps), rope,
                             /*want_column_statistic=*/true, nullptr)
                .column_statistic.reshape(-1)
                .to(at::kDouble);
      }
      const at::Tensor l1 = x.to(at::kFloat).abs().sum(-1).to(at::kDouble);
      const at::Tensor top = std::get<0>(Probabilities(x, w.moe->router).topk(k, -1));
      const int64_t high = static_cast<int64_t>(std::floor(protect * seq));
      int64_t dropped = 0;
      for (int64_t b = 0; b < batch; ++b) {
        // Least to most important, ties by position; the last `high` are protected.
        std::vector<int64_t> order(seq);
        std::iota(order.begin(), order.end(), 0);
        std::vector<double> importance(seq);
        for (int64_t t = 0; t < seq; ++t) {
          importance[t] = static_cast<float>(l1[b * seq + t].item<double>()) *
                          static_cast<float>(a[b * seq + t].item<double>());
        }
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t i, int64_t j) { return importance[i] < importance[j]; });
        std::vector<bool> keep(seq, false);
        for (int64_t i = seq - high; i < seq; ++i) keep[order[i]] = true;
        for (int64_t t = 0; t < seq; ++t) {
          if (keep[t]) continue;
          const float p1 = top[b * seq + t][0].item<float>();
          for (int j = 1; j < k; ++j) {
            // As the forward compares: p_j >= p_1 · β in fp32 keeps expert j.
            if (top[b * seq + t][j].item<float>() < p1 * static_cast<float>(beta[l].item<double>())) ++dropped;
          }
        }
      }
      EXPECT_EQ(x.size(0) * k - pruned.rows.at(l), dropped) << "layer " << l;
      total_dropped += dropped;
    }
    EXPECT_GT(total_dropped, 0) << "ODP pruned nothing";
  }
}

// The GPTQ-format export (qweight / qzeros / scales / g_idx, mixed widths through `dynamic`) read
// by an independent dequantizer (tests/oracle/hf_reference.py, written from the format: the
// values' little-endian bit stream along the packed axis, v1 zero points stored minus one, fp16
// scales) gives the logits moec's loader gives: what GPTQ loaders see is what moec meant.
TEST_P(McMoeExportTest, GptqExportMatchesAnIndependentDequantizer) {
  if (!moec::testing::PythonTorchAvailable()) {
    GTEST_SKIP() << moec::testing::kOraclePython << " cannot import torch and numpy";
  }
  std::set<std::string> formats;
  for (int bits : {2, 3, 4, 8}) {
    SCOPED_TRACE(absl::StrCat(bits, " bits"));
    const int attn_bits = bits == 2 ? 3 : bits == 3 ? 4 : bits == 4 ? 8 : 4;  // two widths
    const bool gptq = bits == 3;
    QuantizeStage quantize(gptq);
    kinds_[2].second = gptq ? "gptq" : "rtn";  // the recipe's kind of stage "quant"
    nlohmann::json params = {{"bits", bits}, {"attn_bits", attn_bits}, {"group_size", 8},
                             {"sym", bits == 3 || bits == 8}};
    if (gptq) params["shared_bits"] = attn_bits;
    for (int l = 0; l < kLayers; ++l) {
      // Symmetric codes never have a zero point of 0: those exports are v1 ("gptq", zeros
      // stored minus one); asymmetric ones here have some and are v2.
      ASSERT_OK(Run(quantize, "quant", l, params, {}, dir_.Join("unused")));
    }
    ExportStage exporter;
    const std::string out = dir_.Join(absl::StrCat("gptq", bits));
    ASSERT_OK(Run(exporter, "out", -1, {{"format", "gptq"}}, {"quant"}, out));
    ASSERT_OK_AND_ASSIGN(model::ModelConfig exported_config, model::LoadModelConfig(out));
    formats.insert(exported_config.quantization->checkpoint_format);
    ASSERT_OK_AND_ASSIGN(auto exported, model::ModelRunner::Open(out));
    const at::Tensor tokens = Tokens().narrow(0, 0, 2);
    ASSERT_OK_AND_ASSIGN(at::Tensor ours, exported->Forward(tokens));
    TempDir tmp;
    const at::Tensor theirs = moec::testing::OracleLogits(out, tokens, tmp);
    ASSERT_TRUE(theirs.defined());
    ASSERT_EQ(theirs.sizes(), ours.sizes());
    EXPECT_TRUE(at::allclose(ours, theirs, 1e-4, 1e-5))
        << "max logit diff " << (ours - theirs).abs().max().item<double>();
    ASSERT_OK_AND_ASSIGN(at::Tensor original, runner_->Forward(tokens));
    EXPECT_FALSE(at::allclose(ours, original, 1e-3, 1e-3));  // quantization did change the model
  }
  EXPECT_EQ(formats, (std::set<std::string>{"gptq", "gptq_v2"}));  // both zero-point encodings
  // Widths no GPTQ loader reads are refused, naming the way out.
  QuantizeStage rtn(/*gptq=*/false);
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_OK(Run(rtn, "quant", l, {{"bits", 5}, {"attn_bits", 4}, {"group_size", 8}},
                  {}, dir_.Join("unused")));
  }
  ExportStage exporter;
  absl::Status five = Run(exporter, "out", -1, {{"format", "gptq"}}, {"quant"}, dir_.Join("gptq5"));
  EXPECT_EQ(five.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(five.message()), ::testing::HasSubstr("export it as hqq or fake_quant"));
}

INSTANTIATE_TEST_SUITE_P(Arch, McMoeExportTest, ::testing::Values("mixtral", "deepseek"));

}  // namespace
}  // namespace moec::stages
