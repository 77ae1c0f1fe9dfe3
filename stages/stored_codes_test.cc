// The stored codes of quantizing stages: a lossless round trip at every width, GPTQ's qweight
// layout (checked by hand for 4 bits), and malformed stored tensors refused.
#include "stages/stored_codes.h"

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::stages {
namespace {

TEST(StoredCodesTest, RoundTripsEveryWidthAndShape) {
  at::manual_seed(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t in : {1, 7, 8, 33, 128, 1000}) {  // 1000: blocks packed by several threads
      const at::Tensor q = at::randint(0, 1 << bits, {5, in}, at::kLong);
      ASSERT_OK_AND_ASSIGN(at::Tensor packed, PackStoredCodes(q, bits));
      EXPECT_EQ(packed.scalar_type(), at::kInt);
      EXPECT_EQ(packed.size(0), (in * bits + 31) / 32) << bits << " bits, " << in;
      EXPECT_EQ(packed.size(1), 5);
      ASSERT_OK_AND_ASSIGN(at::Tensor back, UnpackStoredCodes(packed, in, bits));
      EXPECT_TRUE(at::equal(back, q.to(at::kByte))) << bits << " bits, " << in << " columns";
    }
  }
}

TEST(StoredCodesTest, FourBitCodesAreGptqsQweight) {
  // Output row 0 has codes 0..15 along its 16 inputs; row 1 has 15..0.
  const at::Tensor up = at::arange(16, at::kLong);
  const at::Tensor q = at::stack({up, 15 - up});
  ASSERT_OK_AND_ASSIGN(at::Tensor packed, PackStoredCodes(q, 4));
  ASSERT_EQ(packed.sizes(), (at::IntArrayRef{2, 2}));
  // Word w of column (output) c holds inputs 8w .. 8w+7, the first in the lowest nibble.
  EXPECT_EQ(static_cast<uint32_t>(packed[0][0].item<int32_t>()), 0x76543210u);
  EXPECT_EQ(static_cast<uint32_t>(packed[1][0].item<int32_t>()), 0xFEDCBA98u);
  EXPECT_EQ(static_cast<uint32_t>(packed[0][1].item<int32_t>()), 0x89ABCDEFu);
  EXPECT_EQ(static_cast<uint32_t>(packed[1][1].item<int32_t>()), 0x01234567u);
}

TEST(StoredCodesTest, RefusesMalformedInput) {
  EXPECT_EQ(PackStoredCodes(at::zeros({2, 2}), 9).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackStoredCodes(at::full({2, 2}, 16), 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(at::Tensor packed, PackStoredCodes(at::zeros({3, 16}), 4));
  EXPECT_EQ(UnpackStoredCodes(packed, 17, 4).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(UnpackStoredCodes(packed.to(at::kFloat), 16, 4).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(UnpackStoredCodes(packed, 16, 0).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace moec::stages
