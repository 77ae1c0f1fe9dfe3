#include "tools/bpe_trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::tools {

using model::JsonPath;
using model::Piece;
using model::PreTokenizer;
using model::Tokenizer;

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using nlohmann::json;

namespace {

constexpr const char* kSpace = "\xC4\xA0";  // "Ġ", ByteLevel's stand-in for ' '

json Train(const std::vector<std::string>& texts, const BpeTrainerOptions& o) {
  absl::StatusOr<std::string> text = TrainByteLevelBpe(texts, o);
  EXPECT_TRUE(text.ok()) << text.status();
  if (!text.ok()) return json();
  return json::parse(*text);
}

std::vector<std::string> Merges(const json& tok) {
  return tok.at("model").at("merges").get<std::vector<std::string>>();
}

std::unique_ptr<Tokenizer> Load(const std::vector<std::string>& texts, const BpeTrainerOptions& o) {
  absl::StatusOr<std::string> text = TrainByteLevelBpe(texts, o);
  EXPECT_TRUE(text.ok()) << text.status();
  if (!text.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      Tokenizer::FromJson(*text, BpeTokenizerConfigJson(o), "trained tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

// Worked by hand. Words: "aaab" x1, "Ġaaab" x2, "abab" x1.
//   counts: (a,a)=2+4=6  (a,b)=1+2+2=5  (Ġ,a)=2  (b,a)=1            -> merge "a a"   (6)
//   words: [aa,a,b] [Ġ,aa,a,b]x2 [a,b,a,b]
//   counts: (a,b)=1+2+2=5  (aa,a)=1+2=3  (Ġ,aa)=2  (b,a)=1            -> merge "a b"   (5)
//   words: [aa,ab] [Ġ,aa,ab]x2 [ab,ab]
//   counts: (aa,ab)=1+2=3  (Ġ,aa)=2  (ab,ab)=1                       -> merge "aa ab" (3)
//   counts: (Ġ,aaab)=2  (ab,ab)=1                                    -> merge "Ġ aaab" (2)
//   counts: (ab,ab)=1 < min_frequency 2                              -> stop
TEST(BpeTrainerTest, HandCheckedMerges) {
  BpeTrainerOptions o;
  const json tok = Train({"aaab aaab aaab", "abab"}, o);
  const std::string g = kSpace;
  EXPECT_THAT(Merges(tok), ElementsAre("a a", "a b", "aa ab", g + " aaab"));
  const json& vocab = tok.at("model").at("vocab");
  EXPECT_EQ(vocab.size(), 260u);
  EXPECT_EQ(vocab.at("a").get<int>(), 'a');
  EXPECT_EQ(vocab.at(g).get<int>(), ' ');
  EXPECT_EQ(vocab.at("aa").get<int>(), 256);
  EXPECT_EQ(vocab.at("ab").get<int>(), 257);
  EXPECT_EQ(vocab.at("aaab").get<int>(), 258);
  EXPECT_EQ(vocab.at(g + "aaab").get<int>(), 259);
  // Special tokens follow the learned tokens, in option order.
  ASSERT_EQ(tok.at("added_tokens").size(), 2u);
  EXPECT_EQ(tok.at("added_tokens")[0].at("content"), "<|bos|>");
  EXPECT_EQ(tok.at("added_tokens")[0].at("id"), 260);
  EXPECT_EQ(tok.at("added_tokens")[0].at("special"), true);
  EXPECT_EQ(tok.at("added_tokens")[1].at("content"), "<|eos|>");
  EXPECT_EQ(tok.at("added_tokens")[1].at("id"), 261);
  EXPECT_EQ(tok.at("pre_tokenizer").at("type"), "ByteLevel");
  EXPECT_EQ(tok.at("pre_tokenizer").at("add_prefix_space"), false);
  EXPECT_EQ(tok.at("pre_tokenizer").at("use_regex"), true);
  EXPECT_EQ(tok.at("decoder").at("type"), "ByteLevel");
  EXPECT_EQ(tok.at("model").at("type"), "BPE");

  // min_frequency 1 also takes the last pair.
  o.min_frequency = 1;
  EXPECT_THAT(Merges(Train({"aaab aaab aaab", "abab"}, o)),
              ElementsAre("a a", "a b", "aa ab", g + " aaab", "ab ab"));
  // vocab_size caps the merges: 256 bytes + 2 merges + 2 special tokens.
  o.vocab_size = 260;
  EXPECT_THAT(Merges(Train({"aaab aaab aaab", "abab"}, o)), ElementsAre("a a", "a b"));
}

TEST(BpeTrainerTest, TiesBreakBySmallerLeftThenRightString) {
  BpeTrainerOptions o;
  o.min_frequency = 1;
  // Words "ac" and "Ġab": (a,c) (Ġ,a) (a,b) all count 1. "a" < "Ġ" (U+0120), "b" < "c".
  const std::string g = kSpace;
  EXPECT_THAT(Merges(Train({"ac ab"}, o)), ElementsAre("a b", "a c", g + " ab"));
  // A higher count wins over a smaller string.
  // Words "zz" x1, "Ġzz" x1: (z,z)=2 first; then (Ġ,zz)=1 ties with the others and has the
  // largest (left, right): "Ġ ab" < "Ġ zz".
  EXPECT_THAT(Merges(Train({"ac ab", "zz zz"}, o)),
              ElementsAre("z z", "a b", "a c", g + " ab", g + " zz"));
}

TEST(BpeTrainerTest, OverlappingPairsMergeLeftToRight) {
  BpeTrainerOptions o;
  o.min_frequency = 1;
  // "aaa": (a,a)=2 -> [aa,a] -> (aa,a)=1.  "aaaa": (a,a)=3 -> [aa,aa] -> (aa,aa)=1.
  EXPECT_THAT(Merges(Train({"aaa"}, o)), ElementsAre("a a", "aa a"));
  EXPECT_THAT(Merges(Train({"aaaa"}, o)), ElementsAre("a a", "aa aa"));
}

TEST(BpeTrainerTest, SpecialTokensInTextsAreNotTrainedOn) {
  BpeTrainerOptions o;
  std::vector<std::string> texts(10, "<|eos|>hi<|bos|>");
  EXPECT_THAT(Merges(Train(texts, o)), ElementsAre("h i"));
}

using ReferenceWords = std::map<std::vector<std::string>, int64_t>;
using ReferencePair = std::pair<std::string, std::string>;

// The most frequent adjacent pair of `words` (ties: the smallest (left, right)) and its count;
// count 0 when there is none.
std::pair<ReferencePair, int64_t> ReferenceBestPair(const ReferenceWords& words) {
  std::map<ReferencePair, int64_t> counts;
  for (const auto& [w, n] : words) {
    for (size_t i = 0; i + 1 < w.size(); ++i) counts[{w[i], w[i + 1]}] += n;
  }
  const ReferencePair* best = nullptr;
  int64_t best_count = 0;
  for (const auto& [p, n] : counts) {  // map order: ascending (left, right)
    if (n > best_count) best = &p, best_count = n;
  }
  if (best == nullptr) return {};
  return {*best, best_count};
}

// `words` with every (a, b) replaced by ab, left to right.
ReferenceWords ReferenceApplyMerge(const ReferenceWords& words, const std::string& a,
                                   const std::string& b) {
  ReferenceWords next;
  for (const auto& [w, n] : words) {
    std::vector<std::string> m;
    for (size_t i = 0; i < w.size(); ++i) {
      if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
        m.push_back(a + b);
        ++i;
      } else {
        m.push_back(w[i]);
      }
    }
    next[m] += n;
  }
  return next;
}

// A straightforward BPE trainer (full recount per merge) for single-word texts, with the same
// rules: highest count, then smaller (left, right) strings; an existing string keeps its id.
std::vector<std::string> ReferenceMerges(const std::vector<std::string>& texts, size_t max_tokens,
                                         int64_t min_frequency) {
  ReferenceWords words;
  for (const std::string& t : texts) {
    std::vector<std::string> w;
    for (char ch : t) w.push_back(std::string(1, ch));
    if (!w.empty()) ++words[w];
  }
  std::set<std::string> vocab;
  for (int b = 0; b < 256; ++b) vocab.insert(std::to_string(b) + "#");  // 256 placeholders
  std::vector<std::string> merges;
  while (vocab.size() < max_tokens) {
    const auto [best, best_count] = ReferenceBestPair(words);
    if (best_count == 0 || best_count < min_frequency) break;
    const auto& [a, b] = best;
    merges.push_back(a + " " + b);
    vocab.insert(a + b);
    words = ReferenceApplyMerge(words, a, b);
  }
  return merges;
}

TEST(BpeTrainerTest, MatchesNaiveReferenceOnRandomCorpora) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 100; ++round) {
    const int alphabet = 2 + round % 4;  // small alphabets: many ties and overlapping pairs
    std::vector<std::string> texts;
    const int n = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) {
      std::string w;
      const int len = 1 + static_cast<int>(rng() % 24);
      for (int k = 0; k < len; ++k) w.push_back(static_cast<char>('a' + rng() % alphabet));
      texts.push_back(w);  // letters only: each text is one pre-token
    }
    BpeTrainerOptions o;
    o.min_frequency = 1 + round % 3;
    o.vocab_size = 256 + 2 + 1 + static_cast<int>(rng() % 40);
    SCOPED_TRACE(::testing::Message() << "round " << round);
    EXPECT_THAT(Merges(Train(texts, o)),
                ElementsAreArray(ReferenceMerges(texts, o.vocab_size - 2, o.min_frequency)));
  }
}

