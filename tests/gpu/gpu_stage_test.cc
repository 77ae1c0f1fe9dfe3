// GPU against CPU, stage by stage, on tiny models: the same code placed on cuda:0 must give what
// it gives on the CPU within the tolerances of docs/data_plane.md "Numerics on GPUs". Every case
// skips itself where no GPU is visible (CI, this project's build machines); tests/gpu/run.sh runs
// them on a lent GPU machine.
#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <cmath>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "kernels/device_info.h"
#include "model/runtime/forward.h"
#include "quant/gptq.h"
#include "quant/quantizer.h"
#include "quant/sparse.h"
#include "model/runtime/layers.h"
#include "stages/evaluate_stage.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec {
namespace {

using testing::TempDir;

bool HaveGpu() { return kernels::CudaDeviceCount() > 0 && at::detail::getCUDAHooks().hasCUDA(); }

tools::TinyModelOptions Tiny(const std::string& type) {
  tools::TinyModelOptions o;
  o.model_type = type;
  o.num_layers = 3;
  o.seed = 7;
  return o;
}

model::TokenWindows RandomWindows(int64_t count, int64_t seq, int64_t vocab, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor t = at::randint(vocab, {count, seq}, g, at::TensorOptions(at::kLong)).to(at::kInt);
  model::TokenWindows w;
  w.seqlen = seq;
  w.tokens.assign(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + t.numel());
  return w;
}

class GpuStageTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no CUDA GPU visible";
  }
  // The tiny model of the parameter's architecture, opened on the CPU and on cuda:0.
  void OpenBoth() {
    ASSERT_OK(tools::WriteTinyModel(Tiny(GetParam()), dir_.Join("m")));
    model::RunnerOptions gpu;
    gpu.device = at::Device(at::kCUDA, 0);
    ASSERT_OK_AND_ASSIGN(cpu_, model::ModelRunner::Open(dir_.Join("m")));
    ASSERT_OK_AND_ASSIGN(gpu_, model::ModelRunner::Open(dir_.Join("m"), gpu));
  }
  TempDir dir_;
  std::unique_ptr<model::ModelRunner> cpu_, gpu_;
};

// The layer-streaming forward: logits on cuda:0 against the CPU's, fp32.
TEST_P(GpuStageTest, ForwardLogitsMatchTheCpu) {
  ASSERT_NO_FATAL_FAILURE(OpenBoth());
  const auto& a = cpu_;
  const auto& b = gpu_;
  model::TokenWindows w = RandomWindows(4, 32, 280, 3);
  at::Tensor tokens =
      at::from_blob(w.tokens.data(), {4, 32}, at::kInt).to(at::kLong);
  ASSERT_OK_AND_ASSIGN(at::Tensor la, a->Forward(tokens));
  ASSERT_OK_AND_ASSIGN(at::Tensor lb, b->Forward(tokens));
  ASSERT_TRUE(lb.is_cuda());
  const double rel = ((lb.cpu() - la).norm() / la.norm()).item<double>();
  EXPECT_LT(rel, 1e-4) << "relative error of the logits";
  // Routing agrees: the argmax token of almost every position is the same.
  const double agree = (lb.cpu().argmax(-1) == la.argmax(-1)).to(at::kDouble).mean().item<double>();
  EXPECT_GT(agree, 0.99);
}

// Perplexity and the evaluate stage's report: within 0.5%.
TEST_P(GpuStageTest, EvaluatePerplexityMatchesTheCpu) {
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(Tiny(GetParam()), dir.Join("m")));
  {
    std::string text;
    for (int i = 0; i < 400; ++i) text += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + "\n";
    dir.WriteFile("eval.txt", text);
  }
  ASSERT_OK_AND_ASSIGN(nlohmann::json c, stages::EvaluateModel(dir.Join("m"), dir.Join("eval.txt"),
                                                               32, 8, nullptr));
  ASSERT_OK_AND_ASSIGN(nlohmann::json g,
                       stages::EvaluateModel(dir.Join("m"), dir.Join("eval.txt"), 32, 8, nullptr,
                                             ComputeDevice::Cuda(0)));
  const double pc = c["perplexity"], pg = g["perplexity"];
  EXPECT_NEAR(pg, pc, 0.005 * pc);
  EXPECT_EQ(c["activated_parameters_measured"], g["activated_parameters_measured"]);
}

