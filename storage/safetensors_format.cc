#include "storage/safetensors_format.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/json_depth.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moec::storage {
namespace {

using nlohmann::json;

// A header is at most 3 levels deep ({name: {shape: [..]}}); anything deeper is hostile.
constexpr int kMaxJsonDepth = 4;

absl::Status Bad(absl::string_view file, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("safetensors file ", file, ": ", what));
}

absl::Status BadTensor(absl::string_view file, absl::string_view tensor, absl::string_view what) {
  return absl::DataLossError(
      absl::StrCat("safetensors file ", file, " tensor '", tensor, "': ", what));
}

absl::StatusOr<uint64_t> NonNegative(const json& v, absl::string_view file,
                                     absl::string_view tensor, absl::string_view field) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return v.get<uint64_t>();
  return BadTensor(file, tensor,
                   absl::StrCat(field, " must hold non-negative integers, got ", v.dump()));
}

absl::StatusOr<SafetensorsTensorInfo> ParseEntry(const std::string& name, const json& entry,
                                                 absl::string_view file) {
  if (!entry.is_object()) return BadTensor(file, name, "entry is not an object");
  SafetensorsTensorInfo info;
  info.name = name;
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return BadTensor(file, name, "missing string field 'dtype'");
  }
  std::optional<DType> dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype) {
    return BadTensor(file, name,
                     absl::StrCat("unknown dtype '", dtype_it->get_ref<const std::string&>(), "'"));
  }
  info.dtype = *dtype;
  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return BadTensor(file, name, "missing array field 'shape'");
  }
  for (const json& d : *shape_it) {
    MOEC_ASSIGN_OR_RETURN(uint64_t dim, NonNegative(d, file, name, "shape"));
    if (dim > static_cast<uint64_t>(INT64_MAX)) return BadTensor(file, name, "dimension too large");
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  auto off_it = entry.find("data_offsets");
  if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2) {
    return BadTensor(file, name, "missing field 'data_offsets' of two integers");
  }
  MOEC_ASSIGN_OR_RETURN(info.begin, NonNegative((*off_it)[0], file, name, "data_offsets"));
  MOEC_ASSIGN_OR_RETURN(info.end, NonNegative((*off_it)[1], file, name, "data_offsets"));
  if (info.end < info.begin) {
    return BadTensor(file, name, absl::StrCat("inverted data_offsets [", info.begin, ", ",
                                              info.end, "]"));
  }
  absl::StatusOr<uint64_t> bytes = TensorByteSize(info.dtype, info.shape);
  if (!bytes.ok()) return BadTensor(file, name, bytes.status().message());
  if (*bytes != info.size()) {
    return BadTensor(file, name,
                     absl::StrCat("shape x dtype is ", *bytes, " bytes but data_offsets [",
                                  info.begin, ", ", info.end, "] hold ", info.size()));
  }
  return info;
}

absl::Status ParseMetadata(const json& meta, absl::string_view file,
                           std::map<std::string, std::string>* out) {
  if (!meta.is_object()) return Bad(file, "__metadata__ is not an object");
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    if (!it.value().is_string()) {
      return Bad(file, absl::StrCat("__metadata__ value for '", it.key(), "' is not a string"));
    }
    (*out)[it.key()] = it.value().get<std::string>();
  }
  return absl::OkStatus();
}

// Checks that the ranges, sorted by offset, tile [0, data_size) exactly.
absl::Status CheckLayout(const std::vector<SafetensorsTensorInfo>& sorted, uint64_t data_size,
                         absl::string_view file) {
  uint64_t cursor = 0;
  for (const auto& t : sorted) {
    if (t.end > data_size) {
      return BadTensor(file, t.name, absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                                                  "] beyond the data section of ", data_size,
                                                  " bytes"));
    }
    if (t.begin < cursor) {
      return BadTensor(file, t.name, absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                                                  "] overlap the previous tensor, ending at ",
                                                  cursor));
    }
    if (t.begin > cursor) {
      return BadTensor(file, t.name, absl::StrCat("gap in the data section: bytes [", cursor,
                                                  ", ", t.begin, ") belong to no tensor"));
    }
    cursor = t.end;
  }
  if (cursor != data_size) {
    return Bad(file, absl::StrCat("tensors cover ", cursor, " bytes of a data section of ",
                                  data_size, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeaderJson(absl::string_view text,
                                                             uint64_t data_size,
                                                             absl::string_view file) {
  if (!JsonNestingWithin(text, kMaxJsonDepth)) return Bad(file, "header JSON nested too deeply");
  // Duplicate top-level keys would silently shadow each other; detect them while parsing.
  std::set<std::string> keys;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json doc = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Bad(file, "header is not valid JSON");
  if (!duplicate.empty()) return Bad(file, absl::StrCat("duplicate key '", duplicate, "'"));
  if (!doc.is_object()) return Bad(file, "header is not a JSON object");

  SafetensorsHeader header;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() == "__metadata__") {
      MOEC_RETURN_IF_ERROR(ParseMetadata(it.value(), file, &header.metadata));
      continue;
    }
    MOEC_ASSIGN_OR_RETURN(SafetensorsTensorInfo info, ParseEntry(it.key(), it.value(), file));
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  MOEC_RETURN_IF_ERROR(CheckLayout(header.tensors, data_size, file));
  return header;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsFile(absl::string_view prefix,
                                                       uint64_t file_size, absl::string_view file,
                                                       uint64_t max_header_bytes) {
  if (file_size < 8 || prefix.size() < 8) {
    return Bad(file, absl::StrCat("file of ", file_size, " bytes is too short for a header"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(prefix[i]);
  if (n > max_header_bytes) {
    return Bad(file, absl::StrCat("header length ", n, " exceeds the limit of ",
                                  max_header_bytes, " bytes"));
  }
  if (n > file_size - 8) {
    return Bad(file, absl::StrCat("header length ", n, " runs past the end of the file (",
                                  file_size, " bytes)"));
  }
  if (prefix.size() < 8 + n) return Bad(file, "header truncated");
  absl::string_view text = prefix.substr(8, n);
  if (text.empty() || text[0] != '{') return Bad(file, "header does not start with '{'");
  MOEC_ASSIGN_OR_RETURN(SafetensorsHeader header,
                        ParseSafetensorsHeaderJson(text, file_size - 8 - n, file));
  header.data_offset = 8 + n;
  return header;
}

}  // namespace moec::storage
