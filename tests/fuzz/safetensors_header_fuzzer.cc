// Fuzzes the safetensors file parser with arbitrary bytes as a whole file. Any crash, sanitizer
// report or accepted header that violates the layout invariants is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "storage/safetensors_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto header = moec::storage::ParseSafetensorsFile(bytes, size, "fuzz.safetensors",
                                                    /*max_header_bytes=*/1 << 20);
  if (header.ok()) {
    // Invariants of an accepted header: ranges tile the data section in order.
    uint64_t cursor = 0;
    for (const auto& t : header->tensors) {
      if (t.begin != cursor || t.end < t.begin) std::abort();
      cursor = t.end;
    }
    if (header->data_offset + cursor != size) std::abort();
  }
  return 0;
}
