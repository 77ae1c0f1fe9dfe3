#include "storage/dtype.h"

#include <array>
#include <utility>

#include "absl/strings/str_cat.h"

namespace moec::storage {
namespace {

struct DTypeInfo {
  DType type;
  absl::string_view name;
  int bits;
};

constexpr std::array<DTypeInfo, 22> kInfos = {{
    {DType::kBool, "BOOL", 8},
    {DType::kF4, "F4", 4},
    {DType::kF6E2M3, "F6_E2M3", 6},
    {DType::kF6E3M2, "F6_E3M2", 6},
    {DType::kU8, "U8", 8},
    {DType::kI8, "I8", 8},
    {DType::kF8E5M2, "F8_E5M2", 8},
    {DType::kF8E4M3, "F8_E4M3", 8},
    {DType::kF8E8M0, "F8_E8M0", 8},
    {DType::kF8E4M3Fnuz, "F8_E4M3FNUZ", 8},
    {DType::kF8E5M2Fnuz, "F8_E5M2FNUZ", 8},
    {DType::kI16, "I16", 16},
    {DType::kU16, "U16", 16},
    {DType::kF16, "F16", 16},
    {DType::kBF16, "BF16", 16},
    {DType::kI32, "I32", 32},
    {DType::kU32, "U32", 32},
    {DType::kF32, "F32", 32},
    {DType::kC64, "C64", 64},
    {DType::kF64, "F64", 64},
    {DType::kI64, "I64", 64},
    {DType::kU64, "U64", 64},
}};

const DTypeInfo& Info(DType t) { return kInfos[static_cast<size_t>(t)]; }

}  // namespace

int DTypeBits(DType t) { return Info(t).bits; }

absl::string_view DTypeName(DType t) { return Info(t).name; }

std::optional<DType> ParseDType(absl::string_view name) {
  for (const auto& info : kInfos) {
    if (info.name == name) return info.type;
  }
  return std::nullopt;
}

absl::StatusOr<uint64_t> TensorByteSize(DType t, absl::Span<const int64_t> shape) {
  uint64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative dimension ", d));
    uint64_t next;
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(d), &next)) {
      return absl::InvalidArgumentError("element count overflows 64 bits");
    }
    elements = next;
  }
  uint64_t bits;
  if (__builtin_mul_overflow(elements, static_cast<uint64_t>(DTypeBits(t)), &bits)) {
    return absl::InvalidArgumentError("bit count overflows 64 bits");
  }
  if (bits % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(elements, " elements of ", DTypeName(t),
                                                   " are not a whole number of bytes"));
  }
  return bits / 8;
}

}  // namespace moec::storage
