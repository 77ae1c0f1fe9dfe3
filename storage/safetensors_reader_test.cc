#include "storage/safetensors_reader.h"

#include <cstring>
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/safetensors_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::storage {
namespace {

using ::moec::storage::testing::RawSafetensors;
using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string F32Bytes(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

class SafetensorsReaderTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenRaw(const std::string& header,
                                                           const std::string& data,
                                                           SafetensorsReadOptions opts = {}) {
    return SafetensorsFile::Open(dir_.WriteFile("t.safetensors", RawSafetensors(header, data)),
                                 opts);
  }
  // Expects DataLoss whose message names the file and contains `what`.
  void ExpectBad(const std::string& header, const std::string& data, const std::string& what) {
    EXPECT_THAT(OpenRaw(header, data),
                StatusIs(absl::StatusCode::kDataLoss,
                         AllOf(HasSubstr("t.safetensors"), HasSubstr(what))))
        << header;
  }
  TempDir dir_;
};

TEST_F(SafetensorsReaderTest, ReadsTensorsZeroCopy) {
  std::string data = F32Bytes({1, 2, 3, 4}) + std::string("\x05\x00\x00\x00\x00\x00\x00\x00", 8);
  ASSERT_OK_AND_ASSIGN(
      auto f, OpenRaw(R"({"__metadata__":{"format":"pt"},)"
                      R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                      R"("n":{"dtype":"I64","shape":[],"data_offsets":[16,24]}}  )",
                      data));
  ASSERT_OK_AND_ASSIGN(TensorView w, f->Get("w"));
  EXPECT_EQ(w.dtype, DType::kF32);
  EXPECT_THAT(w.shape, ElementsAre(2, 2));
  ASSERT_EQ(w.size, 16u);
  float v[4];
  std::memcpy(v, w.data, 16);
  EXPECT_EQ(v[3], 4.0f);
  ASSERT_OK_AND_ASSIGN(TensorView n, f->Get("n"));
  EXPECT_TRUE(n.shape.empty());
  EXPECT_EQ(n.data[0], 5);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->tensors().size(), 2u);
  EXPECT_THAT(f->Get("missing"), StatusIs(absl::StatusCode::kNotFound, "missing"));
}

TEST_F(SafetensorsReaderTest, AcceptsEveryDtype) {
  for (const char* dt : {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
                         "F8_E4M3", "F8_E5M2"}) {
    int bytes = DTypeBits(*ParseDType(dt)) / 8;
    std::string header = std::string(R"({"x":{"dtype":")") + dt +
                         R"(","shape":[3],"data_offsets":[0,)" + std::to_string(3 * bytes) + "]}}";
    ASSERT_OK_AND_ASSIGN(auto f, OpenRaw(header, std::string(3 * bytes, '\1')));
    EXPECT_EQ(DTypeName(f->tensors()[0].dtype), dt);
  }
}

TEST_F(SafetensorsReaderTest, RejectsShortFileAndBadHeaderLength) {
  std::string path = dir_.WriteFile("t.safetensors", "abc");
  EXPECT_THAT(SafetensorsFile::Open(path), StatusIs(absl::StatusCode::kDataLoss, "too short"));
  std::string huge(8, '\0');
  huge[5] = 1;  // 2^40
  path = dir_.WriteFile("t.safetensors", huge + "{}");
  EXPECT_THAT(SafetensorsFile::Open(path), StatusIs(absl::StatusCode::kDataLoss, "exceeds"));
  std::string past = RawSafetensors("{}", "");
  past[0] = 100;
  path = dir_.WriteFile("t.safetensors", past);
  EXPECT_THAT(SafetensorsFile::Open(path), StatusIs(absl::StatusCode::kDataLoss, "past the end"));
  SafetensorsReadOptions small;
  small.max_header_bytes = 4;
  EXPECT_THAT(OpenRaw(R"({"a":1})", "", small), StatusIs(absl::StatusCode::kDataLoss, "exceeds"));
}

TEST_F(SafetensorsReaderTest, RejectsMalformedJson) {
  ExpectBad(R"({"w":{"dtype":"F32")", "", "not valid JSON");
  ExpectBad(R"([1,2])", "", "start with '{'");
  ExpectBad(R"({"w":[[[[[[[[1]]]]]]]]})", "", "nested too deeply");
  ExpectBad(R"({"w":5})", "", "'w': entry is not an object");
  ExpectBad(R"({"__metadata__":{"a":1}})", "", "__metadata__ value for 'a'");
  std::string d(8, '\0');
  ExpectBad(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            d, "duplicate key 'w'");
}

