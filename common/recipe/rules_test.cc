// The rules between stages (rules.h), the canonical JSON round trip, model views, and the
// consistency of the stage catalog's traits.
#include "common/recipe/rules.h"

#include <filesystem>

#include "common/recipe/recipe.h"
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
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

constexpr char kHead[] = R"(name: t
model: models/tiny
output: out/t
calibration: {path: data/calib.txt, samples: 16, seqlen: 64}
evaluation: {path: data/eval.txt, seqlen: 64}
stages:
)";

class RulesTest : public ::testing::Test {
 protected:
  RulesTest() {
    std::filesystem::create_directories(dir_.Join("models/tiny"));
    std::filesystem::create_directories(dir_.Join("data"));
    dir_.WriteFile("models/tiny/config.json", "{}");
    dir_.WriteFile("data/calib.txt", "x");
    dir_.WriteFile("data/eval.txt", "x");
  }
  absl::StatusOr<Recipe> Parse(const std::string& stages, const std::string& head = kHead) {
    return ParseRecipe(head + stages, dir_.Join("recipe.yaml"), {});
  }
  TempDir dir_;
};

// Rule 1: a stage without the stage it reads among its direct needs is refused at its line,
// naming the stage that would do (the first case of issue #17 failed in its first task).
TEST_F(RulesTest, ExpertPruneWithoutCalibrateIsRefusedBeforeAnyTaskRuns) {
  EXPECT_THAT(Parse("  - {id: stats, kind: calibrate}\n"
                    "  - {id: prune, kind: expert_prune, with: {keep: 2}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("recipe.yaml:8: stage 'prune' (expert_prune): needs a stage of "
                                 "kind calibrate among its needs (for its router statistics and "
                                 "hidden-state chain); add 'stats' to its needs")));
  EXPECT_THAT(Parse("  - {id: prune, kind: expert_prune, with: {keep: 2}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("add one to the recipe and to its needs")));
  EXPECT_OK(Parse("  - {id: stats, kind: calibrate}\n"
                  "  - {id: prune, kind: expert_prune, needs: [stats], with: {keep: 2}}\n")
                .status());
  // Conditional needs: an hf export needs no quantizer, a gptq one does.
  EXPECT_OK(Parse("  - {id: out, kind: export, with: {format: hf}}\n").status());
  EXPECT_THAT(Parse("  - {id: out, kind: export, with: {format: gptq}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("needs a stage of kind gptq or rtn among its needs (when format "
                                 "is gptq or hqq or fake_quant, for the quantized weights")));
  EXPECT_THAT(Parse("  - {id: stats, kind: calibrate}\n"
                    "  - {id: bits, kind: allocate_bits, needs: [stats], with: {average_bits: 2}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("kind quant_loss")));
}

// Rule 6 (the second case of issue #17 failed in the export, after all the quantization ran).
TEST_F(RulesTest, OneBitCandidatesFeedingAGptqExportAreRefused) {
  const std::string stages =
      "  - {id: stats, kind: calibrate}\n"
      "  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [1, 2, 3]}}\n"
      "  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {bits: [1, 2, 3], "
      "average_bits: 2.0}}\n"
      "  - {id: quant, kind: gptq, needs: [bits]}\n"
      "  - {id: out, kind: export, needs: [quant], with: {format: FORMAT}}\n";
  auto with_format = [&](const std::string& f) {
    std::string s = stages;
    return s.replace(s.find("FORMAT"), 6, f);
  };
  EXPECT_THAT(Parse(with_format("gptq")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("recipe.yaml:11: stage 'out' (export): format gptq holds widths "
                                 "2, 3, 4, 8 only, but stage 'quant' (gptq) may produce 1-bit "
                                 "weights (candidate widths of 'bits'); export as hqq or "
                                 "fake_quant, or drop width 1")));
  EXPECT_OK(Parse(with_format("hqq")).status());
  EXPECT_OK(Parse(with_format("fake_quant")).status());
  // Without an allocation the quantizer's own widths count: 5-bit attention cannot be GPTQ.
  EXPECT_THAT(Parse("  - {id: quant, kind: rtn, with: {attn_bits: 5}}\n"
                    "  - {id: out, kind: export, needs: [quant], with: {format: gptq}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("may produce 5-bit")));
}

TEST_F(RulesTest, PossibleWidthsFollowAllocationAndSharedWidths) {
  ASSERT_OK_AND_ASSIGN(
      Recipe r, Parse("  - {id: stats, kind: calibrate}\n"
                      "  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3]}}\n"
                      "  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {bits: "
                      "[2, 3], average_bits: 2.5}}\n"
                      "  - {id: g, kind: gptq, needs: [bits], with: {attn_bits: 8, shared_bits: 4, "
                      "bits: 5}}\n"
                      "  - {id: r, kind: rtn, needs: [bits], with: {attn_bits: 6, bits: 5}}\n"
                      "  - {id: plain, kind: gptq, with: {router_bits: 8}}\n"));
  EXPECT_THAT(PossibleWidths(r, *r.FindStage("g")), ElementsAre(2, 3, 4, 8));
  // rtn's `bits` is also its shared-expert width, so it stays besides the allocation's.
  EXPECT_THAT(PossibleWidths(r, *r.FindStage("r")), ElementsAre(2, 3, 5, 6));
  EXPECT_THAT(PossibleWidths(r, *r.FindStage("plain")), ElementsAre(4, 8));
}

TEST_F(RulesTest, AllocationWidthsMustBeThoseItsLossStageMeasured) {
  EXPECT_THAT(Parse("  - {id: stats, kind: calibrate}\n"
                    "  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3]}}\n"
                    "  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: "
                    "{average_bits: 2.5}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("recipe.yaml:9: stage 'bits' (allocate_bits): its candidate "
                                 "widths 'bits' [1, 2, 3] differ from the widths [2, 3] stage "
                                 "'loss' (quant_loss) measures")));
}

// Rule 2.
TEST_F(RulesTest, StagesReadingDataNeedItInTheRecipe) {
  const std::string no_data = "name: t\nmodel: models/tiny\noutput: out/t\nstages:\n";
  EXPECT_THAT(Parse("  - {id: q, kind: rtn}\n", no_data),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("stage 'q' (rtn): reads calibration windows; the recipe has no "
                                 "'calibration'")));
  EXPECT_THAT(Parse("  - {id: e, kind: evaluate}\n", no_data),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no 'evaluation'")));
  EXPECT_OK(Parse("  - {id: out, kind: export, with: {format: hf}}\n", no_data).status());
}

// Rules 4 and 5.
TEST_F(RulesTest, OutputAndStructuralEditRules) {
  const std::string base = "  - {id: stats, kind: calibrate}\n"
                           "  - {id: prune, kind: expert_prune, needs: [stats], with: {keep: 2}}\n"
                           "  - {id: drop, kind: expert_drop, needs: [stats], with: {keep: 2}}\n"
                           "  - {id: bd, kind: block_drop, needs: [stats], with: {drop: 1}}\n";
  EXPECT_THAT(Parse(base + "  - {id: out, kind: export, needs: [prune, drop], with: {format: hf}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("stages 'prune' (expert_prune) and 'drop' (expert_drop) both "
                                 "choose experts")));
  EXPECT_THAT(Parse(base + "  - {id: edit, kind: restructure, needs: [prune, drop]}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("both choose experts")));
  EXPECT_THAT(Parse(base + "  - {id: edit, kind: restructure, needs: [bd]}\n"
                           "  - {id: q, kind: gptq, needs: [edit]}\n"
                           "  - {id: out, kind: export, needs: [q, prune]}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("needs structural stages directly ('prune' (expert_prune)) and "
                                 "through restructure stage 'edit'")));
  EXPECT_THAT(Parse(base + "  - {id: q, kind: gptq}\n"
                           "  - {id: out, kind: export, needs: [q, bd]}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the quantizing stage 'q' runs on the unedited model")));
  EXPECT_THAT(Parse(base + "  - {id: a, kind: export, needs: [bd], with: {format: hf}}\n"
                           "  - {id: b, kind: export, needs: [prune], with: {format: hf}}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("stage 'b' (export): stage 'a' already writes the job's output")));
  EXPECT_OK(Parse(base + "  - {id: out, kind: export, needs: [prune, bd], with: {format: hf}}\n")
                .status());
}

TEST_F(RulesTest, ModelViewsResolveThroughNeeds) {
  ASSERT_OK_AND_ASSIGN(
      Recipe r, Parse("  - {id: stats, kind: calibrate}\n"
                      "  - {id: bd, kind: block_drop, needs: [stats], with: {drop: 1}}\n"
                      "  - {id: edit, kind: restructure, needs: [bd]}\n"
                      "  - {id: q, kind: gptq, needs: [edit]}\n"
                      "  - {id: out, kind: export, needs: [q]}\n"
                      "  - {id: plain, kind: rtn}\n"));
  EXPECT_THAT(ResolveModelViews(r.stages),
              UnorderedElementsAre(Pair("q", "edit"), Pair("out", "edit")));
}

TEST_F(RulesTest, CanonicalJsonRoundTripsAndIsCheckedAgainstTheCatalog) {
  ASSERT_OK_AND_ASSIGN(
      Recipe r, Parse("  - {id: stats, kind: calibrate}\n"
                      "  - {id: prune, kind: expert_prune, needs: [stats], with: {keep: 2}}\n"));
  ASSERT_OK_AND_ASSIGN(Recipe back, Recipe::FromCanonicalJson(r.CanonicalJson()));
  EXPECT_EQ(back.CanonicalJson(), r.CanonicalJson());
  EXPECT_EQ(back.FindStage("prune")->Int("keep"), 2);
  EXPECT_EQ(back.FindStage("prune")->Str("mode"), "layerwise");
  EXPECT_EQ(back.calibration->seqlen, 64);
  EXPECT_EQ(back.NeededOfKind(*back.FindStage("prune"), "calibrate"), back.FindStage("stats"));
  // A stored recipe missing a parameter added since gets its default; wrong ones are refused.
  nlohmann::json j = nlohmann::json::parse(r.CanonicalJson());
  j["stages"][1]["with"].erase("batch_size");
  ASSERT_OK_AND_ASSIGN(Recipe defaulted, Recipe::FromCanonicalJson(j.dump()));
  EXPECT_EQ(defaulted.FindStage("prune")->Int("batch_size"), 8);
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> bad = {
      {[](nlohmann::json& x) { x["stages"][1]["with"]["keep"] = "two"; },
       "field 'stages[1].with.keep': expected an integer"},
      {[](nlohmann::json& x) { x["stages"][1]["with"]["keep"] = 0; },
       "field 'stages[1].with.keep': must be in [1, 1024], got 0"},
      {[](nlohmann::json& x) { x["stages"][1]["with"]["kept"] = 1; }, "unknown parameter 'kept'"},
      {[](nlohmann::json& x) { x["stages"][1]["kind"] = "prune"; }, "unknown kind 'prune'"},
      {[](nlohmann::json& x) { x["stages"][1]["needs"] = {"later"}; }, "stages listed before it"},
      {[](nlohmann::json& x) { x.erase("model"); }, "field 'model': expected a string"},
      {[](nlohmann::json& x) { x["calibration"]["sampling"] = "x"; }, "calibration.sampling"},
      {[](nlohmann::json& x) { x["extra"] = 1; }, "field 'extra': unknown field"},
  };
  for (const auto& [edit, message] : bad) {
    nlohmann::json copy = nlohmann::json::parse(r.CanonicalJson());
    edit(copy);
    EXPECT_THAT(Recipe::FromCanonicalJson(copy.dump()),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(message)))
        << message;
  }
  EXPECT_THAT(Recipe::FromCanonicalJson("not json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a JSON object")));
}

// Traits name kinds and parameters that exist, with the types their use needs.
TEST(StageCatalogTest, TraitsAreConsistent) {
  for (const StageKindSpec& k : StageKinds()) {
    SCOPED_TRACE(k.kind);
    for (const NeedSpec& n : k.needs) {
      EXPECT_FALSE(n.kinds.empty());
      for (const std::string& kind : n.kinds) EXPECT_NE(FindStageKind(kind), nullptr) << kind;
      if (!n.when.param.empty()) EXPECT_NE(k.FindParam(n.when.param), nullptr);
    }
    for (const std::string& kind : k.uses) EXPECT_NE(FindStageKind(kind), nullptr) << kind;
    for (const When& w : {k.chained, k.writes_hidden}) {
      if (!w.param.empty()) EXPECT_EQ(k.FindParam(w.param)->type, ParamType::kEnum);
    }
    for (const std::string& p : k.width_params) {
      ASSERT_NE(k.FindParam(p), nullptr) << p;
      EXPECT_EQ(k.FindParam(p)->type, ParamType::kInt) << p;
    }
    for (const std::string& p : {k.allocation_widths_param, k.measured_widths_param}) {
      if (!p.empty()) EXPECT_EQ(k.FindParam(p)->type, ParamType::kIntList) << p;
    }
    if (k.writes_output) {
      std::vector<std::string> names;
      for (const FormatSpec& f : k.formats) names.push_back(f.name);
      EXPECT_EQ(names, k.FindParam("format")->choices);
    }
    EXPECT_FALSE(!k.per_layer() && (k.data_plane || !k.writes_hidden.never)) << "global";
  }
  EXPECT_THAT(StructuralKinds(), ElementsAre("expert_prune", "expert_drop", "layer_drop",
                                             "block_drop", "prune_weights"));
}

}  // namespace
}  // namespace moec::recipe