// A tensor that cannot fit is ResourceExhausted naming it, not a crash.
TEST(GpuMemoryTest, AnImpossibleCopyIsResourceExhaustedNamingTheTensor) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA GPU visible";
  ASSERT_OK_AND_ASSIGN(kernels::DeviceMemory m, kernels::CudaDeviceMemory(0));
  // More than the whole device: the caching allocator must refuse it.
  const int64_t floats = m.total_bytes / 4 + (int64_t{1} << 28);
  try {
    at::Tensor big = at::empty({floats}, at::TensorOptions(at::kFloat).device(at::kCUDA, 0));
    FAIL() << "allocated " << floats * 4 << " bytes on a GPU of " << m.total_bytes;
  } catch (const c10::OutOfMemoryError& e) {
    absl::Status s = model::DeviceOutOfMemory("expert 3's up_proj", floats * 4, e);
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(s.message().find("expert 3's up_proj"), std::string::npos);
    EXPECT_NE(s.message().find("free"), std::string::npos) << s;
  }
}

// GPTQ on the GPU (the ATen solve: Hessian, U, lazy updates on the device) against the CPU
// kernels, at a Mixtral-like aspect: the codes agree but for rounding ties, and so do the losses.
TEST(GpuGptqTest, SolveOnTheDeviceMatchesTheCpuKernels) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA GPU visible";
  at::manual_seed(41);
  const at::Tensor x = at::randn({2048, 512}) * at::rand({1, 512}) + 0.1 * at::randn({2048, 1});
  const at::Tensor w = at::randn({1024, 512}) * 0.02;
  const at::Device gpu(at::kCUDA, 0);
  for (bool actorder : {false, true}) {
    SCOPED_TRACE(actorder ? "act-order" : "in order");
    quant::GptqOptions o;
    o.quantizer.bits = 4;
    o.groupsize = 128;
    o.actorder = actorder;
    quant::HessianAccumulator cpu_h(512), gpu_h(512, gpu);
    for (int b = 0; b < 4; ++b) {
      const at::Tensor xb = x.narrow(0, b * 512, 512);
      ASSERT_OK(cpu_h.Add(xb, 1));
      ASSERT_OK(gpu_h.Add(xb.to(gpu), 1));
    }
    EXPECT_TRUE(gpu_h.hessian().is_cuda());
    EXPECT_TRUE(at::allclose(gpu_h.hessian().cpu(), cpu_h.hessian(), 1e-4, 1e-5));
    ASSERT_OK_AND_ASSIGN(quant::GptqResult cpu, quant::GptqQuantize(w, cpu_h.hessian(), o));
    ASSERT_OK_AND_ASSIGN(quant::GptqResult dev, quant::GptqQuantize(w.to(gpu), gpu_h.hessian(), o));
    ASSERT_TRUE(dev.q.is_cuda());
    const double differing = dev.q.cpu().ne(cpu.q).sum().item<double>() / cpu.q.numel();
    EXPECT_LE(differing, 0.01);
    EXPECT_NEAR(dev.total_loss, cpu.total_loss, 0.01 * cpu.total_loss);
    // Round-to-nearest of a device tensor stays there and equals the CPU's.
    ASSERT_OK_AND_ASSIGN(quant::QuantizedWeight rtn_cpu, quant::QuantizeGroups(w, 128, o.quantizer));
    ASSERT_OK_AND_ASSIGN(quant::QuantizedWeight rtn_dev,
                         quant::QuantizeGroups(w.to(gpu), 128, o.quantizer));
    EXPECT_TRUE(at::equal(rtn_dev.q.cpu(), rtn_cpu.q));
  }
}