TEST(BpeTrainerTest, RoundTripsThroughTheRealTokenizer) {
  BpeTrainerOptions o;
  o.vocab_size = 400;
  const std::vector<std::string> texts = {
      "The quick brown fox jumps over the lazy dog.\n",
      "the dog sleeps; the fox runs. The end.\n",
      "Der Fuchs springt über den Hund. Les élèves étudient.\n",
      "numbers 12345 and 67890, the fox and the dog again and again\n",
  };
  std::vector<std::string> corpus;
  for (int i = 0; i < 20; ++i) corpus.insert(corpus.end(), texts.begin(), texts.end());
  std::unique_ptr<Tokenizer> tok = Load(corpus, o);
  ASSERT_NE(tok, nullptr);

  for (const std::string& s :
       {std::string("The quick brown fox"), std::string("the dog sleeps\n\nand the fox runs"),
        std::string("über élèves — 日本語のテキスト 🙂 emoji"),
        std::string("  leading and trailing  "), std::string("tabs\tand\r\nCRLF\n"),
        std::string("bytes \x01\x7f end"), std::string("x"), std::string("")}) {
    const std::vector<int32_t> ids = tok->Encode(s, /*add_special_tokens=*/false);
    EXPECT_EQ(tok->Decode(ids), s);
  }
  const std::string sentence = "the dog sleeps; the fox runs. The end.\n";
  const std::vector<int32_t> ids = tok->Encode(sentence, false);
  EXPECT_LT(ids.size(), sentence.size());

  // The config and post-processor prepend <|bos|>.
  const std::optional<int32_t> bos = tok->TokenToId("<|bos|>");
  ASSERT_TRUE(bos.has_value());
  EXPECT_EQ(tok->bos_id(), bos);
  EXPECT_EQ(tok->eos_id(), tok->TokenToId("<|eos|>"));
  const std::vector<int32_t> with_bos = tok->Encode("the dog", true);
  ASSERT_FALSE(with_bos.empty());
  EXPECT_EQ(with_bos[0], *bos);
  EXPECT_EQ(tok->Decode(with_bos, /*skip_special_tokens=*/true), "the dog");
  // Special tokens are the last ids.
  EXPECT_EQ(*tok->TokenToId("<|eos|>"), tok->vocab_size() - 1);
  EXPECT_EQ(*bos, tok->vocab_size() - 2);

  o.add_bos = false;
  std::unique_ptr<Tokenizer> no_bos = Load(corpus, o);
  ASSERT_NE(no_bos, nullptr);
  EXPECT_EQ(no_bos->Encode("the dog", true), no_bos->Encode("the dog", false));
}

