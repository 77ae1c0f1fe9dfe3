#include "model/data/datasets.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dataset_files.h"
#include "common/json_depth.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"

namespace moec::model {
namespace {

using nlohmann::json;

// Dataset records are flat; deeper nesting is hostile and must never reach nlohmann's
// recursive parser.
constexpr int kMaxJsonDepth = 64;


absl::StatusOr<json> ParseJson(absl::string_view text, const std::string& where) {
  if (!JsonNestingWithin(text, kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": JSON nested deeper than ", kMaxJsonDepth));
  }
  json parsed = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded())
    return absl::InvalidArgumentError(absl::StrCat(where, ": malformed JSON"));
  return parsed;
}

// The string `field` of a record (an object), or a bare string when `allow_string`.
absl::StatusOr<std::string> RecordText(const json& record, const std::string& field,
                                       bool allow_string, const std::string& where) {
  if (allow_string && record.is_string()) return record.get<std::string>();
  if (!record.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, allow_string ? ": expected a string or a JSON object" : ": expected a JSON object"));
  }
  auto it = record.find(field);
  if (it == record.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": no '", field, "' field"));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": field '", field, "' is not a string"));
  }
  return it->get<std::string>();
}

bool Full(const std::vector<std::string>& docs, const TextFileOptions& options) {
  return options.max_documents > 0 && static_cast<int64_t>(docs.size()) >= options.max_documents;
}

absl::StatusOr<std::vector<std::string>> ParseJsonLines(absl::string_view data,
                                                        absl::string_view source,
                                                        const TextFileOptions& options) {
  std::vector<std::string> docs;
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < data.size() && !Full(docs, options)) {
    size_t end = data.find('\n', pos);
    if (end == absl::string_view::npos) end = data.size();
    const absl::string_view line = absl::StripAsciiWhitespace(data.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    const std::string where = absl::StrCat("dataset file ", source, " line ", line_no);
    MOEC_ASSIGN_OR_RETURN(json record, ParseJson(line, where));
    MOEC_ASSIGN_OR_RETURN(std::string text,
                          RecordText(record, options.text_field, /*allow_string=*/false, where));
    docs.push_back(std::move(text));
  }
  return docs;
}

absl::StatusOr<std::vector<std::string>> ParseJsonArray(absl::string_view data,
                                                        absl::string_view source,
                                                        const TextFileOptions& options) {
  const std::string where = absl::StrCat("dataset file ", source);
  MOEC_ASSIGN_OR_RETURN(json root, ParseJson(data, where));
  if (!root.is_array())
    return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON array"));
  std::vector<std::string> docs;
  for (size_t i = 0; i < root.size() && !Full(docs, options); ++i) {
    MOEC_ASSIGN_OR_RETURN(std::string text,
                          RecordText(root[i], options.text_field, /*allow_string=*/true,
                                     absl::StrCat(where, " element ", i)));
    docs.push_back(std::move(text));
  }
  return docs;
}

absl::StatusOr<TextFormat> FormatFromExtension(const std::string& path) {
  const std::string ext = DatasetExtension(path);
  if (ext == ".jsonl") return TextFormat::kJsonLines;
  if (ext == ".json") return TextFormat::kAuto;  // sniffed from the contents
  if (ext == ".txt" || ext == ".raw") return TextFormat::kPlainText;
  return absl::InvalidArgumentError(
      absl::StrCat("dataset file ", path, ": cannot infer the format from the extension '", ext,
                   "' (known: ", kDatasetExtensionList, "); set TextFileOptions::format"));
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes) {
  absl::StatusOr<std::string> data = storage::ReadFileToString(path, max_bytes);
  if (!data.ok()) return Annotate(data.status(), "dataset file");
  return data;
}

absl::Status CheckTexts(absl::Span<const std::string> texts, int64_t seqlen) {
  if (texts.empty()) return absl::InvalidArgumentError("no texts");
  if (seqlen < 1) return absl::InvalidArgumentError(absl::StrCat("seqlen ", seqlen, " < 1"));
  return absl::OkStatus();
}

