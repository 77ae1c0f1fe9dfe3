#include "common/status_macros.h"

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  MOEC_ASSIGN_OR_RETURN(int h, Half(x));
  MOEC_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::Status CheckEven(int x) {
  MOEC_RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacrosTest, AssignOrReturnPropagates) {
  EXPECT_THAT(Quarter(8), testing::IsOkAndHolds(2));
  EXPECT_THAT(Quarter(6), testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CheckEven(3), testing::StatusIs(absl::StatusCode::kInvalidArgument, "odd"));
  EXPECT_OK(CheckEven(4));
}

TEST(StatusMacrosTest, AnnotateKeepsCodeAndPrefixesMessage) {
  absl::Status s = Annotate(absl::DataLossError("crc"), "key k");
  EXPECT_THAT(s, testing::StatusIs(absl::StatusCode::kDataLoss, "key k: crc"));
  EXPECT_OK(Annotate(absl::OkStatus(), "x"));
}

}  // namespace
}  // namespace moec
