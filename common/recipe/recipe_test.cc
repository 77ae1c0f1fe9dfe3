#include "common/recipe/recipe.h"

#include <cstring>
#include <filesystem>
#include <set>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/recipe/stage_catalog.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::recipe {
namespace {

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kGood[] = R"(name: tiny-mc-moe
model: models/tiny
output: out/tiny-mc-moe
calibration: {path: data/calib.jsonl, samples: 16, seqlen: 64, seed: 0, sampling: random_windows}
evaluation: {path: data/eval.txt, seqlen: 64}
workers: 2
stages:
  - {id: stats, kind: calibrate}
  - {id: loss,  kind: quant_loss,    needs: [stats], with: {bits: [1, 2, 3]}}
  - {id: bits,  kind: allocate_bits, needs: [stats, loss], with: {average_bits: 2.5}}
  - {id: quant, kind: gptq,          needs: [bits], with: {group_size: 128, attn_bits: 4}}
  - {id: out,   kind: export,        needs: [quant], with: {format: hqq}}
  - {id: eval,  kind: evaluate,      needs: [out]}
)";

class RecipeTest : public ::testing::Test {
 protected:
  RecipeTest() {
    std::filesystem::create_directories(dir_.Join("models/tiny"));
    std::filesystem::create_directories(dir_.Join("data"));
    dir_.WriteFile("models/tiny/config.json", "{}");
    dir_.WriteFile("data/calib.jsonl", "{\"text\": \"x\"}\n");
    dir_.WriteFile("data/eval.txt", "x");
  }
  absl::StatusOr<Recipe> Parse(const std::string& yaml, std::vector<std::string> overrides = {},
                               RecipeOptions options = {}) {
    return ParseRecipe(yaml, dir_.Join("recipe.yaml"), overrides, options);
  }
  // Replaces the first occurrence of `from` in kGood.
  static std::string Edit(const std::string& from, const std::string& to) {
    std::string s = kGood;
    size_t p = s.find(from);
    EXPECT_NE(p, std::string::npos) << from;
    return s.replace(p, from.size(), to);
  }
  TempDir dir_;
};

TEST_F(RecipeTest, ParsesTheIssueExample) {
  ASSERT_OK_AND_ASSIGN(Recipe r, Parse(kGood));
  EXPECT_EQ(r.name, "tiny-mc-moe");
  EXPECT_EQ(r.model, dir_.Join("models/tiny"));
  EXPECT_EQ(r.output, dir_.Join("out/tiny-mc-moe"));
  EXPECT_EQ(r.workers, 2);
  ASSERT_TRUE(r.calibration.has_value());
  EXPECT_EQ(r.calibration->samples, 16);
  EXPECT_EQ(r.evaluation->seqlen, 64);
  ASSERT_EQ(r.stages.size(), 6u);
  const StageSpec* bits = r.FindStage("bits");
  ASSERT_NE(bits, nullptr);
  EXPECT_EQ(bits->params["average_bits"], 2.5);
  EXPECT_EQ(bits->params["beta"], 1.5);  // default filled in
  EXPECT_EQ(bits->params["granularity"], "expert");
  EXPECT_EQ(bits->line, 10);
  EXPECT_THAT(bits->needs, ElementsAre("stats", "loss"));
  EXPECT_EQ(r.FindStage("quant")->params["damp"], 0.01);
}

TEST_F(RecipeTest, OrdersStagesTopologicallyAndCanonicalJsonIsStable) {
  std::string yaml = Edit("  - {id: stats, kind: calibrate}\n", "");
  yaml += "  - {id: stats, kind: calibrate}\n";  // declared last, needed first
  ASSERT_OK_AND_ASSIGN(Recipe a, Parse(yaml));
  EXPECT_EQ(a.stages[0].id, "stats");
  EXPECT_EQ(a.stages.back().id, "eval");
  ASSERT_OK_AND_ASSIGN(Recipe b, Parse(kGood));
  EXPECT_EQ(a.CanonicalJson(), b.CanonicalJson());
  ASSERT_OK_AND_ASSIGN(Recipe c, Parse(kGood, {"stages.bits.with.average_bits=2.0"}));
  EXPECT_NE(c.CanonicalJson(), b.CanonicalJson());
}

