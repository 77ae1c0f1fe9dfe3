#include "storage/safetensors_writer.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"
#include "storage/safetensors_reader.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::storage {
namespace {

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::ElementsAre;

std::string ReadAll(const std::string& path) { return *ReadFileToString(path, 1ull << 30); }

std::string Bytes(std::initializer_list<int> v) {
  std::string s;
  for (int b : v) s.push_back(static_cast<char>(b));
  return s;
}

std::string F32(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

// The reference vector of the safetensors project (test_serialization): one F32 tensor
// "attn.0" of shape [1,2,3] holding 0..5.
TEST(SafetensorsWriterTest, MatchesReferenceVectorF32) {
  TempDir dir;
  std::string path = dir.Join("a.safetensors");
  ASSERT_OK_AND_ASSIGN(auto w, SafetensorsWriter::Create(path, {{"attn.0", DType::kF32, {1, 2, 3}}}));
  ASSERT_OK(w->Write("attn.0", F32({0, 1, 2})));  // streamed in two pieces
  ASSERT_OK(w->Write("attn.0", F32({3, 4, 5})));
  ASSERT_OK(w->Finish());
  std::string expected = Bytes(
      {64,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,  34,  58,
       123, 34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,  115, 104,
       97,  112, 101, 34,  58,  91,  49,  44,  50,  44,  51,  93,  44,  34,  100, 97,  116, 97,
       95,  111, 102, 102, 115, 101, 116, 115, 34,  58,  91,  48,  44,  50,  52,  93,  125, 125,
       0,   0,   0,   0,   0,   0,   128, 63,  0,   0,   0,   64,  0,   0,   64,  64,  0,   0,
       128, 64,  0,   0,   160, 64});
  EXPECT_EQ(ReadAll(path), expected);
}

// The reference vector test_serialization_fp4: padding with spaces to a multiple of 8.
TEST(SafetensorsWriterTest, MatchesReferenceVectorPadding) {
  TempDir dir;
  std::string path = dir.Join("a.safetensors");
  ASSERT_OK_AND_ASSIGN(auto w, SafetensorsWriter::Create(path, {{"attn.0", DType::kF4, {1, 2}}}));
  ASSERT_OK(w->Write("attn.0", Bytes({0})));
  ASSERT_OK(w->Finish());
  std::string expected = Bytes(
      {64,  0,   0,   0,   0,  0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,  34,  58,
       123, 34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  52,  34,  44,  34,  115, 104, 97,
       112, 101, 34,  58,  91,  49,  44,  50,  93,  44,  34,  100, 97,  116, 97,  95,  111, 102,
       102, 115, 101, 116, 115, 34,  58,  91,  48,  44,  49,  93,  125, 125, 32,  32,  32,  32,
       0});
  EXPECT_EQ(ReadAll(path), expected);
}

TEST(SafetensorsWriterTest, OrdersByDtypeThenNameWithMetadataFirst) {
  std::vector<TensorSpec> specs = {{"c", DType::kBF16, {2}}, {"b", DType::kF32, {2}},
                                   {"a", DType::kI64, {1}}, {"a2", DType::kF32, {1}}};
  ASSERT_OK_AND_ASSIGN(std::string header,
                       SerializeSafetensorsHeader(HuggingFaceOrder(specs), {{"format", "pt"}}));
  std::string json = header.substr(8);
  EXPECT_EQ(json.size() % 8, 0u);
  EXPECT_EQ(json.substr(0, json.find_last_not_of(' ') + 1),
            R"({"__metadata__":{"format":"pt"},)"
            R"("a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
            R"("a2":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},)"
            R"("c":{"dtype":"BF16","shape":[2],"data_offsets":[20,24]}})");
}

TEST(SafetensorsWriterTest, RoundTripsThroughReader) {
  TempDir dir;
  std::string path = dir.Join("m.safetensors");
  ASSERT_OK_AND_ASSIGN(auto w, SafetensorsWriter::Create(
                                   path, {{"x", DType::kF32, {2}}, {"e", DType::kF32, {0}},
                                          {"y", DType::kU8, {3}}},
                                   {{"k", "v\n\"q\""}}));
  EXPECT_THAT(w->order().size(), 3u);
  ASSERT_OK(w->Write("x", F32({1.5f, -2})));
  ASSERT_OK(w->Write("y", Bytes({7, 8, 9})));
  ASSERT_OK(w->Finish());
  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(path));
  EXPECT_EQ(f->metadata().at("k"), "v\n\"q\"");
  EXPECT_EQ(f->Get("y")->bytes(), Bytes({7, 8, 9}));
  EXPECT_EQ(f->Get("x")->bytes(), F32({1.5f, -2}));
  EXPECT_EQ(f->Get("e")->size, 0u);
}

TEST(SafetensorsWriterTest, EnforcesOrderAndSizesAndIsAtomic) {
  TempDir dir;
  std::string path = dir.Join("m.safetensors");
  {
    ASSERT_OK_AND_ASSIGN(auto w, SafetensorsWriter::Create(
                                     path, {{"a", DType::kF32, {1}}, {"b", DType::kF32, {1}}}));
    EXPECT_THAT(w->Write("b", F32({1})),
                StatusIs(absl::StatusCode::kFailedPrecondition, "expected bytes of tensor 'a'"));
    EXPECT_THAT(w->Write("a", F32({1, 2})), StatusIs(absl::StatusCode::kFailedPrecondition, "runs past"));
    ASSERT_OK(w->Write("a", F32({1})));
    EXPECT_THAT(w->Finish(), StatusIs(absl::StatusCode::kFailedPrecondition, "'b' has 0 of 4"));
    EXPECT_FALSE(std::filesystem::exists(path));
  }  // abandoned: no file, no temp file left
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  EXPECT_THAT(SafetensorsWriter::Create(path, {{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "duplicate"));
  EXPECT_THAT(SafetensorsWriter::Create(path, {{"__metadata__", DType::kF32, {1}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ShardedSafetensorsWriterTest, ShardsLikeHuggingFaceAndWritesIndex) {
  TempDir dir;
  // 16-byte limit: shards [a 8, b 8] | [big 40, alone] | [c 12, d 4]
  std::vector<TensorSpec> specs = {{"a", DType::kF32, {2}},  {"b", DType::kF32, {2}},
                                   {"c", DType::kF32, {3}},  {"big", DType::kF32, {10}},
                                   {"d", DType::kF32, {1}}};
  ShardingOptions opts;
  opts.max_shard_bytes = 16;
  ASSERT_OK_AND_ASSIGN(auto w, ShardedSafetensorsWriter::Create(dir.path(), specs, {}, opts));
  // huggingface_hub order: an oversized tensor's shard is emitted when the tensor is seen.
  EXPECT_THAT(w->shard_files(),
              ElementsAre("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                          "model-00003-of-00003.safetensors"));
  for (const TensorSpec& t : w->order()) {
    std::string data(*TensorByteSize(t.dtype, t.shape), t.name[0]);
    ASSERT_OK(w->Write(t.name, data));
  }
  ASSERT_OK(w->Finish());
  std::string index = ReadAll(dir.Join("model.safetensors.index.json"));
  auto expected = nlohmann::json::parse(R"({"metadata":{"total_size":72},"weight_map":{
      "a":"model-00001-of-00003.safetensors","b":"model-00001-of-00003.safetensors",
      "big":"model-00002-of-00003.safetensors","c":"model-00003-of-00003.safetensors",
      "d":"model-00003-of-00003.safetensors"}})");
  EXPECT_EQ(index, expected.dump(2) + "\n");  // indent 2, sorted keys, trailing newline
  ASSERT_OK_AND_ASSIGN(auto ckpt, SafetensorsCheckpoint::Open(dir.path()));
  EXPECT_EQ(ckpt->num_tensors(), 5u);
  EXPECT_EQ(ckpt->Get("big")->bytes(), std::string(40, 'b'));
}

TEST(ShardedSafetensorsWriterTest, SingleShardHasNoIndex) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto w, ShardedSafetensorsWriter::Create(dir.path(), {{"a", DType::kU8, {2}}}));
  ASSERT_OK(w->Write("a", "xy"));
  ASSERT_OK(w->Finish());
  EXPECT_TRUE(std::filesystem::exists(dir.Join("model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("model.safetensors.index.json")));
}

TEST(ShardedSafetensorsWriterTest, IncompleteShardIsNotPublished) {
  TempDir dir;
  ShardingOptions opts;
  opts.max_shard_bytes = 4;
  ASSERT_OK_AND_ASSIGN(auto w, ShardedSafetensorsWriter::Create(
                                   dir.path(), {{"a", DType::kU8, {4}}, {"b", DType::kU8, {4}}}, {},
                                   opts));
  ASSERT_OK(w->Write("a", "ab"));
  EXPECT_THAT(w->Write("b", "abcd"), StatusIs(absl::StatusCode::kFailedPrecondition, "'a' has 2 of 4"));
}

}  // namespace
}  // namespace moec::storage
