#include "kernels/hqq.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace moec::kernels {
namespace {

TEST(HqqTest, RoundTripsEveryWidthAndOddShapes) {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{16, 4}, {13, 3}, {1, 5}, {41, 7}}) {
      std::vector<uint8_t> codes(rows * cols);
      for (auto& q : codes) q = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      const int64_t packed_rows = HqqPackedRows(rows, bits);
      std::vector<int32_t> buf(packed_rows * cols + 1);
      ASSERT_TRUE(HqqPack(codes.data(), rows, cols, bits, buf.data()).ok());
      std::vector<uint8_t> back(rows * cols, 255);
      ASSERT_TRUE(HqqUnpack(buf.data(), rows, cols, bits, back.data()).ok());
      EXPECT_EQ(back, codes) << bits << " bits, " << rows << "x" << cols;
    }
  }
}

// The layouts of ALGORITHMS.md 3.5 on hand-made codes.
TEST(HqqTest, LayoutsMatchTheReference) {
  // 4 bits, 4 rows x 1 col: step 2; byte r = Q[r] << 4 | Q[r + 2].
  const uint8_t q4[] = {1, 2, 3, 4};
  uint8_t p4[2];
  ASSERT_TRUE(HqqPack(q4, 4, 1, 4, p4).ok());
  EXPECT_EQ(p4[0], (1 << 4) | 3);
  EXPECT_EQ(p4[1], (2 << 4) | 4);
  // 1 bit, 8 rows: bit 7 holds row 0.
  const uint8_t q1[] = {1, 0, 0, 0, 0, 0, 0, 1};
  uint8_t p1[1];
  ASSERT_TRUE(HqqPack(q1, 8, 1, 1, p1).ok());
  EXPECT_EQ(p1[0], 0x81);
  // 2 bits, 4 rows: Q0 << 6 | Q1 << 4 | Q2 << 2 | Q3.
  const uint8_t q2[] = {3, 0, 1, 2};
  uint8_t p2[1];
  ASSERT_TRUE(HqqPack(q2, 4, 1, 2, p2).ok());
  EXPECT_EQ(p2[0], (3 << 6) | (0 << 4) | (1 << 2) | 2);
  // 3 bits, 10 rows: chunk k at bits 27 - 3k.
  uint8_t q3[10] = {7, 0, 0, 0, 0, 0, 0, 0, 0, 5};
  int32_t p3[1];
  ASSERT_TRUE(HqqPack(q3, 10, 1, 3, p3).ok());
  EXPECT_EQ(p3[0], (7 << 27) | 5);
  // Codes that do not fit are refused.
  const uint8_t bad[] = {2};
  EXPECT_FALSE(HqqPack(bad, 1, 1, 1, p1).ok());
}

}  // namespace
}  // namespace moec::kernels
