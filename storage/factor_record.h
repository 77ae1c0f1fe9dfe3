// Encoding of FactorStore records (docs/formats/factor_store.md): the header record (a
// moec.v1.FactorHeader proto) and the key schema of headers and chunks.
#ifndef MOEC_STORAGE_FACTOR_RECORD_H_
#define MOEC_STORAGE_FACTOR_RECORD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/dtype.h"

namespace moec::storage {

inline constexpr uint32_t kFactorFormatVersion = 1;
// Bounds a decoder accepts (hostile records must not make it allocate or loop without bound).
inline constexpr uint64_t kMaxFactorBytes = 1ull << 40;       // 1 TiB per tensor
inline constexpr uint64_t kMaxFactorChunkBytes = 1ull << 30;  // 1 GiB per chunk
inline constexpr size_t kMaxFactorRank = 16;
inline constexpr size_t kMaxFactorKeyBytes = 1024;
inline constexpr size_t kMaxFactorHolders = 16;
inline constexpr size_t kMaxHolderIdBytes = 128;

// A decoded, validated header record.
struct FactorInfo {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t byte_size = 0;
  uint32_t crc32c = 0;
  uint64_t chunk_size = 0;
  std::vector<uint32_t> chunk_crc32c;
  uint64_t generation = 0;
  // Non-empty: the bytes live in these workers' activation stores (their store ids), not in
  // this store, which keeps only this header (no chunks).
  std::vector<std::string> holders;

  bool held() const { return !holders.empty(); }
  size_t num_chunks() const { return chunk_crc32c.size(); }
  // Bytes of chunk i (the last one may be short).
  uint64_t ChunkBytes(size_t i) const;
};

// Serializes a header record.
std::string EncodeFactorHeader(const FactorInfo& info);

// Parses and validates a header record stored under factor `key`.
// Errors: DataLoss naming the key when the bytes are not a header, the version is unknown, the
// dtype is unknown, the rank or sizes exceed the bounds above, shape x dtype != byte_size, or
// the chunk list does not match byte_size / chunk_size (a held header has none), or the holders
// exceed kMaxFactorHolders or kMaxHolderIdBytes.
absl::StatusOr<FactorInfo> DecodeFactorHeader(absl::string_view bytes, absl::string_view key);

// Factor keys are 1..1024 bytes with no NUL. Errors: InvalidArgument.
absl::Status ValidateFactorKey(absl::string_view key);

// Key schema inside the factor column family.
std::string FactorHeaderKey(absl::string_view key);                  // "h/<key>"
std::string FactorChunkPrefix(absl::string_view key);                // "c/<key>\0"
std::string FactorChunkKey(absl::string_view key, uint64_t generation, uint32_t index);
inline constexpr absl::string_view kFactorHeaderPrefix = "h/";
inline constexpr absl::string_view kFactorChunkPrefix = "c/";

// Splits a chunk key into (factor key, generation). Errors: DataLoss for a malformed key.
absl::StatusOr<std::pair<std::string, uint64_t>> ParseFactorChunkKey(absl::string_view chunk_key);

}  // namespace moec::storage

#endif  // MOEC_STORAGE_FACTOR_RECORD_H_
