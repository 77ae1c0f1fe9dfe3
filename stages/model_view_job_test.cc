// Structural edits and quantization in one job through a `restructure` model view: the job's
// export must equal, byte for byte, two chained jobs (export the edited model as a Hugging Face
// directory, then quantize that directory), for block drop, expert drop, layer drop and weight
// pruning, on Mixtral and DeepSeek layouts.
#include "dataplane/model_view.h"
#include "stages/builtin_stages.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "dataplane/stage_test_util.h"
#include "dataplane/model_inputs.h"
#include "dataplane/tiny_model_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/tensor_names.h"
#include "model/runtime/forward.h"
#include "model/runtime/weights.h"
#include "storage/file_util.h"
#include "storage/safetensors_reader.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

using dataplane::MapFactorIo;
using dataplane::OpenJobModel;
using dataplane::SmallStageTestModel;
using dataplane::TestRecipe;
using dataplane::TestStage;

using ::moec::testing::TempDir;
using ::testing::HasSubstr;

namespace {

constexpr int kLayers = 4;

struct StageDef {
  std::string id, kind;
  nlohmann::json params;
  std::vector<std::string> needs;
  bool per_layer = false;
};

class ModelViewTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const tools::TinyModelOptions o = SmallStageTestModel(GetParam(), kLayers, 5);
    ASSERT_OK(tools::WriteTinyModel(o, dir_.Join("tiny")));
    AmplifyLastLayer(dir_.Join("tiny"), dir_.Join("model"));
    std::string text;
    for (int i = 0; i < 60; ++i) text += "edit the model, then quantize what is left, line " + std::to_string(i) + "\n";
    dir_.WriteFile("calib.txt", text);
    RegisterBuiltinStages(&registry_);
  }

  // A copy of the tiny model whose last layer writes 4x more into the residual stream, so that
  // the similarity-based drops choose an earlier layer and a quantizer that ignored the edit would
  // see different inputs from the dropped layer on (the equality checks below could not fail if
  // only the last layer were dropped).
  static void AmplifyLastLayer(const std::string& src, const std::string& dst) {
    std::filesystem::create_directories(dst);
    ASSERT_OK_AND_ASSIGN(auto checkpoint, storage::SafetensorsCheckpoint::Open(src));
    std::vector<model::NamedTensor> tensors;
    const std::string last = "model.layers." + std::to_string(kLayers - 1) + ".";
    for (const std::string& name : checkpoint->TensorNames()) {
      ASSERT_OK_AND_ASSIGN(storage::TensorView v, checkpoint->Get(name));
      ASSERT_OK_AND_ASSIGN(at::Tensor t, model::TensorFromView(v, at::kFloat));
      if (name.rfind(last, 0) == 0 &&
          (name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos ||
           name.find(".w2.") != std::string::npos)) {
        t = t * 4;
      }
      tensors.push_back({name, t, std::nullopt});
    }
    ASSERT_OK(model::WriteCheckpointTensors(dst, tensors));
    for (const auto& e : std::filesystem::directory_iterator(src)) {
      if (e.path().extension() != ".safetensors" && e.path().filename() != "model.safetensors.index.json") {
        std::filesystem::copy_file(e.path(), std::filesystem::path(dst) / e.path().filename());
      }
    }
  }

  // Runs `stages` in order as job `job` on `model` (every task of a per-layer stage for the
  // source model's kLayers layers; each task sees every earlier task of the job as an input, as
  // the planner's transitive restructure dependency does for the stages after it).
  absl::Status RunJob(const std::string& job, const std::string& model, const std::string& output,
                      const std::vector<StageDef>& stages) {
    nlohmann::json list = nlohmann::json::array();
    for (const StageDef& s : stages) {
      list.push_back({{"id", s.id}, {"kind", s.kind}, {"needs", s.needs}, {"with", s.params}});
    }
    const std::shared_ptr<const recipe::Recipe> recipe = TestRecipe(
        {{"model", model},
         {"output", output},
         {"calibration", {{"path", dir_.Join("calib.txt")}, {"samples", 6}, {"seqlen", 16}, {"seed", 2}}},
         {"stages", list}});
    if (recipe == nullptr) return absl::InvalidArgumentError("bad test recipe");
    std::map<std::string, std::string> done;
    for (const StageDef& s : stages) {
      std::map<std::string, std::string> added;
      for (int l = s.per_layer ? 0 : -1; l < (s.per_layer ? kLayers : 0); ++l) {
        v1::TaskRecord task;
        task.set_job_id(job);
        task.set_stage_id(s.id);
        task.set_kind(s.kind);
        task.set_layer(l);
        task.set_task_id(l < 0 ? job + "/" + s.id : job + "/" + s.id + "/L" + std::to_string(l));
        task.set_fingerprint(task.task_id());
        StageContext ctx;
        ctx.task = &task;
        ctx.SetRecipe(recipe, s.id);
        ctx.inputs = done;
        for (const auto& [id, fp] : added) ctx.inputs[id] = fp;  // earlier layers of this stage
        io_.SetTask(task.fingerprint());
        ctx.io = &io_;
        MOEC_ASSIGN_OR_RETURN(std::unique_ptr<Stage> stage, registry_.Create(s.kind));
        absl::Status st = stage->Run(ctx);
        if (!st.ok()) return absl::Status(st.code(), task.task_id() + ": " + std::string(st.message()));
        added[task.task_id()] = task.fingerprint();
      }
      done.insert(added.begin(), added.end());
    }
    return absl::OkStatus();
  }

  // Every tensor of both checkpoints has the same bytes; config.json files are equal.
  static void ExpectSameCheckpoint(const std::string& a, const std::string& b) {
    ASSERT_OK_AND_ASSIGN(auto ca, storage::SafetensorsCheckpoint::Open(a));
    ASSERT_OK_AND_ASSIGN(auto cb, storage::SafetensorsCheckpoint::Open(b));
    ASSERT_EQ(ca->TensorNames(), cb->TensorNames());
    for (const std::string& name : ca->TensorNames()) {
      ASSERT_OK_AND_ASSIGN(storage::TensorView va, ca->Get(name));
      ASSERT_OK_AND_ASSIGN(storage::TensorView vb, cb->Get(name));
      EXPECT_EQ(va.bytes(), vb.bytes()) << name;
    }
    ASSERT_OK_AND_ASSIGN(std::string ja, storage::ReadFileToString(a + "/config.json", 1 << 20));
    ASSERT_OK_AND_ASSIGN(std::string jb, storage::ReadFileToString(b + "/config.json", 1 << 20));
    EXPECT_EQ(nlohmann::json::parse(ja), nlohmann::json::parse(jb));
  }

  // One job (structural stages -> restructure -> quantize -> export) against two chained jobs.
  void ExpectOneJobEqualsTwo(const std::vector<StageDef>& structural, const StageDef& quant,
                             const std::string& format) {
    const StageDef stats{"stats", "calibrate", {{"batch_size", 4}}, {}, true};
    std::vector<std::string> decisions;
    for (const StageDef& s : structural) decisions.push_back(s.id);
    // One job.
    std::vector<StageDef> one = {stats};
    one.insert(one.end(), structural.begin(), structural.end());
    one.push_back({"edit", "restructure", nlohmann::json::object(), decisions});
    StageDef q = quant;
    q.needs = {"edit"};
    one.push_back(q);
    one.push_back({"out", "export", {{"format", format}}, {q.id}});
    ASSERT_OK(RunJob("one", dir_.Join("model"), dir_.Join("one"), one));
    ASSERT_OK_AND_ASSIGN(model::ModelConfig edited, model::LoadModelConfig(dir_.Join("one")));
    ASSERT_OK_AND_ASSIGN(model::ModelConfig source, model::LoadModelConfig(dir_.Join("model")));
    EXPECT_LT(model::ModelTensors(edited).size(), model::ModelTensors(source).size());
    // Two jobs: export the edited model, quantize it.
    std::vector<StageDef> first = {stats};
    first.insert(first.end(), structural.begin(), structural.end());
    first.push_back({"out", "export", {{"format", "hf"}}, decisions});
    ASSERT_OK(RunJob("first", dir_.Join("model"), dir_.Join("edited"), first));
    StageDef q2 = quant;
    q2.needs = {};
    ASSERT_OK(RunJob("second", dir_.Join("edited"), dir_.Join("two"),
                     {q2, {"out", "export", {{"format", format}}, {q2.id}}}));
    ExpectSameCheckpoint(dir_.Join("one"), dir_.Join("two"));
  }

  TempDir dir_;
  StageRegistry registry_;
  std::map<std::string, storage::Factor> store_;
  MapFactorIo io_{&store_};
};

