#include "common/crc32c.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace moec::crc32c {
namespace {

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 B.4 and the standard check value.
  EXPECT_EQ(Value("123456789"), 0xE3069283u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Value(zeros), 0x8A9136AAu);
  std::string ones(32, '\xFF');
  EXPECT_EQ(Value(ones), 0x62A8AB43u);
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<char>(i);
  EXPECT_EQ(Value(inc), 0x46DD794Eu);
  EXPECT_EQ(Value(""), 0u);
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  std::string s = "hello, mixture of experts";
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    uint32_t c = Extend(0, s.data(), cut);
    c = Extend(c, s.data() + cut, s.size() - cut);
    EXPECT_EQ(c, Value(s)) << "cut " << cut;
  }
}

TEST(Crc32cTest, HardwareMatchesPortableAtEveryAlignment) {
  std::mt19937 rng(7);
  std::string buf(4099, '\0');
  for (auto& ch : buf) ch = static_cast<char>(rng());
  for (size_t off = 0; off < 9; ++off) {
    for (size_t len : {0, 1, 7, 8, 9, 63, 1000, 4090}) {
      EXPECT_EQ(Extend(0, buf.data() + off, len), ExtendPortable(0, buf.data() + off, len))
          << "off " << off << " len " << len;
    }
  }
}

TEST(Crc32cTest, CombineEqualsCrcOfConcatenation) {
  std::mt19937 rng(3);
  std::string s(5000, '\0');
  for (auto& ch : s) ch = static_cast<char>(rng());
  for (size_t cut : {0, 1, 7, 8, 100, 4096, 4999, 5000}) {
    uint32_t a = Value(s.data(), cut);
    uint32_t b = Value(s.data() + cut, s.size() - cut);
    EXPECT_EQ(Combine(a, b, s.size() - cut), Value(s)) << "cut " << cut;
  }
}

TEST(Crc32cTest, DetectsSingleBitFlip) {
  std::string s(1 << 16, 'x');
  uint32_t before = Value(s);
  s[12345] ^= 0x10;
  EXPECT_NE(Value(s), before);
}

}  // namespace
}  // namespace moec::crc32c