TEST_F(RecipeTest, OverridesApplyBeforeValidation) {
  ASSERT_OK_AND_ASSIGN(Recipe r, Parse(kGood, {"stages.bits.with.average_bits=2.0", "workers=3",
                                               "stages.stats.with.batch_size=4",
                                               "stages.loss.with.bits=[2, 3]",
                                               "stages.bits.with.bits=[2, 3]",
                                               "output=/tmp/elsewhere"}));
  EXPECT_EQ(r.FindStage("bits")->params["average_bits"], 2.0);
  EXPECT_EQ(r.workers, 3);
  EXPECT_EQ(r.FindStage("stats")->params["batch_size"], 4);
  EXPECT_EQ(r.FindStage("loss")->params["bits"], nlohmann::json::array({2, 3}));
  EXPECT_EQ(r.output, "/tmp/elsewhere");
  EXPECT_THAT(Parse(kGood, {"workers"}), StatusIs(absl::StatusCode::kInvalidArgument, "key.path=value"));
  EXPECT_THAT(Parse(kGood, {"stages.nope.with.x=1"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "no stage with id 'nope'"));
  EXPECT_THAT(Parse(kGood, {"stages.bits.with.average_bits=9"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "average_bits' must be in [1, 8], got 9"));
  EXPECT_THAT(Parse(kGood, {"name.x=1"}), StatusIs(absl::StatusCode::kInvalidArgument, "scalar"));
}

struct BadCase {
  std::string from, to, message;
  absl::StatusCode code = absl::StatusCode::kInvalidArgument;
};

TEST_F(RecipeTest, RestructureComesAfterStructuralStagesOnly) {
  const std::string head = "name: t\nmodel: models/tiny\noutput: out\n"
                           "calibration: {path: data/calib.jsonl}\nstages:\n"
                           "  - {id: stats, kind: calibrate}\n"
                           "  - {id: bdrop, kind: block_drop, needs: [stats], with: {drop: 1}}\n";
  ASSERT_OK(Parse(head + "  - {id: edit, kind: restructure, needs: [bdrop]}\n"
                               "  - {id: quant, kind: gptq, needs: [edit]}\n")
                .status());
  EXPECT_THAT(Parse(head + "  - {id: edit, kind: restructure, needs: [stats]}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "recipe.yaml:8: stage 'edit' (restructure): needs a stage of kind expert_prune or "
                       "expert_drop or layer_drop or block_drop or prune_weights among its needs"));
  EXPECT_THAT(Parse(head + "  - {id: edit, kind: restructure, needs: [bdrop]}\n"
                                 "  - {id: again, kind: restructure, needs: [bdrop]}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, "at most one restructure stage"));
  EXPECT_THAT(Parse(head + "  - {id: edit, kind: restructure, needs: [bdrop]}\n"
                                 "  - {id: q, kind: rtn, needs: [edit]}\n"
                                 "  - {id: more, kind: expert_drop, needs: [q], with: {keep: 2}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "stage 'more' (expert_drop): comes after restructure stage 'edit'"));
}

TEST_F(RecipeTest, MalformedRecipesGivePreciseErrors) {
  const std::vector<BadCase> cases = {
      {"workers: 2", "workers: 2\nbogus: 1", "recipe.yaml:7: recipe: unknown key 'bogus'"},
      {"workers: 2", "workers: two", "recipe.yaml:6: workers must be an integer"},
      {"workers: 2", "workers: 0", "recipe.yaml:6: workers must be in [1, 1024], got 0"},
      {"kind: quant_loss", "kind: quant_los", "recipe.yaml:9: stage 'loss': unknown kind 'quant_los' (known: calibrate,"},
      {"average_bits: 2.5", "averge_bits: 2.5", "recipe.yaml:10: stage 'bits': unknown parameter 'averge_bits' for kind allocate_bits"},
      {"{average_bits: 2.5}", "{}", "recipe.yaml:10: stage 'bits': missing required parameter 'average_bits'"},
      {"average_bits: 2.5", "average_bits: lots", "stage 'bits' parameter 'average_bits' must be a number"},
      {"format: hqq", "format: onnx", "parameter 'format' must be one of gptq, hqq, fake_quant, hf, got 'onnx'"},
      {"bits: [1, 2, 3]", "bits: [1, 9]", "recipe.yaml:9: stage 'loss' parameter 'bits' must be in [1, 8], got 9"},
      {"id: out,", "id: quant,", "recipe.yaml:12: duplicate stage id 'quant'"},
      {"needs: [quant]", "needs: [qaunt]", "recipe.yaml:12: stage 'out' needs 'qaunt', which is not a stage"},
      {"needs: [stats]", "needs: [bits]", "stages form a cycle: loss -> bits -> loss"},
      {"needs: [out]", "needs: [eval]", "stage 'eval' needs itself"},
      {"id: eval,", "id: 'ev al',", "stage id 'ev al' must be"},
      {"name: tiny-mc-moe\n", "", "recipe.yaml: missing name"},
      {"name: tiny-mc-moe", "name: tiny/mc.moe", "recipe.yaml:1: name 'tiny/mc.moe' must be 1-64 of [A-Za-z0-9._-]"},
      {"seqlen: 64, seed", "seqlen: 64, sed", "calibration: unknown key 'sed'"},
      {"sampling: random_windows", "sampling: shuffled", "calibration.sampling must be random_windows or chunks"},
      {"with: {group_size: 128, attn_bits: 4}", "with: {group_size: 128, group_size: 64}", "duplicate key 'group_size'"},
      {"models/tiny", "models/none", "model: no such directory", absl::StatusCode::kNotFound},
      {"data/eval.txt", "data/missing.txt", "recipe.yaml:5: evaluation.path: no such file", absl::StatusCode::kNotFound},
      {"data/eval.txt", "data/eval", "recipe.yaml:5: evaluation.path: ", absl::StatusCode::kInvalidArgument},
      {"data/calib.jsonl", "data/calib.csv", "has no dataset extension (.jsonl, .json, .txt, .raw)"},
      {"stages:", "stages: []\nx:", "recipe.yaml:8: recipe: unknown key 'x'"},
      {"  - {id: stats, kind: calibrate}", "  - {id: stats, kind: calibrate", "recipe.yaml:"},
  };
  for (const BadCase& c : cases) {
    EXPECT_THAT(Parse(Edit(c.from, c.to)), StatusIs(c.code, HasSubstr(c.message))) << c.to;
  }
}

// A recipe sent as text, with no file (SubmitJob with an empty recipe_path): its relative paths
// are refused with the rule, its absolute ones resolve.
TEST_F(RecipeTest, ARecipeWithoutAFileNeedsAbsolutePaths) {
  EXPECT_THAT(ParseRecipe(kGood, "", {}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("recipe:2: model 'models/tiny' is relative, and the recipe came without a file")));
  std::string absolute = kGood;
  for (const char* p : {"models/tiny", "out/tiny-mc-moe", "data/calib.jsonl", "data/eval.txt"}) {
    absolute.replace(absolute.find(p), std::strlen(p), dir_.Join(p));
  }
  absl::StatusOr<Recipe> r = ParseRecipe(absolute, "", {}, {});
  EXPECT_TRUE(r.ok()) << r.status();
}

// `threads` fixes every task's compute threads: validated, in the canonical JSON only when set
// (jobs without it keep their JSON), and read back by workers.
TEST_F(RecipeTest, ThreadsAreOptionalCheckedAndCarriedToWorkers) {
  absl::StatusOr<Recipe> unset = Parse(kGood);
  ASSERT_TRUE(unset.ok()) << unset.status();
  EXPECT_EQ(unset->threads, 0);
  EXPECT_FALSE(absl::StrContains(unset->CanonicalJson(), "threads"));
  absl::StatusOr<Recipe> set = Parse(kGood, {"threads=4"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->threads, 4);
  absl::StatusOr<Recipe> back = Recipe::FromCanonicalJson(set->CanonicalJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->threads, 4);
  EXPECT_EQ(Recipe::FromCanonicalJson(unset->CanonicalJson())->threads, 0);
  EXPECT_THAT(Parse(kGood, {"threads=0"}), StatusIs(absl::StatusCode::kInvalidArgument,
                                                    HasSubstr("threads must be in [1, 1024], got 0")));
  EXPECT_THAT(Parse(kGood, {"threads=many"}), StatusIs(absl::StatusCode::kInvalidArgument,
                                                       HasSubstr("threads must be an integer")));
}

TEST_F(RecipeTest, ModelWithoutConfigAndAllowedRoots) {
  std::filesystem::remove(dir_.Join("models/tiny/config.json"));
  EXPECT_THAT(Parse(kGood), StatusIs(absl::StatusCode::kNotFound, "has no config.json"));
  RecipeOptions no_check;
  no_check.check_files = false;
  EXPECT_OK(Parse(kGood, {}, no_check).status());
  RecipeOptions roots = no_check;
  roots.allowed_roots = {dir_.Join("models")};
  EXPECT_THAT(Parse(kGood, {}, roots),
              StatusIs(absl::StatusCode::kPermissionDenied, "outside the allowed roots"));
  roots.allowed_roots = {dir_.path()};
  EXPECT_OK(Parse(kGood, {}, roots).status());
  EXPECT_THAT(Parse(Edit("models/tiny", "../../etc"), {}, roots),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(RecipeTest, FileLevelErrors) {
  EXPECT_THAT(LoadRecipeFile(dir_.Join("none.yaml"), {}), StatusIs(absl::StatusCode::kNotFound));
  RecipeOptions small;
  small.max_bytes = 10;
  EXPECT_THAT(Parse(kGood, {}, small), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(Parse("- just\n- a list\n"), StatusIs(absl::StatusCode::kInvalidArgument, "mapping"));
  std::string path = dir_.WriteFile("r.yaml", kGood);
  EXPECT_OK(LoadRecipeFile(path, {}).status());
}

// Every recipe shipped in recipes/ validates (files are not checked: the tiny model they name
// is built on demand), so a stage or parameter renamed in the catalog cannot leave one behind.
TEST(ShippedRecipesTest, EveryRecipeValidates) {
  RecipeOptions options;
  options.check_files = false;
  int count = 0;
  for (const auto& e : std::filesystem::directory_iterator(MOEC_SOURCE_DIR "/recipes")) {
    if (e.path().extension() != ".yaml") continue;
    ++count;
    EXPECT_OK(LoadRecipeFile(e.path().string(), {}, options).status()) << e.path();
  }
  EXPECT_GE(count, 10);
}

// docs/recipes.md documents every stage kind and parameter of the catalog.
TEST(StageCatalogTest, DocsListEveryKindAndParameter) {
  auto doc = std::ifstream(MOEC_SOURCE_DIR "/docs/recipes.md");
  std::stringstream text;
  text << doc.rdbuf();
  for (const auto& kind : StageKinds()) {
    EXPECT_THAT(text.str(), HasSubstr("### `" + kind.kind + "`"));
    for (const auto& p : kind.params) {
      EXPECT_THAT(text.str(), HasSubstr("| `" + p.name + "` |")) << kind.kind;
    }
  }
  // The traits table of "Rules between stages": a row per kind (or group of kinds) with its
  // needs, calibration, evaluation and data-plane columns as the catalog says.
  const std::string all = text.str();
  const size_t section = all.find("## Rules between stages");
  ASSERT_NE(section, std::string::npos);
  const std::string rules = all.substr(section, all.find("## Stage kinds") - section);
  std::set<std::string> seen;
  std::istringstream lines(rules);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("| `", 0) != 0) continue;
    std::vector<std::string> cells = absl::StrSplit(line, '|');
    ASSERT_GE(cells.size(), 8u) << line;
    std::vector<std::string> kinds;
    for (absl::string_view k : absl::StrSplit(cells[1], '`')) {
      if (FindStageKind(k) != nullptr) kinds.push_back(std::string(k));
    }
    for (const std::string& k : kinds) {
      SCOPED_TRACE(k);
      const StageKindSpec& spec = *FindStageKind(k);
      seen.insert(k);
      for (const NeedSpec& n : spec.needs) {
        for (const std::string& needed : n.kinds) {
          if (!spec.restructure) EXPECT_THAT(cells[2], HasSubstr("`" + needed + "`"));
        }
      }
      if (spec.needs.empty()) EXPECT_THAT(cells[2], HasSubstr("—"));
      EXPECT_EQ(absl::StrContains(cells[4], "yes"), spec.reads_calibration);
      EXPECT_EQ(absl::StrContains(cells[5], "yes"), spec.reads_evaluation);
      EXPECT_EQ(absl::StrContains(cells[6], "yes"), spec.data_plane);
      EXPECT_EQ(absl::StrContains(cells[7], "hidden chain"), !spec.writes_hidden.never);
      EXPECT_EQ(absl::StrContains(cells[7], "`output`"), spec.writes_output);
    }
  }
  EXPECT_EQ(seen.size(), StageKinds().size());
}

}  // namespace
}  // namespace moec::recipe
