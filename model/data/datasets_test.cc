// Text loading and the three windowing protocols, with a character-level tokenizer built here:
// <s>=0, </s>=1, 'a'..'j' = 2..11, ' ' = 12, '\n' = 13, and BOS added by tokenizer_config.json,
// so every expected id below can be read off the text.
#include "model/data/datasets.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::model {
namespace {

using ::moec::testing::IsOkAndHolds;
using ::moec::testing::StatusIs;
using ::nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<Tokenizer> CharTokenizer(bool with_bos = true) {
  json vocab = {{"<s>", 0}, {"</s>", 1}, {" ", 12}, {"\n", 13}};
  for (int i = 0; i < 10; ++i) vocab[std::string(1, static_cast<char>('a' + i))] = 2 + i;
  const json tok = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
                    {"added_tokens", json::parse(R"([
          {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true},
          {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true}])")}};
  const std::string config =
      with_bos ? R"({"add_bos_token": true, "bos_token": "<s>", "eos_token": "</s>"})" : "";
  auto t = Tokenizer::FromJson(tok.dump(), config, "test/tokenizer.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::vector<std::vector<int32_t>> Rows(const TokenWindows& w) {
  std::vector<std::vector<int32_t>> rows;
  for (int64_t i = 0; i < w.count(); ++i) rows.emplace_back(w.window(i).begin(), w.window(i).end());
  return rows;
}

TEST(DatasetsTest, TokenizerFixture) {
  auto tok = CharTokenizer();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("ab j\n"), ElementsAre(0, 2, 3, 12, 11, 13));
  EXPECT_THAT(tok->Encode("ab", false), ElementsAre(2, 3));
}

// ---------------------------------------------------------------------------------------------
// Loading.

TEST(LoadTextsTest, JsonLinesSkipsBlankLinesAndKeepsEmptyTexts) {
  moec::testing::TempDir dir;
  const std::string path = dir.WriteFile(
      "c4.jsonl",
      "{\"text\": \"ab\", \"url\": \"u\"}\r\n\n  \n{\"text\": \"\"}\n{\"text\": \"c\\nd\"}");
  EXPECT_THAT(LoadTexts(path), IsOkAndHolds(ElementsAre("ab", "", "c\nd")));
  TextFileOptions first_two;
  first_two.max_documents = 2;
  EXPECT_THAT(LoadTexts(path, first_two), IsOkAndHolds(ElementsAre("ab", "")));
}

TEST(LoadTextsTest, JsonExtensionIsSniffed) {
  moec::testing::TempDir dir;
  // allenai/c4 shards: .json holding JSON lines.
  const std::string lines = dir.WriteFile("c4-train.00000-of-01024.json", "{\"text\": \"x\"}\n");
  EXPECT_THAT(LoadTexts(lines), IsOkAndHolds(ElementsAre("x")));
  const std::string array =
      dir.WriteFile("data.json", "\xEF\xBB\xBF [\"one\", {\"text\": \"two\", \"id\": 3}]");
  EXPECT_THAT(LoadTexts(array), IsOkAndHolds(ElementsAre("one", "two")));
}

TEST(LoadTextsTest, PlainTextIsOneDocumentAndFormatCanBeForced) {
  moec::testing::TempDir dir;
  const std::string path = dir.WriteFile("wiki.test.raw", " = Title = \n\n[\"not json\"]\n");
  EXPECT_THAT(LoadTexts(path), IsOkAndHolds(ElementsAre(" = Title = \n\n[\"not json\"]\n")));
  const std::string other = dir.WriteFile("rows.data", "{\"body\": \"z\"}\n");
  EXPECT_THAT(LoadTexts(other), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("cannot infer the format from the extension "
                                                   "'.data'")));
  TextFileOptions forced;
  forced.format = TextFormat::kJsonLines;
  forced.text_field = "body";
  EXPECT_THAT(LoadTexts(other, forced), IsOkAndHolds(ElementsAre("z")));
}