void Append(std::vector<int32_t>* out, const std::vector<int32_t>& ids) {
  out->insert(out->end(), ids.begin(), ids.end());
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseTexts(absl::string_view data, TextFormat format,
                                                    absl::string_view source,
                                                    const TextFileOptions& options) {
  if (options.max_documents < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_documents ", options.max_documents, " < 0"));
  }
  if (absl::StartsWith(data, "\xEF\xBB\xBF")) data.remove_prefix(3);  // UTF-8 byte-order mark
  if (format == TextFormat::kAuto) {
    const absl::string_view head = absl::StripLeadingAsciiWhitespace(data);
    format = !head.empty() && head[0] == '[' ? TextFormat::kJsonArray : TextFormat::kJsonLines;
  }
  std::vector<std::string> docs;
  switch (format) {
    case TextFormat::kPlainText:
      docs.emplace_back(data);
      break;
    case TextFormat::kJsonLines: {
      MOEC_ASSIGN_OR_RETURN(docs, ParseJsonLines(data, source, options));
      break;
    }
    case TextFormat::kJsonArray:
    case TextFormat::kAuto: {
      MOEC_ASSIGN_OR_RETURN(docs, ParseJsonArray(data, source, options));
      break;
    }
  }
  if (docs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("dataset file ", source, ": no documents"));
  }
  if (std::all_of(docs.begin(), docs.end(), [](const std::string& d) { return d.empty(); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset file ", source, ": all ", docs.size(), " documents are empty"));
  }
  return docs;
}

absl::StatusOr<std::vector<std::string>> LoadTexts(const std::string& path,
                                                   const TextFileOptions& options) {
  TextFormat format = options.format;
  if (format == TextFormat::kAuto) {
    MOEC_ASSIGN_OR_RETURN(format, FormatFromExtension(path));
  }
  MOEC_ASSIGN_OR_RETURN(std::string data, ReadWholeFile(path, options.max_file_bytes));
  return ParseTexts(data, format, path, options);
}

uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  // Accept x >= 2^64 mod n: the accepted range holds a multiple of n values, so x % n is exact.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    const uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

absl::StatusOr<TokenWindows> SampleRandomWindows(absl::Span<const std::string> texts,
                                                 const Tokenizer& tokenizer,
                                                 const RandomWindowOptions& options) {
  MOEC_RETURN_IF_ERROR(CheckTexts(texts, options.seqlen));
  if (options.samples < 1) {
    return absl::InvalidArgumentError(absl::StrCat("samples ", options.samples, " < 1"));
  }
  const auto seqlen = static_cast<size_t>(options.seqlen);
  std::mt19937_64 rng(options.seed);
  // Texts known to be too short, so that an all-short corpus ends instead of looping forever.
  std::vector<bool> too_short(texts.size(), false);
  size_t num_too_short = 0;
  size_t longest = 0;
  TokenWindows out{options.seqlen, {}};
  out.tokens.reserve(seqlen * static_cast<size_t>(options.samples));
  for (int64_t s = 0; s < options.samples; ++s) {
    std::vector<int32_t> ids;
    for (;;) {
      const uint64_t d = UniformBelow(rng, texts.size());
      if (too_short[d]) continue;
      ids = tokenizer.Encode(texts[d], options.add_special_tokens);
      if (ids.size() > seqlen) break;
      longest = std::max(longest, ids.size());
      too_short[d] = true;
      if (++num_too_short == texts.size()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "random windows: none of the ", texts.size(), " texts has more than seqlen = ", seqlen,
            " tokens (the longest has ", longest, ")"));
      }
    }
    const uint64_t start = UniformBelow(rng, ids.size() - seqlen);
    out.tokens.insert(out.tokens.end(), ids.begin() + start, ids.begin() + start + seqlen);
  }
  return out;
}

