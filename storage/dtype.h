// Element types of tensors, named as safetensors names them. Shared by the safetensors reader
// and writer and by the FactorStore.
#ifndef MOEC_STORAGE_DTYPE_H_
#define MOEC_STORAGE_DTYPE_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace moec::storage {

// Declared in the order of safetensors' Rust `Dtype` enum: the Hugging Face writer sorts
// tensors by this order, descending, then by name, and so does ours (byte compatibility).
enum class DType : uint8_t {
  kBool,
  kF4,
  kF6E2M3,
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kF8E4M3Fnuz,
  kF8E5M2Fnuz,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};

// Bits per element (4 for F4, 6 for F6_*, 8 for BOOL and F8_*).
int DTypeBits(DType t);

// The safetensors name: "F32", "BF16", "F8_E4M3", ...
absl::string_view DTypeName(DType t);

// Parses a safetensors dtype name. Unknown names give nullopt.
std::optional<DType> ParseDType(absl::string_view name);

// Bytes taken by `shape` elements of `t`.
// Errors: InvalidArgument for a negative dimension, an element count or byte size that
// overflows 64 bits, or a bit count that is not a whole number of bytes.
absl::StatusOr<uint64_t> TensorByteSize(DType t, absl::Span<const int64_t> shape);

}  // namespace moec::storage

#endif  // MOEC_STORAGE_DTYPE_H_
