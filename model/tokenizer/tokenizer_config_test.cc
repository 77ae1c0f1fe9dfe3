// Tokenizer configuration, errors and loading: BOS / EOS from tokenizer_config.json, the errors
// of malformed or unsupported files, and Tokenizer::Load from disk. Encoding and decoding:
// tokenizer_test.cc.
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_test_util.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"

namespace moec::model {
namespace {

using ::moec::testing::StatusIs;
using ::nlohmann::json;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// BOS / EOS from tokenizer_config.json.

TEST(TokenizerConfigTest, BosAndEosFromConfig) {
  json tok = LlamaTokenizer();
  tok["post_processor"] = nullptr;
  auto t = MustLoad(tok, R"({"add_bos_token": true, "add_eos_token": true, "bos_token": "<s>",
      "eos_token": {"__type": "AddedToken", "content": "</s>", "special": true}})");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  EXPECT_THAT(t->Encode("hi"), ElementsAre(1, 263, 2));
  EXPECT_THAT(t->Encode("hi", /*add_special_tokens=*/false), ElementsAre(263));
  // An explicit add_bos_token=false overrides the template's <s>.
  auto no_bos = MustLoad(LlamaTokenizer(), R"({"add_bos_token": false, "bos_token": "<s>"})");
  ASSERT_NE(no_bos, nullptr);
  EXPECT_THAT(no_bos->Encode("hi"), ElementsAre(263));
  // Without flags the template stays.
  auto keep = MustLoad(LlamaTokenizer(), R"({"bos_token": "<s>", "eos_token": "</s>"})");
  ASSERT_NE(keep, nullptr);
  EXPECT_THAT(keep->Encode("hi"), ElementsAre(1, 263));
}

TEST(TokenizerConfigTest, UnknownBosTokenIsInvalid) {
  auto t =
      Tokenizer::FromJson(LlamaTokenizer().dump(), R"({"bos_token": "<bos>"})", "m/tokenizer.json");
  EXPECT_THAT(t.status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("tokenizer_config.json"), HasSubstr("bos_token"))));
}

// ---------------------------------------------------------------------------------------------
// Errors and loading.

TEST(TokenizerErrorTest, UnigramIsUnimplemented) {
  const json tok = {{"model",
                     {{"type", "Unigram"},
                      {"unk_id", 0},
                      {"vocab", json::parse(R"([["<unk>", 0.0], ["a", -1.0]])")}}}};
  auto t = Tokenizer::FromJson(tok.dump(), "", "u/tokenizer.json");
  EXPECT_THAT(t.status(), StatusIs(absl::StatusCode::kUnimplemented,
                                   AllOf(HasSubstr("Unigram"), HasSubstr("supported: BPE"))));
}

TEST(TokenizerErrorTest, MalformedJsonIsInvalidArgument) {
  EXPECT_THAT(Tokenizer::FromJson("{\"model\": {", "", "bad/tokenizer.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("bad/tokenizer.json"), HasSubstr("malformed JSON"))));
  EXPECT_THAT(
      Tokenizer::FromJson(std::string(10000, '[') + std::string(10000, ']'), "", "deep").status(),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nested")));
  EXPECT_THAT(Tokenizer::FromJson(LlamaTokenizer().dump(), "{oops", "m/tokenizer.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokenizer_config.json")));
}

TEST(TokenizerErrorTest, MissingOrMistypedFieldsNameTheField) {
  json no_vocab = PlainBpe(json::array());
  no_vocab["model"].erase("vocab");
  EXPECT_THAT(Tokenizer::FromJson(no_vocab.dump(), "", "f.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("f.json"), HasSubstr("'model.vocab'"))));
  EXPECT_THAT(Tokenizer::FromJson(R"({"version": "1.0"})", "", "f.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'model'")));
  // A merge whose result is not in the vocab.
  EXPECT_THAT(Tokenizer::FromJson(PlainBpe(json::array({"c a"})).dump(), "", "f.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("'model.merges[0]'"), HasSubstr("'ca'"))));
  json bad_id = PlainBpe(json::array());
  bad_id["model"]["vocab"]["a"] = "zero";
  EXPECT_THAT(Tokenizer::FromJson(bad_id.dump(), "", "f.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.vocab.a")));
}

TEST(TokenizerErrorTest, UnsupportedComponentsAreUnimplemented) {
  json wordpiece = PlainBpe(json::array());
  wordpiece["model"]["type"] = "WordPiece";
  EXPECT_THAT(Tokenizer::FromJson(wordpiece.dump(), "", "f.json").status(),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("WordPiece")));
  json lower = PlainBpe(json::array());
  lower["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(Tokenizer::FromJson(lower.dump(), "", "f.json").status(),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("Lowercase")));
}

class TokenizerLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);  // best effort; the oversized test file is sparse
  }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  std::filesystem::path dir_;
};

TEST_F(TokenizerLoadTest, LoadsDirectoryWithConfig) {
  json tok = LlamaTokenizer();
  tok["post_processor"] = nullptr;
  Write("tokenizer.json", tok.dump());
  Write("tokenizer_config.json", R"({"add_bos_token": true, "bos_token": "<s>"})");
  auto t = Tokenizer::Load(dir_.string());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT((*t)->Encode("hi"), ElementsAre(1, 263));
  auto by_file = Tokenizer::Load((dir_ / "tokenizer.json").string());
  ASSERT_TRUE(by_file.ok()) << by_file.status();
  EXPECT_THAT((*by_file)->Encode("hi"), ElementsAre(1, 263));
}

TEST_F(TokenizerLoadTest, MissingFileIsNotFound) {
  EXPECT_THAT(Tokenizer::Load(dir_.string()).status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tokenizer.json")));
  EXPECT_THAT(Tokenizer::Load((dir_ / "nope" / "tokenizer.json").string()).status(),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(TokenizerLoadTest, OversizedFileIsRefused) {
  Write("tokenizer.json", "{}");
  std::filesystem::resize_file(dir_ / "tokenizer.json", kMaxTokenizerJsonBytes + 1);  // sparse
  EXPECT_THAT(Tokenizer::Load(dir_.string()).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("over the limit")));
}

}  // namespace
}  // namespace moec::model
