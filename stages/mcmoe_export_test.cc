// MC-MoE's packed export and the GPTQ format, checked against direct computations on tiny random
// models: the hqq export's forward equals the fake_quant export's forward of the same codes,
// evaluate's average widths equal hand-computed ones, a corrupted hqq checkpoint is refused, and
// an independent dequantizer reads the GPTQ export as moec does. (Online dynamic pruning:
// mcmoe_odp_test.cc.)
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/hqq.h"
#include "model/config/parameter_count.h"
#include "model/config/tensor_names.h"
#include "model/runtime/forward.h"
#include "stages/evaluate_stage.h"
#include "stages/export_stage.h"
#include "stages/mcmoe_export_test_util.h"
#include "stages/quantize_stage.h"
#include "tests/testing/oracle.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::stages {

using ::moec::testing::TempDir;

namespace {

// Widths and bytes of an hqq export, counted by hand.
struct HqqCounts {
  double expert_bits = 0, expert_n = 0, linear_bits = 0, linear_n = 0, bytes = 0;
};

// The counts of the hqq export of the model `c` with the quantized modules `widths` (every routed
// expert at `bits`): hqq stores W_q ([ceil(R / c), G] of 1 or 4 bytes), fp16 scale and zero
// [R, 1], int32 nbits, group_size and shape [2].
HqqCounts CountHqqExport(const model::ModelConfig& c, const std::map<std::string, int>& widths,
                         int bits) {
  HqqCounts n;
  for (const model::TensorSpec& t : model::ModelTensors(c)) {
    const double elements = static_cast<double>(t.NumElements());
    auto it = widths.find(t.name);
    if (it == widths.end()) {
      n.bytes += 4 * elements;  // F32 tiny model
      if (t.role != model::TensorRole::kRouter && t.shape.size() == 2 &&
          t.role != model::TensorRole::kEmbedding && t.role != model::TensorRole::kLmHead) {
        n.linear_bits += 32 * elements;  // an unquantized linear (none expected)
        n.linear_n += elements;
      }
      continue;
    }
    const int w = it->second;
    const int64_t r = t.NumElements() / 8;
    n.bytes += kernels::HqqPackedRows(r, w) * 8 * (w == 3 ? 4 : 1) + 2 * 2 * r + 4 + 4 + 8;
    n.linear_bits += w * elements;
    n.linear_n += elements;
    if (t.role == model::TensorRole::kRoutedExpert) {
      EXPECT_EQ(w, bits) << t.name;
      n.expert_bits += w * elements;
      n.expert_n += elements;
    }
  }
  return n;
}

// Expects evaluate's report `r` on the hqq export with widths `bits` (experts) and `attn_bits` to
// give the widths and bytes `n` of a model of `params` parameters.
void ExpectHqqReport(const nlohmann::json& r, const HqqCounts& n, int bits, int attn_bits,
                     int64_t params) {
  EXPECT_DOUBLE_EQ(r.at("average_expert_bits").get<double>(), n.expert_bits / n.expert_n);
  EXPECT_DOUBLE_EQ(r.at("average_expert_bits").get<double>(), bits);
  EXPECT_NEAR(r.at("average_bits_mcmoe").get<double>(), n.linear_bits / n.linear_n, 1e-12);
  EXPECT_LE(r.at("average_bits_mcmoe").get<double>(), std::max(bits, attn_bits));
  EXPECT_GE(r.at("average_bits_mcmoe").get<double>(), std::min(bits, attn_bits));
  EXPECT_NEAR(r.at("average_bits_all").get<double>(), 8 * n.bytes / static_cast<double>(params),
              1e-12);
}

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

    // Widths and bytes by hand: summaries give each quantized module's width.
    ASSERT_OK_AND_ASSIGN(const auto widths, QuantizedWidths());
    const HqqCounts n = CountHqqExport(c, widths, bits);
    ASSERT_OK_AND_ASSIGN(nlohmann::json r, EvaluateModel(dir_.Join("hqq"), dir_.Join("calib.txt"), kSeq, 2, nullptr));
    ExpectHqqReport(r, n, bits, attn_bits, model::CountParameters(c).total);
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
