#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "tests/testing/status_matchers.h"

namespace moec::kernels {
namespace {

using ::moec::testing::StatusIs;

// Naive oracle: reads bit r*bits+k of column c's stream one bit at a time.
uint8_t NaiveGet(const std::vector<uint32_t>& packed, int64_t cols, int bits, int64_t r,
                 int64_t c) {
  uint32_t v = 0;
  for (int k = 0; k < bits; ++k) {
    int64_t bit = r * bits + k;
    uint32_t word = packed[(bit / 32) * cols + c];
    v |= ((word >> (bit % 32)) & 1u) << k;
  }
  return static_cast<uint8_t>(v);
}

TEST(UnpackRowsTest, FourBitMatchesGptqLayoutByHand) {
  // GPTQ 4-bit: rows 0..7 of a column live in one int32, row 0 in the lowest nibble.
  std::vector<uint8_t> values = {0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<uint32_t> packed(1);
  ASSERT_OK(PackRows(values.data(), 8, 1, 4, packed.data()));
  EXPECT_EQ(packed[0], 0x76543210u);
}

TEST(UnpackRowsTest, ThreeBitStraddlesWordsByHand) {
  // 11 rows of 3 bits: row 10 uses bits 30..32, i.e. two bits of word 0 and one of word 1.
  std::vector<uint8_t> values(11, 0);
  values[10] = 0b101;
  std::vector<uint32_t> packed(2);
  ASSERT_OK(PackRows(values.data(), 11, 1, 3, packed.data()));
  EXPECT_EQ(packed[0], 0b01u << 30);
  EXPECT_EQ(packed[1], 0b1u);
  std::vector<uint8_t> out(11, 9);
  ASSERT_OK(UnpackRows(Device::kCpu, packed.data(), 11, 1, 3, out.data()));
  EXPECT_EQ(out, values);
}

TEST(UnpackRowsTest, RoundTripAgainstNaiveOracleForEveryWidth) {
  std::mt19937 rng(1234);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t rows : {1, 7, 32, 33, 128, 131}) {
      const int64_t cols = 5;
      std::vector<uint8_t> values(rows * cols);
      for (auto& v : values) v = static_cast<uint8_t>(rng() % (1u << bits));
      std::vector<uint32_t> packed(PackedWordsPerColumn(rows, bits) * cols);
      ASSERT_OK(PackRows(values.data(), rows, cols, bits, packed.data()));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          ASSERT_EQ(NaiveGet(packed, cols, bits, r, c), values[r * cols + c])
              << "bits " << bits << " r " << r << " c " << c;
        }
      }
      std::vector<uint8_t> out(rows * cols, 0xFF);
      ASSERT_OK(UnpackRows(Device::kCpu, packed.data(), rows, cols, bits, out.data()));
      EXPECT_EQ(out, values) << "bits " << bits << " rows " << rows;
    }
  }
}

TEST(UnpackRowsTest, RejectsBadArguments) {
  uint8_t v = 4;
  uint32_t w = 0;
  EXPECT_THAT(PackRows(&v, 1, 1, 2, &w), StatusIs(absl::StatusCode::kInvalidArgument, "needs more"));
  EXPECT_THAT(PackRows(&v, 1, 1, 9, &w), StatusIs(absl::StatusCode::kInvalidArgument, "bits"));
  EXPECT_THAT(UnpackRows(Device::kCpu, &w, -1, 1, 4, &v),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(UnpackRowsTest, CudaWithoutCudaBuildIsUnimplemented) {
  if (BuiltWithCuda()) GTEST_SKIP() << "built with CUDA; covered by kernels_cuda_test";
  uint32_t w = 0;
  uint8_t v = 0;
  EXPECT_THAT(UnpackRows(Device::kCuda, &w, 1, 1, 4, &v),
              StatusIs(absl::StatusCode::kUnimplemented));
}

}  // namespace
}  // namespace moec::kernels
