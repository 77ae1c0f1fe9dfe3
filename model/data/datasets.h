// Calibration and evaluation text from local files (docs/formats/datasets.md): JSON lines with a
// "text" field (C4 style), JSON arrays, plain text (WikiText style), turned into fixed-length
// token windows by the references' protocols: GPTQ random windows, concatenate-then-chunk
// (Unified-MoE-Compression "pt"), and GPTQ's non-overlapping evaluation windows.
//
// Thread safety: free functions without shared state; a Tokenizer may be shared.
#ifndef MOEC_MODEL_DATA_DATASETS_H_
#define MOEC_MODEL_DATA_DATASETS_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/tokenizer/tokenizer.h"

namespace moec::model {

enum class TextFormat {
  kAuto,       // by extension: .jsonl JSON lines; .json JSON array if its first non-space
               // character is '[', else JSON lines (allenai/c4 shards are .json JSON lines);
               // .txt / .raw plain text; anything else is InvalidArgument
  kJsonLines,  // one JSON object per line with a string field `text_field`; blank lines skipped
  kJsonArray,  // a JSON array of strings, or of objects with a string field `text_field`
  kPlainText,  // the whole file is one text
};

struct TextFileOptions {
  // How to read the file (default: from the extension, see TextFormat::kAuto).
  TextFormat format = TextFormat::kAuto;
  // The field holding the text in JSON objects.
  std::string text_field = "text";
  // Files larger than this (bytes) are refused with ResourceExhausted before being read.
  uint64_t max_file_bytes = 4ull << 30;
  // Keep only the first this many documents (0: all). Bounds tokenization work on big shards.
  int64_t max_documents = 0;
};

// Documents of `path`, in file order. Empty documents are kept (WikiText rows are often empty).
// Possible errors: NotFound (missing file, naming it), ResourceExhausted (over max_file_bytes),
// InvalidArgument (unknown extension with kAuto; malformed JSON, a line or element without a
// string `text_field` — JSON lines errors give the 1-based line number; no documents, or only
// empty ones), Internal (read failure).
absl::StatusOr<std::vector<std::string>> LoadTexts(const std::string& path,
                                                   const TextFileOptions& options = {});

// As LoadTexts, from file contents `data` in `format` (kAuto: sniffed as for .json; `source`
// names the data in messages).
absl::StatusOr<std::vector<std::string>> ParseTexts(absl::string_view data, TextFormat format,
                                                    absl::string_view source,
                                                    const TextFileOptions& options = {});

// `count()` windows of `seqlen` tokens, concatenated row-major.
struct TokenWindows {
  int64_t seqlen = 0;
  std::vector<int32_t> tokens;  // count() * seqlen ids

  int64_t count() const { return seqlen > 0 ? static_cast<int64_t>(tokens.size()) / seqlen : 0; }
  // REQUIRES: 0 <= i < count().
  absl::Span<const int32_t> window(int64_t i) const {
    return absl::MakeConstSpan(tokens).subspan(static_cast<size_t>(i * seqlen),
                                               static_cast<size_t>(seqlen));
  }
};

// A uniform draw from [0, n) by rejection (no modulo bias), independent of the standard
// library's distribution implementations. REQUIRES: n >= 1.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n);

// GPTQ random windows (calibration). With rng = std::mt19937_64(seed), for each of `samples`
// windows: repeat { d = UniformBelow(rng, #texts); ids = Encode(texts[d], add_special_tokens) }
// until ids.size() > seqlen; then start = UniformBelow(rng, ids.size() - seqlen) and the window
// is ids[start, start + seqlen). Same inputs and seed give the same windows on every platform
// (not the same as Python's `random`).
struct RandomWindowOptions {
  int64_t seqlen = 2048;           // tokens per window, >= 1
  int64_t samples = 128;           // windows to draw, >= 1
  uint64_t seed = 0;               // seeds std::mt19937_64
  bool add_special_tokens = true;  // GPTQ calls the tokenizer with its defaults (BOS for Llama)
};
// Possible errors: InvalidArgument (no texts, seqlen or samples < 1), FailedPrecondition (no
// text has more than seqlen tokens; the message gives the longest).
absl::StatusOr<TokenWindows> SampleRandomWindows(absl::Span<const std::string> texts,
                                                 const Tokenizer& tokenizer,
                                                 const RandomWindowOptions& options);

// Concatenate-then-chunk (calibration). Without eos_between_docs the texts are joined with
// `separator` and tokenized once without special tokens; with it, each text is tokenized alone
// (no special tokens) and followed by the EOS id (Unified-MoE-Compression's "pt" data: doc +
// EOS, no BOS). The stream is cut into consecutive windows; with bos_per_chunk each window is
// BOS followed by seqlen - 1 stream tokens. The tail is dropped; the first max_chunks are kept.
struct ChunkOptions {
  int64_t seqlen = 2048;           // tokens per window, >= 1 (>= 2 with bos_per_chunk)
  int64_t max_chunks = 128;        // windows wanted; 0: every complete window
  std::string separator = "\n\n";  // between texts when joining (unused with eos_between_docs)
  bool eos_between_docs = false;   // tokenize per text and append EOS after each
  bool bos_per_chunk = false;      // start every window with BOS
};
// Possible errors: InvalidArgument (no texts, bad seqlen or max_chunks), FailedPrecondition
// (the tokenizer has no BOS/EOS id that was asked for; fewer tokens than max_chunks windows,
// or than one window when max_chunks = 0 — the message gives both counts).
absl::StatusOr<TokenWindows> ConcatenateAndChunk(absl::Span<const std::string> texts,
                                                 const Tokenizer& tokenizer,
                                                 const ChunkOptions& options);

// GPTQ evaluation windows (perplexity): the texts joined with `separator` are tokenized once
// (WikiText-2: "\n\n", with special tokens, as GPTQ does) and split into non-overlapping windows
// of seqlen tokens; the tail is dropped; at most max_windows are kept (0: all).
struct EvalWindowOptions {
  int64_t seqlen = 2048;
  int64_t max_windows = 0;  // cap (GPTQ's C4 eval: 256); fewer available is not an error
  std::string separator = "\n\n";
  bool add_special_tokens = true;
};
// Possible errors: InvalidArgument (no texts, seqlen < 1, max_windows < 0),
// FailedPrecondition (fewer tokens than one window; the message gives both counts).
absl::StatusOr<TokenWindows> EvaluationWindows(absl::Span<const std::string> texts,
                                               const Tokenizer& tokenizer,
                                               const EvalWindowOptions& options);

}  // namespace moec::model

#endif  // MOEC_MODEL_DATA_DATASETS_H_
