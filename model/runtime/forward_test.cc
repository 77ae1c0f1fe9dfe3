#include "model/runtime/forward.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "model/config/tensor_names.h"
#include "storage/file_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::model {
namespace {

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::HasSubstr;

tools::TinyModelOptions Tiny(const std::string& type) {
  tools::TinyModelOptions o;
  o.model_type = type;
  o.num_layers = 3;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 4;
  o.top_k = 2;
  o.moe_intermediate = 24;
  o.intermediate = 40;
  o.vocab = 300;
  o.seed = 7;
  return o;
}

std::unique_ptr<ModelRunner> OpenTiny(const TempDir& dir, const tools::TinyModelOptions& o,
                                      ComputeDtype dtype = ComputeDtype::kF32) {
  const std::string path = dir.Join(o.model_type);
  EXPECT_OK(tools::WriteTinyModel(o, path));
  RunnerOptions ro;
  ro.dtype = dtype;
  auto runner = ModelRunner::Open(path, ro);
  EXPECT_OK(runner.status());
  return runner.ok() ? std::move(*runner) : nullptr;
}

at::Tensor RandomTokens(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  at::manual_seed(seed);
  return at::randint(0, vocab, {batch, seq}, at::kLong);
}

// A per-token, per-expert loop in float64: the oracle of the batched dispatch in MoeBlock.
at::Tensor NaiveMoe(const MoeWeights& w, const RoutingRule& rule, const at::Tensor& x) {
  at::Tensor out = at::zeros(x.sizes(), at::kDouble);
  auto mlp = [](const MlpWeights& m, const at::Tensor& v) {
    at::Tensor g = at::mv(m.gate.to(at::kDouble), v), u = at::mv(m.up.to(at::kDouble), v);
    return at::mv(m.down.to(at::kDouble), g / (1 + at::exp(-g)) * u);
  };
  for (int64_t t = 0; t < x.size(0); ++t) {
    at::Tensor v = x[t].to(at::kDouble);
    at::Tensor p = at::softmax(at::mv(w.router.to(at::kDouble), v), 0);
    std::vector<std::pair<double, int>> ranked;
    for (int e = 0; e < p.size(0); ++e) ranked.push_back({p[e].item<double>(), e});
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](auto& a, auto& b) { return a.first > b.first; });
    std::vector<std::pair<double, int>> chosen;
    for (int i = 0; i < rule.top_k; ++i) {
      if (i > 0 && rule.skip_beta && ranked[i].first < *rule.skip_beta * ranked[0].first) continue;
      chosen.push_back(ranked[i]);
    }
    double sum = 0;
    for (auto& c : chosen) sum += c.first;
    for (auto& c : chosen) {
      const double weight = rule.renormalize ? c.first / sum : c.first;
      out[t] += weight * mlp(w.experts[c.second], v);
    }
    if (w.shared.defined()) {
      at::Tensor s = mlp(w.shared, v);
      if (w.shared_expert_gate.defined()) {
        const double g = at::dot(w.shared_expert_gate[0].to(at::kDouble), v).item<double>();
        s = s / (1 + std::exp(-g));
      }
      out[t] += s;
    }
  }
  return out;
}

class ArchTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ArchTest, MoeBlockMatchesPerTokenLoop) {
  TempDir dir;
  auto runner = OpenTiny(dir, Tiny(GetParam()));
  ASSERT_NE(runner, nullptr);
  const ModelConfig& c = runner->config();
  int layer = 0;
  while (!c.IsMoeLayer(layer)) ++layer;
  ASSERT_OK_AND_ASSIGN(LayerWeights w, runner->LoadLayer(layer));
  ASSERT_TRUE(w.moe.has_value());
  at::manual_seed(3);
  at::Tensor x = at::randn({24, c.hidden_size});
  for (std::optional<double> beta : {std::optional<double>(), std::optional<double>(0.7)}) {
    RoutingRule rule = RoutingRuleFor(c, layer);
    rule.skip_beta = beta;
    at::Tensor fast = MoeBlock(c, layer, *w.moe, rule, x, 24, {}, nullptr);
    at::Tensor naive = NaiveMoe(*w.moe, rule, x);
    EXPECT_TRUE(at::allclose(fast.to(at::kDouble), naive, 1e-5, 1e-6))
        << "max diff " << (fast.to(at::kDouble) - naive).abs().max().item<double>();
  }
}