TEST(BpeTrainerTest, FrequentWordsBecomeSingleTokens) {
  BpeTrainerOptions o;
  std::vector<std::string> corpus;
  for (int i = 0; i < 50; ++i) corpus.push_back("hello world, hello moec. ");
  corpus.push_back("help");
  const json trained = Train(corpus, o);
  const json& vocab = trained.at("model").at("vocab");
  std::unique_ptr<Tokenizer> tok = Load(corpus, o);
  ASSERT_NE(tok, nullptr);
  const std::string g = kSpace;
  for (const std::string& word :
       {std::string("hello"), std::string(" hello"), std::string(" world"), std::string(" moec")}) {
    SCOPED_TRACE(word);
    std::string byte_level = word;
    if (word[0] == ' ') byte_level = g + word.substr(1);
    ASSERT_TRUE(vocab.contains(byte_level));  // fully merged
    EXPECT_THAT(tok->Encode(word, false), ElementsAre(vocab.at(byte_level).get<int32_t>()));
  }
  // Each merge's result is in the vocabulary with an id after its parts'.
  for (const std::string& m : Merges(trained)) {
    const size_t sp = m.find(' ');
    const std::string left = m.substr(0, sp), right = m.substr(sp + 1);
    ASSERT_TRUE(vocab.contains(left + right)) << m;
    EXPECT_GT(vocab.at(left + right).get<int>(), vocab.at(left).get<int>()) << m;
    EXPECT_GT(vocab.at(left + right).get<int>(), vocab.at(right).get<int>()) << m;
  }
}

