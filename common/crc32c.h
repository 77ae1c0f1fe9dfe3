// CRC32C (Castagnoli), as used by RocksDB, iSCSI and ext4. Hardware (SSE4.2) when the CPU has it,
// a slicing-by-8 table otherwise; both give identical results.
#ifndef MOEC_COMMON_CRC32C_H_
#define MOEC_COMMON_CRC32C_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace moec::crc32c {

// Returns the CRC32C of data[0, n) continuing from `crc` (the value returned for the bytes
// before). Extend(0, ...) starts a new checksum. Thread-safe.
uint32_t Extend(uint32_t crc, const void* data, size_t n);

inline uint32_t Value(const void* data, size_t n) { return Extend(0, data, n); }
inline uint32_t Value(absl::string_view s) { return Extend(0, s.data(), s.size()); }

// Returns the CRC32C of A||B given crc_a = Value(A), crc_b = Value(B) and len_b = |B|, in
// O(log len_b) time without touching the bytes (zlib's crc32_combine method).
uint32_t Combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

// The portable implementation, exposed so tests can check it against the hardware path.
uint32_t ExtendPortable(uint32_t crc, const void* data, size_t n);

// True when Extend uses the SSE4.2 crc32 instruction.
bool HardwareAccelerated();

}  // namespace moec::crc32c

#endif  // MOEC_COMMON_CRC32C_H_