TEST_P(ArchTest, ForwardIsCausalAndFinite) {
  TempDir dir;
  auto runner = OpenTiny(dir, Tiny(GetParam()));
  ASSERT_NE(runner, nullptr);
  const int64_t vocab = runner->config().vocab_size;
  at::Tensor tokens = RandomTokens(2, 12, vocab, 1);
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, runner->Forward(tokens));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 12, vocab}));
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
  // Changing token 8 leaves the logits of positions 0..7 unchanged and changes position 8.
  at::Tensor edited = tokens.clone();
  edited[0][8] = (tokens[0][8].item<int64_t>() + 1) % vocab;
  ASSERT_OK_AND_ASSIGN(at::Tensor logits2, runner->Forward(edited));
  EXPECT_TRUE(at::allclose(logits.narrow(1, 0, 8), logits2.narrow(1, 0, 8), 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(logits[0][8], logits2[0][8], 1e-5, 1e-6));
  // Batch rows are independent.
  ASSERT_OK_AND_ASSIGN(at::Tensor single, runner->Forward(tokens.narrow(0, 1, 1)));
  EXPECT_TRUE(at::allclose(single[0], logits[1], 1e-4, 1e-5));
}

TEST_P(ArchTest, Bf16ComputeStaysCloseToFp32) {
  TempDir dir;
  tools::TinyModelOptions o = Tiny(GetParam());
  auto f32 = OpenTiny(dir, o);
  ASSERT_NE(f32, nullptr);
  RunnerOptions ro;
  ro.dtype = ComputeDtype::kBF16;
  ASSERT_OK_AND_ASSIGN(auto bf16, ModelRunner::Open(dir.Join(o.model_type), ro));
  at::Tensor tokens = RandomTokens(1, 10, f32->config().vocab_size, 2);
  ASSERT_OK_AND_ASSIGN(at::Tensor a, f32->Forward(tokens));
  ASSERT_OK_AND_ASSIGN(at::Tensor b, bf16->Forward(tokens));
  const double rel = ((a - b).norm() / a.norm()).item<double>();
  EXPECT_LT(rel, 0.05);
  EXPECT_GT(rel, 0.0);  // it really ran in bf16
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, ArchTest,
                         ::testing::Values("mixtral", "deepseek", "qwen2_moe", "olmoe",
                                           "qwen3_moe"));

// Counts what the capture hooks see.
class CountingObserver : public ForwardObserver {
 public:
  bool WantsLinearInputs(int layer) const override { return true; }
  void OnLayerInput(int layer, const at::Tensor& h) override { inputs.push_back(h.clone()); }
  void OnLayerOutput(int layer, const at::Tensor& h) override { outputs.push_back(h.clone()); }
  void OnLinearInput(const LinearId& id, const at::Tensor& x, const at::Tensor& idx) override {
    if (id.kind == LinearKind::kExpertGate) expert_rows += x.size(0);
    if (id.kind == LinearKind::kQ) q_rows += x.size(0);
    if (id.kind == LinearKind::kExpertDown) {
      EXPECT_EQ(x.size(1), down_width);
    }
  }
  void OnRouterLogits(int layer, const at::Tensor& logits) override { ++router_calls; }
  std::vector<at::Tensor> inputs, outputs;
  int64_t expert_rows = 0, q_rows = 0, down_width = 0;
  int router_calls = 0;
};

TEST(ForwardTest, ObserverSeesEveryLayerAndRoutedTokensOnly) {
  TempDir dir;
  auto runner = OpenTiny(dir, Tiny("mixtral"));
  ASSERT_NE(runner, nullptr);
  CountingObserver obs;
  obs.down_width = runner->config().moe_intermediate_size;
  at::Tensor tokens = RandomTokens(2, 8, runner->config().vocab_size, 4);
  ASSERT_OK(runner->Forward(tokens, &obs).status());
  ASSERT_EQ(obs.inputs.size(), 3u);
  EXPECT_EQ(obs.router_calls, 3);
  EXPECT_EQ(obs.q_rows, 3 * 16);
  EXPECT_EQ(obs.expert_rows, 3 * 16 * 2);  // every token goes to exactly top-2 experts
  for (int l = 0; l + 1 < 3; ++l) EXPECT_TRUE(at::equal(obs.outputs[l], obs.inputs[l + 1]));
}

