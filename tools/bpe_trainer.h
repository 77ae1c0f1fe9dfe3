// A deterministic byte-level BPE tokenizer trainer (docs/formats/bpe_trainer.md), without
// libtorch or Python: it learns merges from texts the way the Hugging Face `tokenizers`
// BpeTrainer does and writes a tokenizer.json that model/tokenizer.h (and `tokenizers`) load.
//
//   moec::model::BpeTrainerOptions o;
//   o.vocab_size = 1024;
//   MOEC_RETURN_IF_ERROR(moec::model::WriteTrainedTokenizer(texts, o, "/tmp/tok"));
//
// Texts are split with the GPT-2 ByteLevel pre-tokenizer of model/pretokenizer.h (the same code
// the tokenizer encodes with); special tokens found in the texts are cut out first and never
// take part in merges. Then the most frequent adjacent pair is merged again and again: highest
// count first, ties broken by the smaller left token string, then the smaller right token string
// (the vocabulary's ByteLevel strings compared byte-wise), until the vocabulary is full or no
// pair occurs at least `min_frequency` times.
//
// Id layout: 0..255 are the bytes (id b is byte b, written with the GPT-2 bytes-to-unicode
// alphabet), then the learned tokens in merge order, then the special tokens in option order.
// The output depends only on the texts and the options (byte-identical across runs).
#ifndef MOEC_TOOLS_BPE_TRAINER_H_
#define MOEC_TOOLS_BPE_TRAINER_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace moec::tools {

struct BpeTrainerOptions {
  // Total tokens: the 256 byte tokens, the learned tokens and the special tokens.
  int vocab_size = 512;
  // Pairs seen fewer times than this (counting every occurrence in the corpus) are never merged.
  int min_frequency = 2;
  // Added tokens (special: true), given the ids after the learned tokens, in this order.
  std::vector<std::string> special_tokens = {"<|bos|>", "<|eos|>"};
  // For tokenizer_config.json (and the post-processor): each must be empty or one of
  // special_tokens; add_bos makes encoding with special tokens prepend bos_token.
  std::string bos_token = "<|bos|>";
  std::string eos_token = "<|eos|>";
  bool add_bos = true;
};

// Trains on `texts` and returns the text of tokenizer.json (BPE model, ByteLevel pre-tokenizer
// and decoder, special tokens as added tokens, TemplateProcessing prepending bos_token when
// add_bos).
// Errors (InvalidArgument): vocab_size < 256 + number of special tokens, negative
// min_frequency, an empty, duplicate or non-UTF-8 special token, a bos/eos token that is not
// one of the special tokens (or add_bos without bos_token), texts without a single byte, a
// special token equal to a byte or learned token string.
absl::StatusOr<std::string> TrainByteLevelBpe(absl::Span<const std::string> texts,
                                              const BpeTrainerOptions& options);

// The text of tokenizer_config.json: bos_token, eos_token (null when empty), add_bos_token,
// add_eos_token (false), tokenizer_class PreTrainedTokenizerFast.
std::string BpeTokenizerConfigJson(const BpeTrainerOptions& options);

// Trains, then writes tokenizer.json and tokenizer_config.json into `dir` (created when
// missing), each atomically. Errors: as TrainByteLevelBpe, plus I/O errors naming the file.
absl::Status WriteTrainedTokenizer(absl::Span<const std::string> texts,
                                   const BpeTrainerOptions& options, const std::string& dir);

namespace internal {

// Exposed for tests. Long texts are pre-tokenized in chunks to bound memory; a chunk starting at
// `begin` ends just after the first "\n" at least `min_bytes` on that stands between two
// printable ASCII characters ("x\ny"), or at the end of `text`. The GPT-2 split has the same
// boundary there in the whole text and in the chunk: that lone '\n' is a piece of its own
// either way (\s+ in the text, where \S follows; \s+(?!\S) at the chunk's end), and no
// alternative matches across it.
size_t PreTokenizerChunkEnd(absl::string_view text, size_t begin, size_t min_bytes);

}  // namespace internal

}  // namespace moec::tools

#endif  // MOEC_TOOLS_BPE_TRAINER_H_