const StageDef kGptq4{"quant", "gptq", {{"bits", 4}, {"attn_bits", 4}, {"shared_bits", 4}, {"group_size", 8}}, {}, true};

TEST_P(ModelViewTest, BlockDropThenGptqEqualsTwoJobs) {
  ExpectOneJobEqualsTwo({{"bdrop", "block_drop", {{"drop", 1}, {"mode", "discrete"}}, {"stats"}}},
                        kGptq4, "gptq");
}

TEST_P(ModelViewTest, ExpertDropAndWeightPruningThenRtnEqualsTwoJobs) {
  ExpectOneJobEqualsTwo({{"drop", "expert_drop", {{"keep", 3}}, {"stats"}},
                         {"slim", "prune_weights", {{"method", "wanda"}, {"sparsity", 0.5}}, {}, true}},
                        {"quant", "rtn", {{"bits", 3}, {"attn_bits", 8}, {"group_size", 8}}, {}, true},
                        "fake_quant");
}

TEST_P(ModelViewTest, LayerDropThenGptqEqualsTwoJobs) {
  ExpectOneJobEqualsTwo({{"ldrop", "layer_drop", {{"drop", 1}}, {"stats"}}}, kGptq4, "gptq");
}

TEST_P(ModelViewTest, ViewRunsTheEditedModel) {
  // The view's forward equals the forward of the exported edited model.
  ASSERT_OK(RunJob("j", dir_.Join("model"), dir_.Join("edited"),
                   {{"stats", "calibrate", {{"batch_size", 4}}, {}, true},
                    {"bdrop", "block_drop", {{"drop", 2}, {"mode", "consecutive"}}, {"stats"}},
                    {"out", "export", {{"format", "hf"}}, {"bdrop"}}}));
  ASSERT_OK(RunJob("k", dir_.Join("model"), dir_.Join("unused"),
                   {{"stats", "calibrate", {{"batch_size", 4}}, {}, true},
                    {"bdrop", "block_drop", {{"drop", 2}, {"mode", "consecutive"}}, {"stats"}},
                    {"edit", "restructure", nlohmann::json::object(), {"bdrop"}}}));
  v1::TaskRecord task;
  task.set_job_id("k");
  task.set_stage_id("probe");
  StageContext ctx;
  ctx.task = &task;
  ctx.io = &io_;
  ctx.SetRecipe(TestRecipe({{"model", dir_.Join("model")},
                            {"stages", {TestStage("bdrop", "block_drop", {{"drop", 2}}),
                                        TestStage("edit", "restructure", {}, {"bdrop"}),
                                        TestStage("probe", "noop", {}, {"edit"})}}}),
                "probe");
  ctx.inputs["k/edit"] = "k/edit";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<model::ModelRunner> view, OpenJobModel(ctx));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<model::ModelRunner> edited,
                       model::ModelRunner::Open(dir_.Join("edited")));
  EXPECT_EQ(view->config().num_hidden_layers, kLayers - 2);
  at::Tensor tokens = at::arange(12, at::kLong).reshape({2, 6});
  ASSERT_OK_AND_ASSIGN(at::Tensor a, view->Forward(tokens));
  ASSERT_OK_AND_ASSIGN(at::Tensor b, edited->Forward(tokens));
  EXPECT_TRUE(at::equal(a, b));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<model::ModelRunner> original,
                       model::ModelRunner::Open(dir_.Join("model")));
  ASSERT_OK_AND_ASSIGN(at::Tensor c, original->Forward(tokens));
  EXPECT_FALSE(at::allclose(a, c));
}

TEST_P(ModelViewTest, QuantizingTheUneditedModelWithStructuralEditsIsRefused) {
  absl::Status st = RunJob("bad", dir_.Join("model"), dir_.Join("bad"),
                           {{"stats", "calibrate", {{"batch_size", 4}}, {}, true},
                            {"bdrop", "block_drop", {{"drop", 1}}, {"stats"}},
                            {"quant", "rtn", {{"bits", 4}}, {}, true},
                            {"out", "export", {{"format", "gptq"}}, {"quant", "bdrop"}}});
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("restructure"));
  absl::Status none = RunJob("none", dir_.Join("model"), dir_.Join("none"),
                             {{"edit", "restructure", nlohmann::json::object(), {}}});
  EXPECT_EQ(none.code(), absl::StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(Arch, ModelViewTest, ::testing::Values("mixtral", "deepseek"));

}  // namespace
}  // namespace moec::stages