// prune_weights' solvers on the device: SparseGPT (Hessian factor and column-by-column pruning
// with error feedback) and Wanda's mask against the CPU's.
TEST(GpuPruneTest, SparseGptAndWandaOnTheDeviceMatchTheCpu) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA GPU visible";
  at::manual_seed(43);
  const at::Tensor x = at::randn({1024, 256}) * at::rand({1, 256});
  const at::Tensor w = at::randn({384, 256}) * 0.02;
  const at::Device gpu(at::kCUDA, 0);
  const at::Tensor h = at::matmul(x.t(), x) * (2.0 / 1024);
  for (quant::SparsityPattern pattern : {quant::SparsityPattern{}, quant::SparsityPattern{2, 4}}) {
    quant::SparseGptOptions o;
    o.ratio = 0.5;
    o.pattern = pattern;
    ASSERT_OK_AND_ASSIGN(at::Tensor cpu, quant::SparseGptPrune(w, h, o));
    ASSERT_OK_AND_ASSIGN(at::Tensor dev, quant::SparseGptPrune(w.to(gpu), h.to(gpu), o));
    ASSERT_TRUE(dev.is_cuda());
    const double mask_differs = (dev.cpu() == 0).ne(cpu == 0).to(at::kDouble).mean().item<double>();
    EXPECT_LE(mask_differs, 0.01);
    EXPECT_LT(((dev.cpu() - cpu).norm() / cpu.norm()).item<double>(), 0.02);
    const at::Tensor norm2 = x.pow(2).sum(0);
    ASSERT_OK_AND_ASSIGN(at::Tensor mc, quant::WandaMask(w, norm2, 0.5, pattern));
    ASSERT_OK_AND_ASSIGN(at::Tensor md, quant::WandaMask(w.to(gpu), norm2.to(gpu), 0.5, pattern));
    EXPECT_LE(md.cpu().ne(mc).to(at::kDouble).mean().item<double>(), 0.001);
  }
}

// The attention with its column statistic (ODP's importance, the blocked path) and the MoE
// block under ODP's routing on the device against the CPU.
TEST_P(GpuStageTest, OdpAttentionStatisticAndRoutingMatchTheCpu) {
  ASSERT_NO_FATAL_FAILURE(OpenBoth());
  const auto& a = cpu_;
  const auto& b = gpu_;
  const model::ModelConfig& c = a->config();
  const int l = c.num_hidden_layers - 1;  // a MoE layer in every architecture here
  ASSERT_OK_AND_ASSIGN(model::LayerWeights wa, a->LoadLayer(l));
  ASSERT_OK_AND_ASSIGN(model::LayerWeights wb, b->LoadLayer(l));
  at::manual_seed(5);
  const int64_t seq = 24;
  const at::Tensor h = at::randn({2, seq, c.hidden_size}) * 0.5;
  const model::AttentionOutput oa =
      model::Attention(c, l, wa.attention, h, a->Rope(seq), /*want_column_statistic=*/true, nullptr);
  const model::AttentionOutput ob = model::Attention(c, l, wb.attention, h.to(b->device()), b->Rope(seq),
                                                     /*want_column_statistic=*/true, nullptr);
  ASSERT_TRUE(ob.column_statistic.is_cuda());
  EXPECT_TRUE(at::allclose(ob.output.cpu(), oa.output, 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(ob.column_statistic.cpu(), oa.column_statistic, 1e-4, 1e-6));
  model::RoutingRule rule = model::RoutingRuleFor(c, l);
  rule.odp = true;
  rule.odp_beta = 0.3;
  rule.tau_high = 0.1;
  const at::Tensor x = h.reshape({-1, c.hidden_size});
  const at::Tensor ya = model::MoeBlock(c, l, *wa.moe, rule, x, seq, oa.column_statistic, nullptr);
  const at::Tensor yb = model::MoeBlock(c, l, *wb.moe, rule, x.to(b->device()), seq,
                                        ob.column_statistic, nullptr);
  ASSERT_TRUE(yb.is_cuda());
  EXPECT_LT(((yb.cpu() - ya).norm() / ya.norm()).item<double>(), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Arch, GpuStageTest, ::testing::Values("mixtral", "deepseek", "qwen3_moe"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moec
