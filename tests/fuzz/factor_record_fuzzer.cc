// Fuzzes the FactorStore record decoders: header records and chunk keys.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "storage/factor_record.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto info = moec::storage::DecodeFactorHeader(bytes, "fuzz/key");
  if (info.ok()) {
    // An accepted header's chunks must cover byte_size exactly; a held header (its bytes in
    // workers' activation stores) has none.
    uint64_t total = 0;
    for (size_t i = 0; i < info->num_chunks(); ++i) total += info->ChunkBytes(i);
    if (info->held() ? info->num_chunks() != 0 : total != info->byte_size) std::abort();
    // Re-encoding and decoding gives the same header.
    auto again = moec::storage::DecodeFactorHeader(moec::storage::EncodeFactorHeader(*info), "k");
    if (!again.ok() || again->byte_size != info->byte_size ||
        again->chunk_crc32c != info->chunk_crc32c || again->shape != info->shape ||
        again->holders != info->holders) {
      std::abort();
    }
  }
  auto key = moec::storage::ParseFactorChunkKey(bytes);
  if (key.ok() && moec::storage::FactorChunkKey(key->first, key->second, 0).size() == 0) {
    std::abort();
  }
  return 0;
}
