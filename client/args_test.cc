#include "client/args.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::client {
namespace {

using ::moec::testing::StatusIs;
using ::testing::ElementsAre;

TEST(ArgsTest, PositionalsValuesRepeatsAndSwitches) {
  ASSERT_OK_AND_ASSIGN(Args a, ParseArgs({"r.yaml", "--set", "a=1", "--set=b=2", "--workers=3", "--json"},
                                         "run", {"set", "workers"}, {"json"}));
  EXPECT_THAT(a.positional, ElementsAre("r.yaml"));
  EXPECT_THAT(a.All("set"), ElementsAre("a=1", "b=2"));
  EXPECT_EQ(a.Get("workers"), "3");
  EXPECT_EQ(a.Get("missing", "d"), "d");
  EXPECT_TRUE(a.Has("json"));
}

TEST(ArgsTest, Errors) {
  EXPECT_THAT(ParseArgs({"--bogus"}, "run", {}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "moec run: unknown flag --bogus"));
  EXPECT_THAT(ParseArgs({"--set"}, "run", {"set"}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "--set needs a value"));
  EXPECT_THAT(ParseArgs({"--json=1"}, "list", {}, {"json"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "takes no value"));
}

}  // namespace
}  // namespace moec::client