TEST_F(SafetensorsReaderTest, RejectsBadEntries) {
  std::string d(16, '\0');
  ExpectBad(R"({"w":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}})", d,
            "tensor 'w': unknown dtype 'F33'");
  ExpectBad(R"({"w":{"shape":[4],"data_offsets":[0,16]}})", d, "'w': missing string field 'dtype'");
  ExpectBad(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", d, "non-negative");
  ExpectBad(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", d, "data_offsets");
  ExpectBad(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", d,
            "shape x dtype is 12 bytes");
  ExpectBad(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})", d,
            "overflow");
  ExpectBad(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", d, "inverted");
}

TEST_F(SafetensorsReaderTest, RejectsBadLayout) {
  std::string d(16, '\0');
  ExpectBad(R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", d,
            "beyond the data section");
  ExpectBad(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            d, "'b': data_offsets [8, 16] overlap");
  ExpectBad(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            d, "gap");
  ExpectBad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d, "cover 8 bytes");
}

TEST_F(SafetensorsReaderTest, UnorderedHeaderEntriesAreSortedByOffset) {
  std::string d = F32Bytes({1, 2});
  ASSERT_OK_AND_ASSIGN(auto f, OpenRaw(R"({"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                       R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                       d));
  EXPECT_EQ(f->tensors()[0].name, "z");
  ASSERT_OK_AND_ASSIGN(TensorView a, f->Get("a"));
  float v;
  std::memcpy(&v, a.data, 4);
  EXPECT_EQ(v, 2.0f);
}

class SafetensorsCheckpointTest : public ::testing::Test {
 protected:
  void WriteShard(const std::string& name, const std::string& tensor, float value) {
    dir_.WriteFile(name, RawSafetensors(std::string(R"({")") + tensor +
                                            R"(":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                        F32Bytes({value})));
  }
  TempDir dir_;
};

TEST_F(SafetensorsCheckpointTest, OpensShardedIndex) {
  WriteShard("model-00001-of-00002.safetensors", "a", 1);
  WriteShard("model-00002-of-00002.safetensors", "b", 2);
  dir_.WriteFile("model.safetensors.index.json",
                 R"({"metadata":{"total_size":8},"weight_map":{)"
                 R"("a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  ASSERT_OK_AND_ASSIGN(auto ckpt, SafetensorsCheckpoint::Open(dir_.path()));
  EXPECT_THAT(ckpt->TensorNames(), ElementsAre("a", "b"));
  EXPECT_EQ(ckpt->shards().size(), 2u);
  EXPECT_EQ(ckpt->total_tensor_bytes(), 8u);
  ASSERT_OK_AND_ASSIGN(TensorView b, ckpt->Get("b"));
  float v;
  std::memcpy(&v, b.data, 4);
  EXPECT_EQ(v, 2.0f);
  EXPECT_THAT(ckpt->Get("c"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SafetensorsCheckpointTest, OpensSingleFileDirectory) {
  WriteShard("model.safetensors", "w", 3);
  ASSERT_OK_AND_ASSIGN(auto ckpt, SafetensorsCheckpoint::Open(dir_.path()));
  EXPECT_THAT(ckpt->TensorNames(), ElementsAre("w"));
}

TEST_F(SafetensorsCheckpointTest, RejectsBrokenIndexes) {
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kNotFound, "no model.safetensors"));
  WriteShard("s1.safetensors", "a", 1);
  dir_.WriteFile("model.safetensors.index.json", R"({"weight_map":{"a":"missing.safetensors"}})");
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr("index.json"), HasSubstr("missing.safetensors"))));
  dir_.WriteFile("model.safetensors.index.json", R"({"weight_map":{"zz":"s1.safetensors"}})");
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kDataLoss, "tensor 'zz' to s1.safetensors"));
  dir_.WriteFile("model.safetensors.index.json", R"({"weight_map":{"a":"../s1.safetensors"}})");
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, "not a file name"));
  dir_.WriteFile("model.safetensors.index.json", R"({"weight_map":[1]})");
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kDataLoss, "weight_map"));
  dir_.WriteFile("model.safetensors.index.json", "{nope");
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kDataLoss, "not a JSON object"));
  dir_.WriteFile("bad.safetensors", "12345678");
  dir_.WriteFile("model.safetensors.index.json", R"({"weight_map":{"a":"bad.safetensors"}})");
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kDataLoss, "bad.safetensors"));
}

}  // namespace
}  // namespace moec::storage