TEST(LoadTextsTest, ErrorsNameFileAndLine) {
  moec::testing::TempDir dir;
  EXPECT_THAT(LoadTexts(dir.Join("missing.jsonl")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir.Join("missing.jsonl"))));
  const std::string bad = dir.WriteFile("bad.jsonl", "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n");
  EXPECT_THAT(LoadTexts(bad),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat("dataset file ", bad, " line 3: malformed JSON"))));
  const std::string no_field = dir.WriteFile("nofield.jsonl", "{\"text\": \"a\"}\n{\"txt\": 1}\n");
  EXPECT_THAT(LoadTexts(no_field),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2: no 'text' field")));
  const std::string typed = dir.WriteFile("typed.jsonl", "{\"text\": 5}\n");
  EXPECT_THAT(LoadTexts(typed), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("line 1: field 'text' is not a string")));
  const std::string array = dir.WriteFile("arr.json", "[\"a\", 7]");
  EXPECT_THAT(LoadTexts(array), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("element 1: expected a string or a JSON "
                                                   "object")));
  const std::string empty = dir.WriteFile("empty.txt", "");
  EXPECT_THAT(LoadTexts(empty),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("all 1 documents are empty")));
  const std::string blank = dir.WriteFile("blank.jsonl", "\n\n");
  EXPECT_THAT(LoadTexts(blank),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no documents")));
  const std::string deep = dir.WriteFile("deep.jsonl", std::string(100, '[') + "\n");
  EXPECT_THAT(LoadTexts(deep), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nested")));
  TextFileOptions small;
  small.max_file_bytes = 10;
  EXPECT_THAT(LoadTexts(bad, small),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("over the limit of 10")));
}

// ---------------------------------------------------------------------------------------------
// Concatenate-then-chunk.

TEST(ConcatenateAndChunkTest, JoinedWithSeparatorTailDropped) {
  auto tok = CharTokenizer();
  ASSERT_NE(tok, nullptr);
  // "abc\n\nde" -> 2 3 4 13 13 5 6 (no BOS); windows of 3, the tail [6] is dropped.
  ChunkOptions o;
  o.seqlen = 3;
  o.max_chunks = 0;
  ASSERT_OK_AND_ASSIGN(TokenWindows w, ConcatenateAndChunk({"abc", "de"}, *tok, o));
  EXPECT_EQ(w.seqlen, 3);
  EXPECT_EQ(w.count(), 2);
  EXPECT_THAT(w.tokens, ElementsAre(2, 3, 4, 13, 13, 5));
  o.max_chunks = 1;
  ASSERT_OK_AND_ASSIGN(w, ConcatenateAndChunk({"abc", "de"}, *tok, o));
  EXPECT_THAT(w.tokens, ElementsAre(2, 3, 4));
  o.max_chunks = 3;
  EXPECT_THAT(ConcatenateAndChunk({"abc", "de"}, *tok, o),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "7 tokens make 2 windows of 3 text tokens, fewer than the 3 requested"));
  o.separator = " ";
  o.max_chunks = 0;
  ASSERT_OK_AND_ASSIGN(w, ConcatenateAndChunk({"abc", "de"}, *tok, o));
  EXPECT_THAT(w.tokens, ElementsAre(2, 3, 4, 12, 5, 6));
}

TEST(ConcatenateAndChunkTest, EosBetweenDocsAndBosPerChunk) {
  auto tok = CharTokenizer();
  ASSERT_NE(tok, nullptr);
  ChunkOptions o;
  o.seqlen = 3;
  o.max_chunks = 0;
  o.eos_between_docs = true;
  // Stream: a b c </s> d e </s> = 2 3 4 1 5 6 1.
  ASSERT_OK_AND_ASSIGN(TokenWindows w, ConcatenateAndChunk({"abc", "de"}, *tok, o));
  EXPECT_THAT(Rows(w), ElementsAre(ElementsAre(2, 3, 4), ElementsAre(1, 5, 6)));
  o.bos_per_chunk = true;
  // Two stream tokens per window after BOS; the last stream token is dropped.
  ASSERT_OK_AND_ASSIGN(w, ConcatenateAndChunk({"abc", "de"}, *tok, o));
  EXPECT_THAT(Rows(w),
              ElementsAre(ElementsAre(0, 2, 3), ElementsAre(0, 4, 1), ElementsAre(0, 5, 6)));
  o.max_chunks = 2;
  ASSERT_OK_AND_ASSIGN(w, ConcatenateAndChunk({"abc", "de"}, *tok, o));
  EXPECT_THAT(Rows(w), ElementsAre(ElementsAre(0, 2, 3), ElementsAre(0, 4, 1)));
}