TEST(BpeTrainerTest, Deterministic) {
  BpeTrainerOptions o;
  o.vocab_size = 600;
  o.min_frequency = 1;
  std::vector<std::string> corpus;
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string s;
    for (int k = 0; k < 30; ++k) s.push_back(" abcdeéfg,.\n"[rng() % 12]);
    corpus.push_back(s);
  }
  absl::StatusOr<std::string> a = TrainByteLevelBpe(corpus, o);
  absl::StatusOr<std::string> b = TrainByteLevelBpe(corpus, o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  // Only the counts matter, not the order of the texts.
  std::reverse(corpus.begin(), corpus.end());
  absl::StatusOr<std::string> c = TrainByteLevelBpe(corpus, o);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*a, *c);
}

std::vector<std::string> PreTokenize(const PreTokenizer& pre, const std::string& text) {
  std::vector<Piece> pieces = {Piece{text, -1, true}};
  pre.Apply(&pieces);
  std::vector<std::string> out;
  for (Piece& p : pieces) out.push_back(std::move(p.text));
  return out;
}

TEST(BpeTrainerTest, ChunkBoundariesAreGpt2SplitBoundaries) {
  absl::StatusOr<PreTokenizer> pre = PreTokenizer::FromJson(
      json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}},
      JsonPath{"test", ""});
  ASSERT_TRUE(pre.ok()) << pre.status();
  std::mt19937 rng(5);
  const char* parts[] = {"ab", "x", " ",  "  ",       "\n",           "\n\n", " \n", "\t",
                         ".",  ",", "'s", "\xC3\xA9", "\xE3\x80\x80", "7",    "\r\n"};
  for (int round = 0; round < 20; ++round) {
    std::string text;
    while (text.size() < 20000) text += parts[rng() % (sizeof(parts) / sizeof(parts[0]))];
    std::vector<std::string> chunked;
    int chunks = 0;
    for (size_t begin = 0; begin < text.size(); ++chunks) {
      const size_t end = internal::PreTokenizerChunkEnd(text, begin, 1 + round);
      ASSERT_GT(end, begin);
      if (end < text.size()) {
        ASSERT_EQ(text[end - 1], '\n');
      }
      for (std::string& p : PreTokenize(*pre, text.substr(begin, end - begin))) {
        chunked.push_back(std::move(p));
      }
      begin = end;
    }
    EXPECT_GT(chunks, 100);
    EXPECT_EQ(chunked, PreTokenize(*pre, text)) << "round " << round;
  }
  EXPECT_EQ(internal::PreTokenizerChunkEnd("a\nb\nc", 0, 1), 2u);
  EXPECT_EQ(internal::PreTokenizerChunkEnd("a\nb\nc", 0, 2), 4u);
  EXPECT_EQ(internal::PreTokenizerChunkEnd("a \nb\n c", 0, 1), 7u);  // no "x\ny": whole text
}

// Texts over 1 MiB are pre-tokenized in chunks cut after a "\n" between printable ASCII
// characters; cutting the text there into separate texts must not change anything either.
TEST(BpeTrainerTest, LargeTextsTrainAsIfWhole) {
  std::mt19937 rng(99);
  const char* parts[] = {"ab", "ba", "a", " ", "  ", "\n", "\n\n", "\t", ".", "\xC3\xA9", "1"};
  std::string text;
  while (text.size() < (3u << 20) / 2) text += parts[rng() % (sizeof(parts) / sizeof(parts[0]))];
  std::vector<std::string> pieces;
  size_t begin = 0;
  auto printable = [](char c) { return c >= 0x21 && c <= 0x7E; };
  for (size_t i = 1; i + 1 < text.size(); ++i) {
    if (text[i] == '\n' && printable(text[i - 1]) && printable(text[i + 1])) {
      pieces.push_back(text.substr(begin, i + 1 - begin));
      begin = i + 1;
    }
  }
  pieces.push_back(text.substr(begin));
  ASSERT_GT(pieces.size(), 1000u);
  BpeTrainerOptions o;
  o.vocab_size = 2000;
  o.min_frequency = 1;
  absl::StatusOr<std::string> whole = TrainByteLevelBpe({text}, o);
  absl::StatusOr<std::string> cut = TrainByteLevelBpe(pieces, o);
  ASSERT_TRUE(whole.ok() && cut.ok());
  EXPECT_EQ(*whole, *cut);
}

