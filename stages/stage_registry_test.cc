// The registered stage kinds are exactly the catalog's: a kind the catalog lists but no worker
// implements (or the reverse) would be accepted by validation and fail only at run time.
#include <algorithm>

#include "common/recipe/stage_catalog.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "stages/builtin_stages.h"
#include "tests/testing/status_matchers.h"

namespace moec::stages {
namespace {

TEST(StageRegistryTest, RegisteredKindsEqualTheCatalogs) {
  StageRegistry registry;
  RegisterBuiltinStages(&registry);
  std::vector<std::string> catalog;
  for (const recipe::StageKindSpec& k : recipe::StageKinds()) catalog.push_back(k.kind);
  std::sort(catalog.begin(), catalog.end());
  EXPECT_EQ(registry.Kinds(), catalog);  // Kinds() is sorted
  for (const std::string& kind : catalog) EXPECT_OK(registry.Create(kind).status()) << kind;
  EXPECT_THAT(registry.Create("no_such_kind"),
              ::moec::testing::StatusIs(absl::StatusCode::kUnimplemented, "not implemented"));
}

}  // namespace
}  // namespace moec::stages