namespace {

// ConcatenateAndChunk's argument checks.
absl::Status CheckChunkOptions(absl::Span<const std::string> texts, const Tokenizer& tokenizer,
                               const ChunkOptions& options) {
  MOEC_RETURN_IF_ERROR(CheckTexts(texts, options.seqlen));
  if (options.max_chunks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_chunks ", options.max_chunks, " < 0"));
  }
  if (options.bos_per_chunk && options.seqlen < 2) {
    return absl::InvalidArgumentError("bos_per_chunk needs seqlen >= 2");
  }
  if (options.bos_per_chunk && !tokenizer.bos_id().has_value()) {
    return absl::FailedPreconditionError("bos_per_chunk: the tokenizer has no BOS token");
  }
  if (options.eos_between_docs && !tokenizer.eos_id().has_value()) {
    return absl::FailedPreconditionError("eos_between_docs: the tokenizer has no EOS token");
  }
  return absl::OkStatus();
}

// The token stream ConcatenateAndChunk cuts: the texts joined with the separator, or each text
// followed by EOS (then tokenizing stops once the stream holds `needed` tokens).
std::vector<int32_t> TokenStream(absl::Span<const std::string> texts, const Tokenizer& tokenizer,
                                 const ChunkOptions& options, uint64_t needed) {
  std::vector<int32_t> stream;
  if (options.eos_between_docs) {
    for (size_t i = 0; i < texts.size() && stream.size() < needed; ++i) {
      Append(&stream, tokenizer.Encode(texts[i], /*add_special_tokens=*/false));
      stream.push_back(*tokenizer.eos_id());
    }
  } else {
    stream = tokenizer.Encode(absl::StrJoin(texts, options.separator),
                              /*add_special_tokens=*/false);
  }
  return stream;
}

}  // namespace

absl::StatusOr<TokenWindows> ConcatenateAndChunk(absl::Span<const std::string> texts,
                                                 const Tokenizer& tokenizer,
                                                 const ChunkOptions& options) {
  MOEC_RETURN_IF_ERROR(CheckChunkOptions(texts, tokenizer, options));
  const int64_t payload = options.seqlen - (options.bos_per_chunk ? 1 : 0);
  // Stream tokens needed; the per-text path stops tokenizing once it has them.
  const uint64_t needed = options.max_chunks > 0
                              ? static_cast<uint64_t>(payload) * options.max_chunks
                              : std::numeric_limits<uint64_t>::max();
  const std::vector<int32_t> stream = TokenStream(texts, tokenizer, options, needed);
  const int64_t available = static_cast<int64_t>(stream.size()) / payload;
  const int64_t wanted =
      options.max_chunks > 0 ? options.max_chunks : std::max<int64_t>(available, 1);
  if (available < wanted) {
    return absl::FailedPreconditionError(absl::StrCat(
        "concatenate-then-chunk: ", stream.size(), " tokens make ", available, " windows of ",
        payload, " text tokens, fewer than the ", wanted, " requested"));
  }
  TokenWindows out{options.seqlen, {}};
  out.tokens.reserve(static_cast<size_t>(wanted * options.seqlen));
  for (int64_t c = 0; c < wanted; ++c) {
    if (options.bos_per_chunk) out.tokens.push_back(*tokenizer.bos_id());
    const auto first = stream.begin() + c * payload;
    out.tokens.insert(out.tokens.end(), first, first + payload);
  }
  return out;
}

absl::StatusOr<TokenWindows> EvaluationWindows(absl::Span<const std::string> texts,
                                               const Tokenizer& tokenizer,
                                               const EvalWindowOptions& options) {
  MOEC_RETURN_IF_ERROR(CheckTexts(texts, options.seqlen));
  if (options.max_windows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_windows ", options.max_windows, " < 0"));
  }
  std::vector<int32_t> ids =
      tokenizer.Encode(absl::StrJoin(texts, options.separator), options.add_special_tokens);
  int64_t count = static_cast<int64_t>(ids.size()) / options.seqlen;
  if (count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("evaluation windows: the text has ", ids.size(),
                     " tokens, fewer than one window of ", options.seqlen));
  }
  if (options.max_windows > 0) count = std::min(count, options.max_windows);
  ids.resize(static_cast<size_t>(count * options.seqlen));
  return TokenWindows{options.seqlen, std::move(ids)};
}

}  // namespace moec::model