TEST(ConcatenateAndChunkTest, Errors) {
  auto tok = CharTokenizer();
  auto no_specials = CharTokenizer(/*with_bos=*/false);
  ASSERT_NE(tok, nullptr);
  ASSERT_NE(no_specials, nullptr);
  ChunkOptions o;
  o.seqlen = 4;
  o.max_chunks = 0;
  EXPECT_THAT(ConcatenateAndChunk({"ab"}, *tok, o),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "2 tokens make 0 windows of 4 text tokens, fewer than the 1 requested"));
  EXPECT_THAT(ConcatenateAndChunk({}, *tok, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.eos_between_docs = true;
  EXPECT_THAT(ConcatenateAndChunk({"abcdef"}, *no_specials, o),
              StatusIs(absl::StatusCode::kFailedPrecondition, "no EOS token"));
  o.seqlen = 0;
  EXPECT_THAT(ConcatenateAndChunk({"abcdef"}, *tok, o),
              StatusIs(absl::StatusCode::kInvalidArgument, "seqlen 0 < 1"));
}

// ---------------------------------------------------------------------------------------------
// Evaluation windows.

TEST(EvaluationWindowsTest, NonOverlappingWindowsOfTheJoinedText) {
  auto tok = CharTokenizer();
  ASSERT_NE(tok, nullptr);
  // "abcd\n\nef" with BOS: 0 2 3 4 5 13 13 6 7; windows of 4, the tail [7] is dropped.
  EvalWindowOptions o;
  o.seqlen = 4;
  ASSERT_OK_AND_ASSIGN(TokenWindows w, EvaluationWindows({"abcd", "ef"}, *tok, o));
  EXPECT_THAT(Rows(w), ElementsAre(ElementsAre(0, 2, 3, 4), ElementsAre(5, 13, 13, 6)));
  o.max_windows = 1;
  ASSERT_OK_AND_ASSIGN(w, EvaluationWindows({"abcd", "ef"}, *tok, o));
  EXPECT_THAT(w.tokens, ElementsAre(0, 2, 3, 4));
  o.max_windows = 0;
  o.add_special_tokens = false;
  ASSERT_OK_AND_ASSIGN(w, EvaluationWindows({"abcd", "ef"}, *tok, o));
  EXPECT_THAT(Rows(w), ElementsAre(ElementsAre(2, 3, 4, 5), ElementsAre(13, 13, 6, 7)));
  o.seqlen = 10;
  EXPECT_THAT(EvaluationWindows({"abcd", "ef"}, *tok, o),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "the text has 8 tokens, fewer than one window of 10"));
}

// ---------------------------------------------------------------------------------------------
// Random windows.

TEST(UniformBelowTest, MatchesTheStandardEngineOutput) {
  // The C++ standard fixes mt19937_64's first output for the default seed 5489:
  // 14514284786278117030.
  std::mt19937_64 rng;
  EXPECT_EQ(UniformBelow(rng, 1000), 30u);
  std::mt19937_64 rng2;
  const uint64_t n = (uint64_t{1} << 63) + 1;  // threshold 2^63 - 1: the draw is accepted
  EXPECT_EQ(UniformBelow(rng2, n), 14514284786278117030u - n);
  std::mt19937_64 rng3;
  for (int i = 0; i < 100; ++i) EXPECT_EQ(UniformBelow(rng3, 1), 0u);
}

