#include "storage/dtype.h"

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::storage {
namespace {

using ::moec::testing::IsOkAndHolds;
using ::moec::testing::StatusIs;

TEST(DTypeTest, NamesRoundTripAndSizes) {
  for (absl::string_view name : {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8",
                                 "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "U16", "U32", "U64"}) {
    std::optional<DType> t = ParseDType(name);
    ASSERT_TRUE(t.has_value()) << name;
    EXPECT_EQ(DTypeName(*t), name);
  }
  EXPECT_EQ(DTypeBits(DType::kBF16), 16);
  EXPECT_EQ(DTypeBits(DType::kF8E4M3), 8);
  EXPECT_EQ(DTypeBits(DType::kF4), 4);
  EXPECT_FALSE(ParseDType("float32").has_value());
  EXPECT_FALSE(ParseDType("").has_value());
}

TEST(DTypeTest, TensorByteSize) {
  EXPECT_THAT(TensorByteSize(DType::kF32, {2, 3}), IsOkAndHolds(24u));
  EXPECT_THAT(TensorByteSize(DType::kF64, {}), IsOkAndHolds(8u));
  EXPECT_THAT(TensorByteSize(DType::kBF16, {0, 5}), IsOkAndHolds(0u));
  EXPECT_THAT(TensorByteSize(DType::kF4, {1, 2}), IsOkAndHolds(1u));
  EXPECT_THAT(TensorByteSize(DType::kF4, {3}), StatusIs(absl::StatusCode::kInvalidArgument, "whole"));
  EXPECT_THAT(TensorByteSize(DType::kF32, {-1}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(TensorByteSize(DType::kF32, {1ll << 62, 1ll << 62}),
              StatusIs(absl::StatusCode::kInvalidArgument, "overflow"));
  EXPECT_THAT(TensorByteSize(DType::kF64, {1ll << 62}),
              StatusIs(absl::StatusCode::kInvalidArgument, "overflow"));
}

}  // namespace
}  // namespace moec::storage