TEST(BpeTrainerTest, WritesLoadableDirectory) {
  TempDir tmp;
  const std::string dir = tmp.Join("tok");
  BpeTrainerOptions o;
  ASSERT_OK(WriteTrainedTokenizer({"some text some text some text"}, o, dir));
  ASSERT_TRUE(std::filesystem::exists(dir + "/tokenizer.json"));
  ASSERT_TRUE(std::filesystem::exists(dir + "/tokenizer_config.json"));
  const json config = json::parse(BpeTokenizerConfigJson(o));
  EXPECT_EQ(config.at("bos_token"), "<|bos|>");
  EXPECT_EQ(config.at("eos_token"), "<|eos|>");
  EXPECT_EQ(config.at("add_bos_token"), true);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Decode((*tok)->Encode("some text", false)), "some text");
  EXPECT_EQ((*tok)->Encode("some", true).front(), *(*tok)->bos_id());
}

TEST(BpeTrainerTest, Errors) {
  const std::vector<std::string> texts = {"some text"};
  BpeTrainerOptions o;
  o.vocab_size = 257;
  EXPECT_THAT(TrainByteLevelBpe(texts, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab_size 257")));
  o.vocab_size = 258;
  EXPECT_OK(TrainByteLevelBpe(texts, o).status());  // bytes + specials, no merges

  o = BpeTrainerOptions();
  o.special_tokens = {"<|bos|>", "<|eos|>", "<|bos|>"};
  EXPECT_THAT(TrainByteLevelBpe(texts, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("listed twice")));
  o.special_tokens = {"<|bos|>", "", "<|eos|>"};
  EXPECT_THAT(
      TrainByteLevelBpe(texts, o).status(),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("special_tokens[1] is empty")));
  o.special_tokens = {"<|bos|>"};
  EXPECT_THAT(TrainByteLevelBpe(texts, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("eos_token '<|eos|>' is not one of the special_tokens")));
  o.special_tokens = {"<|bos|>", "<|eos|>", "a"};
  EXPECT_THAT(TrainByteLevelBpe(texts, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("special token 'a'")));

  o = BpeTrainerOptions();
  o.min_frequency = -1;
  EXPECT_THAT(TrainByteLevelBpe(texts, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("min_frequency")));
  o = BpeTrainerOptions();
  o.bos_token = "";
  EXPECT_THAT(TrainByteLevelBpe(texts, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("add_bos")));

  o = BpeTrainerOptions();
  EXPECT_THAT(TrainByteLevelBpe({}, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("corpus is empty")));
  EXPECT_THAT(TrainByteLevelBpe({"", ""}, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("corpus is empty")));
  TempDir tmp;
  EXPECT_THAT(WriteTrainedTokenizer({}, o, tmp.Join("x")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("corpus is empty")));
  EXPECT_FALSE(std::filesystem::exists(tmp.Join("x")));
}

TEST(BpeTrainerTest, CommonLicensesCompress) {
  const std::filesystem::path dir = "/usr/share/common-licenses";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) GTEST_SKIP() << dir << " is missing";
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> texts;
  size_t bytes = 0;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
    bytes += texts.back().size();
  }
  if (bytes < 50000) GTEST_SKIP() << "only " << bytes << " bytes in " << dir;

  BpeTrainerOptions o;
  o.vocab_size = 1024;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> trained = TrainByteLevelBpe(texts, o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(trained.ok()) << trained.status();
  std::cout << "trained vocab 1024 on " << bytes << " bytes (" << files.size() << " files) in "
            << seconds << " s\n";
  EXPECT_LT(seconds, 10.0);

  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      Tokenizer::FromJson(*trained, BpeTokenizerConfigJson(o), "licenses tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 1024);
  size_t tokens = 0;
  for (const std::string& t : texts) {
    const std::vector<int32_t> ids = (*tok)->Encode(t, false);
    tokens += ids.size();
    EXPECT_EQ((*tok)->Decode(ids), t);
  }
  const double ratio = static_cast<double>(bytes) / static_cast<double>(tokens);
  std::cout << "compression: " << ratio << " bytes/token\n";
  EXPECT_GT(ratio, 2.5);
  // A word that is everywhere in the licenses is one token.
  EXPECT_EQ((*tok)->Encode(" License", false).size(), 1u);
}

}  // namespace
}  // namespace moec::tools