const std::vector<std::string>& Corpus() {
  static const auto* texts =
      new std::vector<std::string>{"abcdefghij", "ab", "jihgfedcba", "aabbccddee"};
  return *texts;
}

// Every window is a slice ids[start, start + seqlen) of some text with start < n - seqlen.
void ExpectSlicesOfCorpus(const Tokenizer& tok, const TokenWindows& w) {
  for (int64_t i = 0; i < w.count(); ++i) {
    const std::vector<int32_t> row(w.window(i).begin(), w.window(i).end());
    bool found = false;
    for (const std::string& text : Corpus()) {
      const std::vector<int32_t> ids = tok.Encode(text);
      for (size_t s = 0; s + w.seqlen < ids.size() && !found; ++s) {
        found = std::equal(row.begin(), row.end(), ids.begin() + s);
      }
    }
    EXPECT_TRUE(found) << "window " << i << " is not an allowed slice";
  }
}

TEST(SampleRandomWindowsTest, DeterministicPerSeedAndSlicesOfLongTexts) {
  auto tok = CharTokenizer();
  ASSERT_NE(tok, nullptr);
  RandomWindowOptions o;
  o.seqlen = 4;
  o.samples = 8;
  o.seed = 1234;
  ASSERT_OK_AND_ASSIGN(TokenWindows a, SampleRandomWindows(Corpus(), *tok, o));
  ASSERT_OK_AND_ASSIGN(TokenWindows b, SampleRandomWindows(Corpus(), *tok, o));
  EXPECT_EQ(a.count(), 8);
  EXPECT_EQ(a.tokens, b.tokens);
  ExpectSlicesOfCorpus(*tok, a);
  o.seed = 1235;
  ASSERT_OK_AND_ASSIGN(TokenWindows c, SampleRandomWindows(Corpus(), *tok, o));
  EXPECT_NE(a.tokens, c.tokens);
  ExpectSlicesOfCorpus(*tok, c);
}

TEST(SampleRandomWindowsTest, GoldenWindowsPinTheAlgorithm) {
  // Cross-checked with an independent Python MT19937-64 replaying the documented protocol:
  // text 3 "aabbccddee" start 1, text 2 "jihgfedcba" start 5, text 0 start 0, text 2 start 1.
  auto tok = CharTokenizer();
  ASSERT_NE(tok, nullptr);
  RandomWindowOptions o;
  o.seqlen = 3;
  o.samples = 4;
  o.seed = 7;
  ASSERT_OK_AND_ASSIGN(TokenWindows w, SampleRandomWindows(Corpus(), *tok, o));
  EXPECT_THAT(Rows(w), ElementsAre(ElementsAre(2, 3, 3), ElementsAre(6, 5, 4), ElementsAre(2, 3, 4),
                                   ElementsAre(11, 10, 9)));
}

TEST(SampleRandomWindowsTest, TextsNoLongerThanSeqlenAreNeverUsed) {
  auto tok = CharTokenizer();
  ASSERT_NE(tok, nullptr);
  RandomWindowOptions o;
  o.seqlen = 11;  // "abcdefghij" has 11 tokens with BOS: not more than seqlen
  o.samples = 2;
  EXPECT_THAT(SampleRandomWindows(Corpus(), *tok, o),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "none of the 4 texts has more than seqlen = 11 tokens (the longest has "
                       "11)"));
  o.seqlen = 10;  // only start 0 is allowed: the window never reaches the last token
  ASSERT_OK_AND_ASSIGN(TokenWindows w, SampleRandomWindows({"ab", "abcdefghij"}, *tok, o));
  EXPECT_THAT(Rows(w), ElementsAre(ElementsAre(0, 2, 3, 4, 5, 6, 7, 8, 9, 10),
                                   ElementsAre(0, 2, 3, 4, 5, 6, 7, 8, 9, 10)));
  o.samples = 0;
  EXPECT_THAT(SampleRandomWindows(Corpus(), *tok, o),
              StatusIs(absl::StatusCode::kInvalidArgument, "samples 0 < 1"));
}

}  // namespace
}  // namespace moec::model