// Records every linear input it is shown, and stops layers where it is told to.
class ExtentObserver : public ForwardObserver {
 public:
  explicit ExtentObserver(LayerExtent extent) : extent_(extent) {}
  bool WantsLinearInputs(int layer) const override { return true; }
  LayerExtent Extent(int layer) const override { return extent_; }
  void OnLayerOutput(int layer, const at::Tensor& h) override { ++outputs; }
  void OnLinearInput(const LinearId& id, const at::Tensor& x, const at::Tensor& idx) override {
    seen[{id.kind, id.expert}] = x.clone();
  }
  void OnRouterLogits(int layer, const at::Tensor& logits) override { ++router_calls; }
  std::map<std::pair<LinearKind, int>, at::Tensor> seen;
  int outputs = 0, router_calls = 0;

 private:
  const LayerExtent extent_;
};

TEST(ForwardTest, ShortenedLayersStopAfterTheInputsTheyCaptureAndCaptureThemUnchanged) {
  TempDir dir;
  auto runner = OpenTiny(dir, Tiny("mixtral"));
  ASSERT_NE(runner, nullptr);
  ASSERT_OK_AND_ASSIGN(LayerWeights w, runner->LoadLayer(1));
  at::Tensor h = at::randn({2, 8, runner->config().hidden_size}, at::kFloat);
  ExtentObserver all(LayerExtent::kAll), qkv(LayerExtent::kQkvInputs), o(LayerExtent::kOInput);
  EXPECT_TRUE(runner->RunLayer(w, h, &all).defined());
  EXPECT_FALSE(runner->RunLayer(w, h, &qkv).defined());
  EXPECT_FALSE(runner->RunLayer(w, h, &o).defined());
  EXPECT_EQ(all.outputs, 1);
  EXPECT_EQ(qkv.outputs + o.outputs + qkv.router_calls + o.router_calls, 0);
  EXPECT_EQ(qkv.seen.size(), 3u);  // q, k, v
  EXPECT_EQ(o.seen.size(), 4u);    // and o; no router, no experts
  EXPECT_GT(all.seen.size(), 4u);
  for (const auto& [id, x] : o.seen) {
    EXPECT_TRUE(at::equal(x, all.seen.at(id))) << static_cast<int>(id.first);
    if (id.first != LinearKind::kO) EXPECT_TRUE(at::equal(x, qkv.seen.at(id)));
  }
  // The MLP extents: every input up to the named one, equal to the whole layer's; none after.
  ExtentObserver gate_up(LayerExtent::kGateUpInputs), down(LayerExtent::kDownInputs);
  EXPECT_FALSE(runner->RunLayer(w, h, &gate_up).defined());
  EXPECT_FALSE(runner->RunLayer(w, h, &down).defined());
  EXPECT_EQ(gate_up.outputs + down.outputs, 0);
  EXPECT_EQ(down.seen.size(), all.seen.size());
  int downs = 0;
  for (const auto& [id, x] : all.seen) {
    ASSERT_TRUE(down.seen.count(id)) << static_cast<int>(id.first) << " " << id.second;
    EXPECT_TRUE(at::equal(x, down.seen.at(id)));
    const bool is_down = id.first == LinearKind::kExpertDown;
    downs += is_down;
    EXPECT_EQ(gate_up.seen.count(id), is_down ? 0u : 1u) << static_cast<int>(id.first);
    if (!is_down) EXPECT_TRUE(at::equal(x, gate_up.seen.at(id)));
  }
  EXPECT_GT(downs, 0);
}

