// Test-only helpers for running stages without a coordinator: recipes built from the few fields
// a test cares about (and MapFactorIo, map_factor_io.h).
#ifndef MOEC_DATAPLANE_STAGE_TEST_UTIL_H_
#define MOEC_DATAPLANE_STAGE_TEST_UTIL_H_

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "common/recipe/recipe.h"
#include "common/recipe/stage_catalog.h"
#include "dataplane/map_factor_io.h"
#include "dataplane/task_context.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moec::dataplane {

namespace internal {

// The recipe defaults for what a test leaves out of data set `data` of `j` (null: none).
inline void FillDataDefaults(nlohmann::json& j, const char* data) {
  if (!j.contains(data) || j[data].is_null()) {
    j[data] = nullptr;
    return;
  }
  const recipe::DataSpec defaults;
  nlohmann::json& d = j[data];
  if (!d.contains("samples")) d["samples"] = defaults.samples;
  if (!d.contains("seqlen")) d["seqlen"] = defaults.seqlen;
  if (!d.contains("seed")) d["seed"] = defaults.seed;
  if (!d.contains("sampling")) d["sampling"] = defaults.sampling;
  // Tests keep 8-window chunks, so their few short windows still make several chunks.
  if (std::string(data) == "calibration" && !d.contains("chunk_tokens")) d["chunk_tokens"] = 0;
}

// What a test leaves out of stage entry `s`: no needs, no parameters (the catalog's defaults).
inline void FillStageDefaults(nlohmann::json& s) {
  if (!s.contains("needs")) s["needs"] = nlohmann::json::array();
  if (!s.contains("with") || s["with"].is_null()) s["with"] = nlohmann::json::object();
  // Required parameters a test leaves out (of stages it does not run) get their minimum.
  const recipe::StageKindSpec* kind = recipe::FindStageKind(s.value("kind", ""));
  for (const recipe::ParamSpec& p : kind != nullptr ? kind->params : std::vector<recipe::ParamSpec>{}) {
    if (p.default_value.is_null() && !s["with"].contains(p.name)) {
      s["with"][p.name] = p.type == recipe::ParamType::kInt ? nlohmann::json(static_cast<int64_t>(p.min))
                                                           : nlohmann::json(p.min);
    }
  }
}

}  // namespace internal

// A validated recipe from `j`: a canonical recipe (recipe::Recipe::CanonicalJson) of which a
// test may omit name ("test"), output ("<model>-out"), workers (1), a data set's samples, seqlen,
// seed and sampling (the recipe defaults) and the calibration's chunk_tokens (0), and a stage's needs and parameters (the catalog's
// defaults; required ones their minimum). A malformed one fails the test and gives null.
inline std::shared_ptr<const recipe::Recipe> TestRecipe(nlohmann::json j) {
  if (!j.contains("name")) j["name"] = "test";
  if (!j.contains("output")) j["output"] = j.value("model", std::string("model")) + "-out";
  if (!j.contains("workers")) j["workers"] = 1;
  for (const char* data : {"calibration", "evaluation"}) internal::FillDataDefaults(j, data);
  if (!j.contains("stages") || j["stages"].empty()) {
    j["stages"] = nlohmann::json::array({{{"id", "test"}, {"kind", "noop"}}});
  }
  for (nlohmann::json& s : j["stages"]) internal::FillStageDefaults(s);
  absl::StatusOr<recipe::Recipe> r = recipe::Recipe::FromCanonicalJson(j.dump());
  EXPECT_TRUE(r.ok()) << r.status() << "\n" << j.dump(2);
  if (!r.ok()) return nullptr;
  return std::make_shared<const recipe::Recipe>(*std::move(r));
}

// TestRecipe of `j` with the parameters of its stage `stage_id` set to `params`; a stage of that
// id is added (as `kind`) when `j` has none.
inline std::shared_ptr<const recipe::Recipe> TestRecipeWith(nlohmann::json j,
                                                            const std::string& stage_id,
                                                            const nlohmann::json& params,
                                                            const std::string& kind = "noop") {
  if (!j.contains("stages")) j["stages"] = nlohmann::json::array();
  bool found = false;
  for (nlohmann::json& s : j["stages"]) {
    if (s.value("id", "") == stage_id) {
      s["with"] = params;
      found = true;
    }
  }
  if (!found) j["stages"].push_back({{"id", stage_id}, {"kind", kind}, {"with", params}});
  return TestRecipe(std::move(j));
}

// A stage entry for TestRecipe.
inline nlohmann::json TestStage(const std::string& id, const std::string& kind,
                                nlohmann::json with = nlohmann::json::object(),
                                std::vector<std::string> needs = {}) {
  return {{"id", id}, {"kind", kind}, {"with", std::move(with)}, {"needs", std::move(needs)}};
}

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_STAGE_TEST_UTIL_H_
