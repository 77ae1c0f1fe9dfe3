#include "tools/trainer.h"

#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/config.h"
#include "model/tokenizer/tokenizer.h"
#include "storage/file_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::tools {

using model::LoadModelConfig;
using model::ModelConfig;
using model::Tokenizer;

namespace {

namespace fs = std::filesystem;
using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::HasSubstr;

// A small corpus: a few kilobytes of repetitive English, so that a tiny model learns quickly.
std::string Corpus(const TempDir& dir) {
  std::string text;
  const char* sentences[] = {
      "The licensee may copy and distribute the program in source form. ",
      "You must give any other recipients a copy of this license. ",
      "The program is distributed in the hope that it will be useful. ",
      "This license applies to any program or other work which contains a notice. ",
  };
  for (int i = 0; i < 120; ++i) text += sentences[(i * 7) % 4];
  return dir.WriteFile("corpus.txt", text);
}

TrainOptions Small(const TempDir& dir, const std::string& arch) {
  TrainOptions o;
  o.arch = arch;
  o.corpus_files = {Corpus(dir)};
  o.vocab = 300;
  o.layers = 2;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 4;
  o.moe_intermediate = 32;
  o.intermediate = 48;
  o.seqlen = 32;
  o.batch = 8;
  o.steps = 60;
  o.lr = 1e-2;
  return o;
}

TEST(TrainerTest, ValidateNamesTheBadField) {
  TrainOptions o;
  o.arch = "olmoe";
  EXPECT_THAT(o.Validate(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     HasSubstr("supported: mixtral, deepseek")));
  o = TrainOptions();
  o.top_k = 9;
  EXPECT_THAT(o.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k")));
  o = TrainOptions();
  o.corpus_files = {"/nonexistent/corpus.txt"};
  EXPECT_THAT(o.Fingerprint().status(), StatusIs(absl::StatusCode::kNotFound));
}

class TrainerArchTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainerArchTest, LearnsWritesALoadableModelAndIsCached) {
  TempDir dir;
  TrainOptions o = Small(dir, GetParam());
  std::vector<double> losses;
  ASSERT_OK_AND_ASSIGN(TrainReport r,
                       TrainOrReuseTinyModel(o, dir.Join("model"), [&](const TrainProgress& p) {
                         losses.push_back(p.loss);
                       }));
  ASSERT_EQ(losses.size(), 60u);
  EXPECT_FALSE(r.reused);
  // It learned: the loss fell far below its start, and the held-out text is much better
  // predicted than by token frequencies alone.
  EXPECT_LT(r.final_loss, 0.5 * losses.front());
  EXPECT_LT(r.heldout_perplexity, 0.5 * r.unigram_perplexity);
  EXPECT_LT(r.router_entropy, 1.0);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json", "train.txt", "heldout.txt",
                        "moec_training.json"}) {
    EXPECT_TRUE(fs::exists(fs::path(dir.Join("model")) / f)) << f;
  }
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("model")));
  EXPECT_EQ(c.model_type, GetParam());
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::Load(dir.Join("model")));
  EXPECT_EQ(tok->vocab_size(), c.vocab_size);
  // Same options: reused without training.
  losses.clear();
  ASSERT_OK_AND_ASSIGN(TrainReport again,
                       TrainOrReuseTinyModel(o, dir.Join("model"), [&](const TrainProgress& p) {
                         losses.push_back(p.loss);
                       }));
  EXPECT_TRUE(again.reused);
  EXPECT_TRUE(losses.empty());
  EXPECT_EQ(again.fingerprint, r.fingerprint);
  EXPECT_DOUBLE_EQ(again.heldout_perplexity, r.heldout_perplexity);
}

TEST_P(TrainerArchTest, DeterministicForTheSameOptions) {
  TempDir dir;
  TrainOptions o = Small(dir, GetParam());
  o.steps = 5;
  ASSERT_OK(TrainTinyModel(o, dir.Join("a")).status());
  ASSERT_OK(TrainTinyModel(o, dir.Join("b")).status());
  auto a = storage::ReadFileToString(dir.Join("a/model.safetensors"), 1 << 30);
  auto b = storage::ReadFileToString(dir.Join("b/model.safetensors"), 1 << 30);
  ASSERT_OK(a.status());
  ASSERT_OK(b.status());
  EXPECT_TRUE(*a == *b);
  o.seed = 1;
  ASSERT_OK(TrainTinyModel(o, dir.Join("c")).status());
  auto c = storage::ReadFileToString(dir.Join("c/model.safetensors"), 1 << 30);
  EXPECT_FALSE(*a == *c);
}

INSTANTIATE_TEST_SUITE_P(Both, TrainerArchTest, ::testing::Values("mixtral", "deepseek"));

TEST(TrainerTest, ChangedOptionsRetrainAndForeignDirectoriesAreRefused) {
  TempDir dir;
  TrainOptions o = Small(dir, "mixtral");
  o.steps = 3;
  ASSERT_OK_AND_ASSIGN(TrainReport first, TrainOrReuseTinyModel(o, dir.Join("model")));
  o.steps = 4;
  ASSERT_OK_AND_ASSIGN(TrainReport second, TrainOrReuseTinyModel(o, dir.Join("model")));
  EXPECT_FALSE(second.reused);
  EXPECT_NE(first.fingerprint, second.fingerprint);
  fs::create_directories(dir.Join("other"));
  dir.WriteFile("other/precious.txt", "x");
  EXPECT_THAT(TrainOrReuseTinyModel(o, dir.Join("other")).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(fs::exists(dir.Join("other/precious.txt")));
}

}  // namespace
}  // namespace moec::tools