TEST(ForwardTest, PerplexityIsTheSameInOneOrManyPasses) {
  TempDir dir;
  tools::TinyModelOptions o = Tiny("deepseek");
  ASSERT_OK(tools::WriteTinyModel(o, dir.Join("m")));
  TokenWindows windows;
  windows.seqlen = 16;
  at::Tensor t = RandomTokens(5, 16, 300, 9).to(at::kInt).contiguous();
  windows.tokens.assign(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + t.numel());
  RunnerOptions one;
  RunnerOptions many;
  many.activation_budget_bytes = 1;  // one window per pass
  ASSERT_OK_AND_ASSIGN(auto a, ModelRunner::Open(dir.Join("m"), one));
  ASSERT_OK_AND_ASSIGN(auto b, ModelRunner::Open(dir.Join("m"), many));
  int64_t last_done = 0, last_total = 0;
  ASSERT_OK_AND_ASSIGN(PerplexityResult ra, a->Perplexity(windows));
  ASSERT_OK_AND_ASSIGN(PerplexityResult rb, b->Perplexity(windows, [&](int64_t d, int64_t t) {
                         last_done = d;
                         last_total = t;
                       }));
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, 5 * (3 + 2));
  // Different batch shapes change GEMM blocking, hence rounding: equal to fp32 precision.
  EXPECT_NEAR(ra.perplexity, rb.perplexity, 1e-6 * ra.perplexity);
  EXPECT_EQ(ra.predicted_tokens, 5 * 15);
  // One pass whose layers run on micro-batches of 2, 2 and 1 windows.
  RunnerOptions micro;
  micro.micro_batch_tokens = 32;
  ASSERT_OK_AND_ASSIGN(auto c, ModelRunner::Open(dir.Join("m"), micro));
  ASSERT_OK_AND_ASSIGN(PerplexityResult rc, c->Perplexity(windows, [&](int64_t d, int64_t t) {
                         last_done = d;
                         last_total = t;
                       }));
  EXPECT_EQ(last_total, 3 + 2);  // progress counts passes and layers, not micro-batches
  EXPECT_NEAR(ra.perplexity, rc.perplexity, 1e-6 * ra.perplexity);
  EXPECT_EQ(rc.predicted_tokens, 5 * 15);
  // A random model is close to uniform over the vocabulary.
  EXPECT_GT(ra.perplexity, 0.5 * 302);
  EXPECT_LT(ra.perplexity, 2.0 * 302);
  // Hand computation of the NLL of window 0 from the logits.
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, a->Forward(t.to(at::kLong)));
  double sum = 0;
  for (int w = 0; w < 5; ++w) {
    double window = 0;
    for (int i = 0; i + 1 < 16; ++i) {
      at::Tensor lp = at::log_softmax(logits[w][i].to(at::kDouble), 0);
      window -= lp[t[w][i + 1].item<int64_t>()].item<double>();
    }
    sum += window / 15;
  }
  EXPECT_NEAR(ra.mean_nll, sum / 5, 1e-5);
}

TEST(ForwardTest, CancelledPerplexityStops) {
  TempDir dir;
  auto runner = OpenTiny(dir, Tiny("mixtral"));
  ASSERT_NE(runner, nullptr);
  TokenWindows windows;
  windows.seqlen = 4;
  windows.tokens = {1, 2, 3, 4};
  std::atomic<bool> cancelled{true};
  EXPECT_THAT(runner->Perplexity(windows, nullptr, &cancelled).status(),
              StatusIs(absl::StatusCode::kCancelled));
}

