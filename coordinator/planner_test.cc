#include "coordinator/planner.h"

#include <filesystem>
#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::coordinator {
namespace {

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

class PlannerTest : public ::testing::Test {
 protected:
  PlannerTest() {
    std::filesystem::create_directories(dir_.Join("m"));
    dir_.WriteFile("m/config.json", R"({"num_hidden_layers": 3})");
    dir_.WriteFile("m/model.safetensors", "weights");
    dir_.WriteFile("calib.txt", "some text");
  }
  recipe::Recipe Recipe(const std::string& stages, std::vector<std::string> overrides = {}) {
    std::string yaml = "name: t\nmodel: m\noutput: out\nworkers: 2\n"
                       "calibration: {path: calib.txt}\nstages:\n" + stages;
    auto r = recipe::ParseRecipe(yaml, dir_.Join("r.yaml"), overrides);
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }
  std::map<std::string, v1::TaskRecord> ById(const std::vector<v1::TaskRecord>& tasks) {
    std::map<std::string, v1::TaskRecord> m;
    for (const auto& t : tasks) m[t.task_id()] = t;
    return m;
  }
  TempDir dir_;
};

constexpr char kStages[] =
    "  - {id: stats, kind: calibrate}\n"
    "  - {id: loss, kind: quant_loss, needs: [stats]}\n"
    "  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {average_bits: 2.5}}\n"
    "  - {id: quant, kind: gptq, needs: [bits]}\n"
    "  - {id: out, kind: export, needs: [quant], with: {format: hqq}}\n";

// A task's fingerprint covers the job settings its outputs depend on: the calibration sampling
// (every task), the evaluation settings (evaluate) and the output directory (export, evaluate);
// not the gang size, on which outputs do not depend.
TEST_F(PlannerTest, FingerprintsCoverTheJobSettingsOutputsDependOn) {
  const std::string stages = std::string(kStages) + "  - {id: eval, kind: evaluate, needs: [out]}\n";
  auto plan = [&](std::vector<std::string> overrides) {
    overrides.insert(overrides.begin(), "evaluation={path: calib.txt}");
    auto tasks = PlanJob(Recipe(stages, overrides), {3}, "j", "inputs");
    EXPECT_TRUE(tasks.ok()) << tasks.status();
    std::map<std::string, std::string> fp;  // task id without the job -> fingerprint
    for (const auto& t : *tasks) fp[t.task_id().substr(2)] = t.fingerprint();
    return fp;
  };
  const auto base = plan({});
  ASSERT_EQ(base.size(), 12u);
  // Which tasks change with each setting.
  auto changed = [&](const std::vector<std::string>& overrides) {
    std::vector<std::string> ids;
    for (const auto& [id, fp] : plan(overrides)) {
      if (base.at(id) != fp) ids.push_back(id);
    }
    return ids;
  };
  for (const std::string setting : {"calibration.seed=1", "calibration.samples=64",
                                    "calibration.seqlen=128", "calibration.sampling=chunks"}) {
    EXPECT_EQ(changed({setting}).size(), base.size()) << setting;
  }
  EXPECT_THAT(changed({"evaluation.seqlen=64"}), ElementsAre("eval"));
  EXPECT_THAT(changed({"output=elsewhere"}), ElementsAre("eval", "out"));
  EXPECT_THAT(changed({"workers=3"}), IsEmpty());
  // A fixed thread count changes every output's bytes, so every fingerprint; two counts differ.
  EXPECT_EQ(changed({"threads=2"}).size(), base.size());
  const auto two = plan({"threads=2"}), four = plan({"threads=4"});
  for (const auto& [id, fp] : two) EXPECT_NE(fp, four.at(id)) << id;
  EXPECT_THAT(changed({"name=other"}), IsEmpty());
}

TEST_F(PlannerTest, ReadsModelShape) {
  EXPECT_THAT(ReadModelShape(dir_.Join("m")), moec::testing::IsOkAndHolds(
                                                  ::testing::Field(&ModelShape::num_layers, 3)));
  dir_.WriteFile("m/config.json", R"({"num_hidden_layers": 0})");
  EXPECT_THAT(ReadModelShape(dir_.Join("m")), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ReadModelShape(dir_.Join("none")), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(PlannerTest, ExpandsPerLayerChainsAndGlobalTasks) {
  ASSERT_OK_AND_ASSIGN(auto tasks, PlanJob(Recipe(kStages), {3}, "j1", "inputs"));
  // 3 calibrate + 3 quant_loss + 1 allocate_bits + 3 gptq + 1 export
  ASSERT_EQ(tasks.size(), 11u);
  auto by = ById(tasks);
  EXPECT_THAT(by["j1/stats/L0"].deps(), IsEmpty());
  EXPECT_EQ(by["j1/stats/L0"].state(), v1::TASK_READY);
  EXPECT_THAT(by["j1/stats/L1"].deps(), ElementsAre("j1/stats/L0"));
  // Layer l of quant_loss needs layer l of calibrate and its own layer l-1.
  EXPECT_THAT(by["j1/loss/L2"].deps(), ElementsAre("j1/loss/L1", "j1/stats/L2"));
  EXPECT_EQ(by["j1/loss/L2"].state(), v1::TASK_BLOCKED);
  // A global stage waits for the last layer of each per-layer need.
  EXPECT_THAT(by["j1/bits"].deps(), ElementsAre("j1/loss/L2", "j1/stats/L2"));
  EXPECT_EQ(by["j1/bits"].layer(), -1);
  EXPECT_EQ(by["j1/bits"].group_size(), 1);
  EXPECT_THAT(by["j1/quant/L0"].deps(), ElementsAre("j1/bits"));
  EXPECT_EQ(by["j1/quant/L0"].group_size(), 2);  // the job's worker group
  EXPECT_THAT(by["j1/out"].deps(), ElementsAre("j1/quant/L2"));
  for (size_t i = 0; i < tasks.size(); ++i) {
    EXPECT_EQ(tasks[i].order(), static_cast<int64_t>(i));
    for (const auto& d : tasks[i].deps()) EXPECT_LT(by[d].order(), tasks[i].order());
  }
  // Inputs: a layer task reads layers l-1 and l of the per-layer stages it depends on and every
  // task of the global ones; a global task reads every task of the stages it depends on.
  EXPECT_THAT(by["j1/stats/L0"].inputs(), IsEmpty());
  EXPECT_THAT(by["j1/stats/L2"].inputs(), ElementsAre("j1/stats/L1", "j1/stats/L2"));
  EXPECT_THAT(by["j1/loss/L1"].inputs(),
              ElementsAre("j1/loss/L0", "j1/loss/L1", "j1/stats/L0", "j1/stats/L1"));
  EXPECT_THAT(by["j1/bits"].inputs(), ElementsAre("j1/loss/L0", "j1/loss/L1", "j1/loss/L2",
                                                  "j1/stats/L0", "j1/stats/L1", "j1/stats/L2"));
  EXPECT_THAT(by["j1/quant/L2"].inputs(), ElementsAre("j1/bits", "j1/quant/L1", "j1/quant/L2"));
  EXPECT_THAT(by["j1/out"].inputs(), ElementsAre("j1/quant/L0", "j1/quant/L1", "j1/quant/L2"));
  // Recomputing them (a job stored without inputs) gives the same.
  std::vector<v1::TaskRecord> again = tasks;
  for (auto& t : again) t.clear_inputs();
  AssignInputs(&again);
  for (size_t i = 0; i < tasks.size(); ++i) {
    EXPECT_EQ(again[i].SerializeAsString(), tasks[i].SerializeAsString()) << tasks[i].task_id();
  }
}

TEST_F(PlannerTest, StagesAfterARestructureDependOnIt) {
  ASSERT_OK_AND_ASSIGN(
      auto tasks,
      PlanJob(Recipe("  - {id: stats, kind: calibrate}\n"
                     "  - {id: bdrop, kind: block_drop, needs: [stats], with: {drop: 1}}\n"
                     "  - {id: edit, kind: restructure, needs: [bdrop]}\n"
                     "  - {id: quant, kind: gptq, needs: [edit]}\n"
                     "  - {id: out, kind: export, needs: [quant]}\n"),
              {3}, "j", "inputs"));
  auto by = ById(tasks);
  EXPECT_THAT(by["j/edit"].deps(), ElementsAre("j/bdrop"));
  EXPECT_THAT(by["j/quant/L0"].deps(), ElementsAre("j/edit"));
  EXPECT_THAT(by["j/quant/L1"].deps(), ElementsAre("j/edit", "j/quant/L0"));
  // The export needs only the quantization stage, but reads the view too.
  EXPECT_THAT(by["j/out"].deps(), ElementsAre("j/edit", "j/quant/L2"));
  // Stages before the restructure do not see it.
  EXPECT_THAT(by["j/stats/L1"].deps(), ElementsAre("j/stats/L0"));
}

TEST_F(PlannerTest, LayerwiseExpertPruneRunsLayersInParallel) {
  ASSERT_OK_AND_ASSIGN(
      auto tasks,
      PlanJob(Recipe("  - {id: stats, kind: calibrate}\n"
                     "  - {id: a, kind: expert_prune, needs: [stats], with: {keep: 2}}\n"
                     "  - {id: b, kind: expert_prune, needs: [stats], with: {keep: 2, mode: progressive}}\n"),
              {3}, "j", "inputs"));
  auto by = ById(tasks);
  EXPECT_THAT(by["j/a/L2"].deps(), ElementsAre("j/stats/L2"));
  EXPECT_THAT(by["j/b/L2"].deps(), ElementsAre("j/b/L1", "j/stats/L2"));
}

TEST_F(PlannerTest, FingerprintsFollowContentNotJobIds) {
  ASSERT_OK_AND_ASSIGN(auto a, PlanJob(Recipe(kStages), {3}, "j1", "inputs"));
  ASSERT_OK_AND_ASSIGN(auto b, PlanJob(Recipe(kStages), {3}, "j2", "inputs"));
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].fingerprint(), b[i].fingerprint());
  // Changing a late parameter changes that stage and everything after it, not what comes before.
  ASSERT_OK_AND_ASSIGN(auto c, PlanJob(Recipe(kStages, {"stages.bits.with.average_bits=2.0"}), {3},
                                       "j3", "inputs"));
  auto fa = ById(a), fc = ById(c);
  EXPECT_EQ(fa["j1/loss/L2"].fingerprint(), fc["j3/loss/L2"].fingerprint());
  EXPECT_NE(fa["j1/bits"].fingerprint(), fc["j3/bits"].fingerprint());
  EXPECT_NE(fa["j1/quant/L0"].fingerprint(), fc["j3/quant/L0"].fingerprint());
  // Different inputs change everything.
  ASSERT_OK_AND_ASSIGN(auto d, PlanJob(Recipe(kStages), {3}, "j1", "other"));
  EXPECT_NE(a[0].fingerprint(), d[0].fingerprint());
  // Layers differ from each other.
  EXPECT_NE(a[0].fingerprint(), a[1].fingerprint());
}

TEST_F(PlannerTest, JobFingerprintTracksRecipeAndInputFiles) {
  recipe::Recipe r = Recipe(kStages);
  ASSERT_OK_AND_ASSIGN(std::string in1, FingerprintJobInputs(r));
  ASSERT_OK_AND_ASSIGN(std::string in2, FingerprintJobInputs(r));
  EXPECT_EQ(in1, in2);
  EXPECT_EQ(JobFingerprint(r, in1), JobFingerprint(Recipe(kStages), in1));
  EXPECT_NE(JobFingerprint(r, in1), JobFingerprint(Recipe(kStages, {"workers=1"}), in1));
  dir_.WriteFile("calib.txt", "other text");
  ASSERT_OK_AND_ASSIGN(std::string in3, FingerprintJobInputs(r));
  EXPECT_NE(in1, in3);
  dir_.WriteFile("m/model.safetensors", "weightz");
  ASSERT_OK_AND_ASSIGN(std::string in4, FingerprintJobInputs(r));
  EXPECT_NE(in3, in4);
}

}  // namespace
}  // namespace moec::coordinator
