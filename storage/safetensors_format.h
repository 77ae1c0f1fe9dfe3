// The safetensors on-disk format (docs/formats/safetensors.md): an 8-byte little-endian header
// length N, N bytes of JSON header (padded with spaces to a multiple of 8 by writers), then the
// data section. Parsing validates everything a hostile file could get wrong.
#ifndef MOEC_STORAGE_SAFETENSORS_FORMAT_H_
#define MOEC_STORAGE_SAFETENSORS_FORMAT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/dtype.h"

namespace moec::storage {

// Header size cap, as in the Hugging Face implementation (100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// One tensor entry of a header. Offsets are relative to the start of the data section.
struct SafetensorsTensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
};

// A parsed and validated header.
struct SafetensorsHeader {
  // Sorted by data offset (the order of the data section).
  std::vector<SafetensorsTensorInfo> tensors;
  // The `__metadata__` map (string to string), empty when absent.
  std::map<std::string, std::string> metadata;
  // Bytes before the data section: 8 + header length.
  uint64_t data_offset = 0;
};

// Parses the JSON text of a header whose data section is `data_size` bytes. `file` names the
// file in error messages.
// Errors (all DataLoss, naming the file and, where there is one, the tensor): malformed JSON,
// nesting deeper than a header can be, duplicate keys, not an object, `__metadata__` not a map of
// strings, missing or mistyped dtype/shape/data_offsets, unknown dtype, negative dimension,
// overflowing sizes, shape x dtype not equal to the byte range, inverted or out-of-bounds
// ranges, overlapping ranges, gaps between ranges, data not covering the data section.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeaderJson(absl::string_view json,
                                                             uint64_t data_size,
                                                             absl::string_view file);

// Parses the start of a safetensors file of `file_size` bytes whose first bytes are `prefix`
// (at least min(file_size, 8 + header length) bytes, typically the whole mmapped file).
// Errors: DataLoss for a file shorter than 8 bytes, a header length beyond the file or over
// `max_header_bytes`, a header that does not start with '{', plus those of
// ParseSafetensorsHeaderJson.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsFile(
    absl::string_view prefix, uint64_t file_size, absl::string_view file,
    uint64_t max_header_bytes = kMaxSafetensorsHeaderBytes);

}  // namespace moec::storage

#endif  // MOEC_STORAGE_SAFETENSORS_FORMAT_H_