TEST(ForwardTest, BadInputsAreClearErrors) {
  TempDir dir;
  auto runner = OpenTiny(dir, Tiny("mixtral"));
  ASSERT_NE(runner, nullptr);
  at::Tensor bad = at::full({1, 3}, runner->config().vocab_size, at::kLong);
  EXPECT_THAT(runner->Forward(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside the vocabulary")));
  EXPECT_THAT(runner->LoadLayer(3).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  TokenWindows short_windows;
  short_windows.seqlen = 1;
  short_windows.tokens = {1};
  EXPECT_THAT(runner->Perplexity(short_windows).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ForwardTest, MissingOrMisshapenTensorNamesIt) {
  TempDir dir;
  tools::TinyModelOptions o = Tiny("mixtral");
  ASSERT_OK(tools::WriteTinyModel(o, dir.Join("m")));
  // Claim more experts than the checkpoint holds: expert 4 is missing.
  std::string config = *storage::ReadFileToString(dir.Join("m/config.json"), 1 << 20);
  const std::string from = "\"num_local_experts\": 4";
  ASSERT_NE(config.find(from), std::string::npos);
  config.replace(config.find(from), from.size(), "\"num_local_experts\": 5");
  ASSERT_OK(storage::WriteFileAtomically(dir.Join("m/config.json"), config));
  ASSERT_OK_AND_ASSIGN(auto runner, ModelRunner::Open(dir.Join("m")));
  absl::Status s = runner->LoadLayer(0).status();
  // The router has 4 rows where config.json implies 5.
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("gate.weight")));
}

// Appends the GPTQ tensors of routed-expert matrix `w` (`spec`), quantized to `bits` bits in
// act-order groups of `group` input columns (checkpoint_format "gptq"), to `quantized`, and its
// fake-quantized F32 copy to `fake`.
void AppendGptqExpert(const TensorSpec& spec, const at::Tensor& w, int bits, int64_t group,
                      std::vector<NamedTensor>* quantized, std::vector<NamedTensor>* fake) {
  const int64_t out = w.size(0), in = w.size(1), groups = in / group;
  // Act-order style: input column i belongs to group perm[i] / group.
  at::Tensor g_idx = at::randperm(in, at::kLong).div(group, "floor");
  at::Tensor scales = at::empty({groups, out}), zeros = at::empty({groups, out}, at::kLong);
  at::Tensor q = at::empty({in, out}, at::kLong);
  const double maxq = (1 << bits) - 1;
  for (int64_t g = 0; g < groups; ++g) {
    at::Tensor cols = (g_idx == g).nonzero().squeeze(1);
    at::Tensor wg = w.index_select(1, cols);  // [out, members]
    at::Tensor lo = std::get<0>(wg.min(1)).clamp_max(0), hi = std::get<0>(wg.max(1)).clamp_min(0);
    at::Tensor scale = ((hi - lo) / maxq).clamp_min(1e-8).to(at::kHalf).to(at::kFloat);
    // Zero points >= 1: checkpoint_format "gptq" stores zero - 1, which cannot hold -1.
    at::Tensor zero = at::round(-lo / scale).clamp(1, maxq);
    scales[g] = scale;
    zeros[g] = zero.to(at::kLong);
    at::Tensor qg = at::clamp(at::round(wg / scale.unsqueeze(1)) + zero.unsqueeze(1), 0, maxq);
    q.index_copy_(0, cols, qg.t().to(at::kLong));
  }
  at::Tensor deq = ((q.to(at::kFloat) - zeros.index_select(0, g_idx).to(at::kFloat)) *
                    scales.index_select(0, g_idx)).t().contiguous();
  fake->push_back({spec.name, deq, std::nullopt});
  at::Tensor q8 = q.to(at::kByte).contiguous();
  at::Tensor qweight = at::empty({kernels::PackedWordsPerColumn(in, bits), out}, at::kInt);
  ASSERT_OK(kernels::PackRows(q8.data_ptr<uint8_t>(), in, out, bits,
                              reinterpret_cast<uint32_t*>(qweight.data_ptr<int32_t>())));
  // checkpoint_format "gptq" stores zero - 1.
  at::Tensor z8 = (zeros - 1).t().to(at::kByte).contiguous();  // [out, groups]
  at::Tensor zt = at::empty({kernels::PackedWordsPerColumn(out, bits), groups}, at::kInt);
  ASSERT_OK(kernels::PackRows(z8.data_ptr<uint8_t>(), out, groups, bits,
                              reinterpret_cast<uint32_t*>(zt.data_ptr<int32_t>())));
  const std::string prefix = spec.name.substr(0, spec.name.size() - 6);
  quantized->push_back({prefix + "qweight", qweight, std::nullopt});
  quantized->push_back({prefix + "qzeros", zt.t().contiguous(), std::nullopt});
  quantized->push_back({prefix + "scales", scales, storage::DType::kF16});
  quantized->push_back({prefix + "g_idx", g_idx.to(at::kInt), std::nullopt});
}

// GPTQ checkpoints (qweight / qzeros / scales / g_idx, mixed widths, act-order g_idx) load as
// their dequantized weights: the forward equals the forward of a fake-quantized F32 copy.
TEST(ForwardTest, GptqCheckpointDequantizesOnLoad) {
  TempDir dir;
  tools::TinyModelOptions o = Tiny("mixtral");
  o.moe_intermediate = 32;  // in_features 32: the packed width names the bit width uniquely
  ASSERT_OK(tools::WriteTinyModel(o, dir.Join("m")));
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("m")));
  ASSERT_OK_AND_ASSIGN(auto loader, WeightLoader::Open(dir.Join("m"), at::kFloat));
  std::vector<NamedTensor> quantized, fake;
  const int64_t group = 16;
  at::manual_seed(3);
  for (const TensorSpec& spec : ModelTensors(c)) {
    ASSERT_OK_AND_ASSIGN(at::Tensor w, loader->Load(spec));
    if (spec.role != TensorRole::kRoutedExpert) {
      quantized.push_back({spec.name, w, std::nullopt});
      fake.push_back({spec.name, w, std::nullopt});
      continue;
    }
    const int bits = spec.expert == 0 ? 4 : spec.expert == 1 ? 3 : 2;
    ASSERT_NO_FATAL_FAILURE(AppendGptqExpert(spec, w, bits, group, &quantized, &fake));
  }
  std::string config = *storage::ReadFileToString(dir.Join("m/config.json"), 1 << 20);
  config.insert(config.rfind('}'),
                ", \"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, "
                "\"group_size\": 16, \"desc_act\": true, \"sym\": false, "
                "\"checkpoint_format\": \"gptq\"}");
  for (const char* name : {"q", "f"}) {
    std::filesystem::create_directories(dir.Join(name));
    ASSERT_OK(storage::WriteFileAtomically(dir.Join(name) + "/config.json", config));
  }
  ASSERT_OK(WriteCheckpointTensors(dir.Join("q"), quantized));
  ASSERT_OK(WriteCheckpointTensors(dir.Join("f"), fake));
  ASSERT_OK_AND_ASSIGN(auto qr, ModelRunner::Open(dir.Join("q")));
  ASSERT_OK_AND_ASSIGN(auto fr, ModelRunner::Open(dir.Join("f")));
  ASSERT_OK_AND_ASSIGN(auto orig, ModelRunner::Open(dir.Join("m")));
  at::Tensor tokens = RandomTokens(2, 10, c.vocab_size, 8);
  ASSERT_OK_AND_ASSIGN(at::Tensor lq, qr->Forward(tokens));
  ASSERT_OK_AND_ASSIGN(at::Tensor lf, fr->Forward(tokens));
  ASSERT_OK_AND_ASSIGN(at::Tensor lo, orig->Forward(tokens));
  EXPECT_TRUE(at::allclose(lq, lf, 1e-5, 1e-6)) << (lq - lf).abs().max().item<float>();
  EXPECT_FALSE(at::allclose(lq, lo, 1e-3, 1e-4));  // quantization really changed the model

  // A qweight whose packed width fits no bit width is a clear error naming the tensor.
  std::vector<NamedTensor> broken = quantized;
  for (NamedTensor& t : broken) {
    if (t.name.find("experts.0.w1.qweight") != std::string::npos) {
      t.tensor = t.tensor.narrow(0, 0, 1).repeat({9, 1});
    }
  }
  std::filesystem::create_directories(dir.Join("broken"));
  ASSERT_OK(storage::WriteFileAtomically(dir.Join("broken") + "/config.json", config));
  ASSERT_OK(WriteCheckpointTensors(dir.Join("broken"), broken));
  ASSERT_OK_AND_ASSIGN(auto br, ModelRunner::Open(dir.Join("broken")));
  EXPECT_THAT(br->LoadLayer(0).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("experts.0.w1.weight")));
}

}  // namespace
}  // namespace moec::model
