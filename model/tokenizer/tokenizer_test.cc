// Encoding and decoding: BPE merge order, byte-level BPE, the pre-tokenizers, SentencePiece-style
// BPE and concurrent use. Tokenizer configuration, errors and loading: tokenizer_config_test.cc.
// Hand-checked vectors: every expected id below is derived in the comments from the tiny
// vocabularies built here and in tokenizer_test_util.h (no reference library is available
// offline).
#include "model/tokenizer/tokenizer.h"

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/pretokenizer.h"
#include "model/tokenizer/tokenizer_test_util.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"

namespace moec::model {
namespace {

using ::moec::testing::StatusIs;
using ::nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Runs a pre-tokenizer JSON over `text` and returns the pieces.
std::vector<std::string> PreTokenize(const json& pre_tokenizer, const std::string& text) {
  auto p = PreTokenizer::FromJson(pre_tokenizer, JsonPath{"test", "pre_tokenizer"});
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return {};
  std::vector<Piece> pieces = {Piece{text, -1, true}};
  p->Apply(&pieces);
  std::vector<std::string> out;
  for (const Piece& piece : pieces) out.push_back(piece.text);
  return out;
}

json SplitRegex(const std::string& regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", regex}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

// ---------------------------------------------------------------------------------------------
// Plain BPE (no pre-tokenizer): merge order, with PlainBpe (tokenizer_test_util.h).

TEST(TokenizerTest, MergesAppliedByRankNotLeftToRight) {
  // merges: rank 0 "b c", rank 1 "a b". "abc": candidates (a,b)@0 rank 1 and (b,c)@1 rank 0;
  // rank 0 goes first -> [a, bc] = [0, 4]; (a, bc) has no merge. Left-to-right would give [3, 2].
  auto t = MustLoad(PlainBpe(json::array({"b c", "a b"})));
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(t->Encode("abc"), ElementsAre(0, 4));
  // Swapping the ranks (pair form this time) flips the result: [ab, c] = [3, 2].
  auto t2 = MustLoad(PlainBpe(json::parse(R"([["a", "b"], ["b", "c"]])")));
  ASSERT_NE(t2, nullptr);
  EXPECT_THAT(t2->Encode("abc"), ElementsAre(3, 2));
}

TEST(TokenizerTest, EqualRanksMergeLeftmostFirst) {
  // "aaa" with merge "a a": (a,a)@0 and (a,a)@1 share rank 0; pos 0 wins -> [aa, a] = [6, 0].
  auto t = MustLoad(PlainBpe(json::array({"a a"})));
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(t->Encode("aaa"), ElementsAre(6, 0));
}

TEST(TokenizerTest, IgnoreMergesTakesWholeWordFromVocab) {
  // "abc" is in the vocab (5): with ignore_merges it is taken whole; without, merges give [0, 4].
  auto with = MustLoad(PlainBpe(json::array({"b c"}), /*ignore_merges=*/true));
  auto without = MustLoad(PlainBpe(json::array({"b c"}), /*ignore_merges=*/false));
  ASSERT_NE(with, nullptr);
  ASSERT_NE(without, nullptr);
  EXPECT_THAT(with->Encode("abc"), ElementsAre(5));
  EXPECT_THAT(without->Encode("abc"), ElementsAre(0, 4));
  // No decoder: tokens joined with spaces, as `tokenizers` does.
  EXPECT_EQ(without->Decode({0, 4}), "a bc");
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE (GPT-2 style).

TEST(ByteLevelTest, Gpt2ByteToUnicodeTable) {
  const auto& a = ByteLevelAlphabet();
  EXPECT_EQ(a['A'], "A");
  EXPECT_EQ(a[' '], "\xC4\xA0");   // U+0120 'Ġ' (0x20 is the 33rd non-printable byte: 256+32)
  EXPECT_EQ(a['\n'], "\xC4\x8A");  // U+010A 'Ċ' (256+10)
  EXPECT_EQ(a[0x00], "\xC4\x80");  // U+0100 'Ā'
  EXPECT_EQ(a[0xAD], "\xC5\x83");  // U+0143 'Ń': soft hyphen is the 68th remapped byte (256+67)
  EXPECT_EQ(a[0xC3], "\xC3\x83");  // 'Ã' maps to itself
  // "é" is C3 A9 -> "Ã©".
  EXPECT_EQ(ByteLevelEncode("\xC3\xA9"), "\xC3\x83\xC2\xA9");
}

// Vocabulary: id b (0..255) = the byte-level character of byte b, so unmerged text encodes to
// its UTF-8 bytes. Then 256 "Ġw", 257 "or", 258 "Ġwor", 259 "ld", 260 "Ġworld", 261 "Ã©";
// added tokens 262 "<|endoftext|>" (special), 263 "<mask>" (lstrip, not special).
// Merge ranks: 0 "o r", 1 "Ġ w", 2 "l d", 3 "Ġw or", 4 "Ġwor ld", 5 "Ã ©".
json Gpt2Tokenizer(const json& pre_tokenizer) {
  json vocab = json::object();
  const auto& a = ByteLevelAlphabet();
  for (int b = 0; b < 256; ++b) vocab[a[b]] = b;
  const std::string G = a[' '];
  vocab[G + "w"] = 256;
  vocab["or"] = 257;
  vocab[G + "wor"] = 258;
  vocab["ld"] = 259;
  vocab[G + "world"] = 260;
  vocab["\xC3\x83\xC2\xA9"] = 261;
  vocab["<|endoftext|>"] = 262;
  vocab["<mask>"] = 263;
  json merges =
      json::array({"o r", G + " w", "l d", G + "w or", G + "wor ld", "\xC3\x83 \xC2\xA9"});
  return {{"version", "1.0"},
          {"added_tokens", json::parse(R"([
             {"id": 262, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
              "rstrip": false, "normalized": false, "special": true},
             {"id": 263, "content": "<mask>", "single_word": false, "lstrip": true,
              "rstrip": false, "normalized": false, "special": false}])")},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor",
           {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

json ByteLevelPre(bool add_prefix_space = false) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"trim_offsets", true},
          {"use_regex", true}};
}

TEST(ByteLevelTest, EncodesWordsThroughMerges) {
  auto t = MustLoad(Gpt2Tokenizer(ByteLevelPre()));
  ASSERT_NE(t, nullptr);
  // "Hello world" -> pieces "Hello", " world" -> "Hello", "Ġworld". "Hello": no applicable
  // merge -> bytes 72 101 108 108 111. "Ġworld": o+r (r0), Ġ+w (r1), l+d (r2), Ġw+or (r3),
  // Ġwor+ld (r4) -> 260.
  EXPECT_THAT(t->Encode("Hello world"), ElementsAre(72, 101, 108, 108, 111, 260));
  EXPECT_EQ(t->Decode({72, 101, 108, 108, 111, 260}), "Hello world");
  EXPECT_EQ(t->vocab_size(), 264);
  EXPECT_EQ(t->TokenToId(ByteLevelAlphabet()[' '] + "world"), 260);
  EXPECT_EQ(t->IdToToken(262), "<|endoftext|>");
  EXPECT_EQ(t->IdToToken(9999), std::nullopt);
  EXPECT_EQ(t->bos_id(), std::nullopt);
}

TEST(ByteLevelTest, NonAsciiBecomesByteTokens) {
  auto t = MustLoad(Gpt2Tokenizer(ByteLevelPre()));
  ASSERT_NE(t, nullptr);
  // "é" = C3 A9 -> "Ã©" -> merge rank 5 -> 261. "€" = E2 82 AC has no merges -> 226 130 172.
  EXPECT_THAT(t->Encode("\xC3\xA9"), ElementsAre(261));
  EXPECT_THAT(t->Encode("\xE2\x82\xAC"), ElementsAre(226, 130, 172));
  EXPECT_EQ(t->Decode({226, 130, 172}), "\xE2\x82\xAC");
  // A truncated sequence decodes to one U+FFFD (from_utf8_lossy).
  EXPECT_EQ(t->Decode({226, 130}), "\xEF\xBF\xBD");
}

TEST(ByteLevelTest, AddPrefixSpace) {
  auto t = MustLoad(Gpt2Tokenizer(ByteLevelPre(/*add_prefix_space=*/true)));
  ASSERT_NE(t, nullptr);
  // "world" -> " world" -> "Ġworld" -> 260.
  EXPECT_THAT(t->Encode("world"), ElementsAre(260));
}

TEST(ByteLevelTest, SpecialTokenSplitOutOfTheMiddle) {
  auto t = MustLoad(Gpt2Tokenizer(ByteLevelPre()));
  ASSERT_NE(t, nullptr);
  // "Hello" | <|endoftext|> | " world": the added token is never byte-level split.
  const std::vector<int32_t> ids = t->Encode("Hello<|endoftext|> world");
  EXPECT_THAT(ids, ElementsAre(72, 101, 108, 108, 111, 262, 260));
  EXPECT_EQ(t->Decode(ids), "Hello<|endoftext|> world");
  EXPECT_EQ(t->Decode(ids, /*skip_special_tokens=*/true), "Hello world");
  // Longest match: "<|endoftext|" alone is no token, so it is plain text: '<' 60, '|' 124 ...
  EXPECT_THAT(t->Encode("<|e"), ElementsAre(60, 124, 101));
}

TEST(ByteLevelTest, LstripAddedTokenAbsorbsSpaceBefore) {
  auto t = MustLoad(Gpt2Tokenizer(ByteLevelPre()));
  ASSERT_NE(t, nullptr);
  // "<mask>" has lstrip: the space before it joins the token instead of becoming 'Ġ' (32).
  EXPECT_THAT(t->Encode("Hello <mask>"), ElementsAre(72, 101, 108, 108, 111, 263));
  // <mask> is not special, so skip_special_tokens keeps it.
  EXPECT_EQ(t->Decode({111, 263}, /*skip_special_tokens=*/true), "o<mask>");
}

TEST(ByteLevelTest, RoundTripDecodeEqualsInput) {
  auto t = MustLoad(Gpt2Tokenizer(ByteLevelPre()));
  ASSERT_NE(t, nullptr);
  for (const std::string text :
       {"Hello world",
        "Gr\xC3\xBC\xC3\x9F"
        "e, \xE4\xB8\x96\xE7\x95\x8C! 123 \t\n end  ",
        "  leading and trailing  \n\n", "emoji \xF0\x9F\x98\x80 and <|endoftext|> too", ""}) {
    EXPECT_EQ(t->Decode(t->Encode(text)), text);
  }
}

TEST(PreTokenizerTest, Gpt2RegexSplitting) {
  const json pre = SplitRegex(std::string(kGpt2Pattern));
  // Letters, punctuation runs, " ?\p{N}+", and \s+(?!\S): of the two spaces before "foo" one
  // stays alone and one joins " foo"; trailing whitespace stays together.
  EXPECT_THAT(PreTokenize(pre, "Hello, world!! 123abc  foo   "),
              ElementsAre("Hello", ",", " world", "!!", " 123", "abc", " ", " foo", "   "));
  // Contractions are case-sensitive alternatives; an apostrophe elsewhere is punctuation.
  EXPECT_THAT(PreTokenize(pre, "don't we'll 'x I'M"),
              ElementsAre("don", "'t", " we", "'ll", " '", "x", " I", "'", "M"));
  // Unicode classes: letters (é, 日本), No (²) counts as a number.
  EXPECT_THAT(PreTokenize(pre, "h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC x\xC2\xB2"),
              ElementsAre("h\xC3\xA9llo", " \xE6\x97\xA5\xE6\x9C\xAC", " x", "\xC2\xB2"));
  // The ByteLevel pre-tokenizer uses the same regex, then maps bytes (' ' -> 'Ġ').
  const std::string G = ByteLevelAlphabet()[' '];
  EXPECT_THAT(PreTokenize(ByteLevelPre(), "a  b "), ElementsAre("a", G, G + "b", G));
}

TEST(PreTokenizerTest, Llama3RegexSplitting) {
  const json pre = SplitRegex(std::string(kLlama3Pattern));
  // Digits in groups of three; "\s*[\r\n]+" keeps newline runs; (?i) contractions; the space
  // before a word joins it; two spaces before "x": one alone, one joins " x".
  EXPECT_THAT(PreTokenize(pre, "Hello world 1234567\n\nI'M ok\r\n  x  "),
              ElementsAre("Hello", " world", " ", "123", "456", "7", "\n\n", "I", "'M", " ok",
                          "\r\n", " ", " x", "  "));
  // Punctuation takes trailing newlines; any non-letter/number/newline may lead a word.
  EXPECT_THAT(PreTokenize(pre, "x!!\n\ny (hello a(b"),
              ElementsAre("x", "!!\n\n", "y", " (", "hello", " a", "(b"));
  // Qwen2's variant splits digits one by one.
  EXPECT_THAT(PreTokenize(SplitRegex(std::string(kQwen2Pattern)), "x 1234"),
              ElementsAre("x", " ", "1", "2", "3", "4"));
}

TEST(PreTokenizerTest, DigitsAloneAndSequenceWithByteLevel) {
  EXPECT_THAT(PreTokenize(SplitRegex(R"(\p{N}{1,3})"), "abc12345"),
              ElementsAre("abc", "123", "45"));
  // DeepSeek/Qwen-style Sequence[Split, ByteLevel(use_regex=false)]: no second split.
  const json seq = {{"type", "Sequence"},
                    {"pretokenizers", json::array({SplitRegex(std::string(kLlama3Pattern)),
                                                   {{"type", "ByteLevel"},
                                                    {"add_prefix_space", false},
                                                    {"trim_offsets", false},
                                                    {"use_regex", false}}})}};
  const std::string G = ByteLevelAlphabet()[' '];
  EXPECT_THAT(PreTokenize(seq, "hi 12345"), ElementsAre("hi", G, "123", "45"));
}

TEST(PreTokenizerTest, UnknownRegexIsUnimplementedAndNamed) {
  auto p = PreTokenizer::FromJson(SplitRegex(R"(\w+|[^\w\s]+)"), JsonPath{"f.json", "pre"});
  EXPECT_THAT(p.status(), StatusIs(absl::StatusCode::kUnimplemented, HasSubstr(R"(\w+|[^\w\s]+)")));
}

// ---------------------------------------------------------------------------------------------
// SentencePiece-style BPE (Llama / Mixtral), with LlamaTokenizer (tokenizer_test_util.h).

TEST(SentencePieceTest, PrefixAndByteFallback) {
  auto t = MustLoad(LlamaTokenizer());
  ASSERT_NE(t, nullptr);
  // "hi €" -> normalized "▁hi▁€" -> ▁ h i ▁ € ; € is not in the vocab -> bytes E2 82 AC ->
  // ids 3+0xE2=229, 3+0x82=133, 3+0xAC=175. Merges: ▁+h (r0) then ▁h+i (r1) -> 263.
  // The template adds <s> (1).
  const std::vector<int32_t> ids = t->Encode("hi \xE2\x82\xAC");
  EXPECT_THAT(ids, ElementsAre(1, 263, 259, 229, 133, 175));
  EXPECT_THAT(t->Encode("hi \xE2\x82\xAC", /*add_special_tokens=*/false),
              ElementsAre(263, 259, 229, 133, 175));
  // Replace ▁ -> ' ', fuse the byte tokens into "€", strip the one leading space.
  EXPECT_EQ(t->Decode(ids, /*skip_special_tokens=*/true), "hi \xE2\x82\xAC");
  EXPECT_EQ(t->Decode(ids), "<s> hi \xE2\x82\xAC");
  EXPECT_EQ(t->IdToToken(229), "<0xE2>");
}

TEST(SentencePieceTest, UnknownCharactersFuseIntoOneUnk) {
  auto t = MustLoad(LlamaTokenizer(/*byte_fallback=*/false));
  ASSERT_NE(t, nullptr);
  // "h€€" -> "▁h€€": ▁+h -> 262; the two € are unknown and fuse_unk joins them: [262, 0].
  EXPECT_THAT(t->Encode("h\xE2\x82\xAC\xE2\x82\xAC", false), ElementsAre(262, 0));
}

TEST(SentencePieceTest, SpecialTokenInTheMiddleAndPerPieceNormalization) {
  auto t = MustLoad(LlamaTokenizer());
  ASSERT_NE(t, nullptr);
  // Added tokens are split out before normalization, so each side gets its own "▁" prefix:
  // "hi" | </s> | "hi" -> [<s>, ▁hi, </s>, ▁hi].
  const std::vector<int32_t> ids = t->Encode("hi</s>hi");
  EXPECT_THAT(ids, ElementsAre(1, 263, 2, 263));
  EXPECT_EQ(t->Decode(ids, /*skip_special_tokens=*/true), "hi hi");
}

TEST(SentencePieceTest, RoundTripDecodeEqualsInput) {
  auto t = MustLoad(LlamaTokenizer());
  ASSERT_NE(t, nullptr);
  for (const std::string text :
       {"hi", "hi wh ih", "\xE2\x82\xAC\xF0\x9F\x98\x80 x  y\n", "caf\xC3\xA9 w"}) {
    EXPECT_EQ(t->Decode(t->Encode(text), /*skip_special_tokens=*/true), text);
  }
}

// Mistral / newer Llama layout: Metaspace pre-tokenizer and decoder.
json MetaspaceTokenizer(const std::string& scheme) {
  json pre = {{"type", "Metaspace"},
              {"replacement", "\xE2\x96\x81"},
              {"prepend_scheme", scheme},
              {"split", true}};
  json dec = {{"type", "Metaspace"},
              {"replacement", "\xE2\x96\x81"},
              {"prepend_scheme", scheme},
              {"split", true}};
  return {{"added_tokens", json::parse(kLlamaAddedTokens)},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre},
          {"post_processor", nullptr},
          {"decoder", dec},
          {"model", LlamaModel(true)}};
}

TEST(SentencePieceTest, MetaspacePrependSchemes) {
  auto first = MustLoad(MetaspaceTokenizer("first"));
  auto always = MustLoad(MetaspaceTokenizer("always"));
  ASSERT_NE(first, nullptr);
  ASSERT_NE(always, nullptr);
  // "hi hi" -> "▁hi▁hi" -> split before each ▁ -> "▁hi", "▁hi" -> [263, 263].
  EXPECT_THAT(first->Encode("hi hi"), ElementsAre(263, 263));
  EXPECT_EQ(first->Decode({263, 263}), "hi hi");
  // After a leading added token, "first" does not prepend (the piece is not at offset 0):
  // "hi" -> h, i (no ▁ merges) = [260, 261]; "always" prepends: "▁hi" = 263.
  EXPECT_THAT(first->Encode("<s>hi"), ElementsAre(1, 260, 261));
  EXPECT_THAT(always->Encode("<s>hi"), ElementsAre(1, 263));
}

TEST(TokenizerThreadTest, ConcurrentEncodeAgrees) {
  auto t = MustLoad(Gpt2Tokenizer(ByteLevelPre()));
  ASSERT_NE(t, nullptr);
  const std::string text = "Hello world, hello <|endoftext|> world \xC3\xA9 123 ";
  const std::vector<int32_t> expected = t->Encode(text);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) mismatches[k] += t->Encode(text) != expected;
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

}  // namespace
}  // namespace moec::model
