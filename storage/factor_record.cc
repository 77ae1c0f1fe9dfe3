#include "storage/factor_record.h"

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "moec/v1/tensor.pb.h"

namespace moec::storage {
namespace {

absl::Status Corrupt(absl::string_view key, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("factor '", key, "': corrupt header: ", what));
}

}  // namespace

uint64_t FactorInfo::ChunkBytes(size_t i) const {
  uint64_t begin = static_cast<uint64_t>(i) * chunk_size;
  return std::min(chunk_size, byte_size - begin);
}

std::string EncodeFactorHeader(const FactorInfo& info) {
  moec::v1::FactorHeader h;
  h.set_format_version(kFactorFormatVersion);
  h.set_dtype(std::string(DTypeName(info.dtype)));
  for (int64_t d : info.shape) h.add_shape(d);
  h.set_byte_size(info.byte_size);
  h.set_crc32c(info.crc32c);
  h.set_chunk_size(info.chunk_size);
  for (uint32_t c : info.chunk_crc32c) h.add_chunk_crc32c(c);
  h.set_generation(info.generation);
  for (const std::string& holder : info.holders) h.add_holders(holder);
  std::string out;
  h.SerializeToString(&out);
  return out;
}

absl::StatusOr<FactorInfo> DecodeFactorHeader(absl::string_view bytes, absl::string_view key) {
  moec::v1::FactorHeader h;
  if (bytes.size() > (1u << 24) || !h.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return Corrupt(key, "not a FactorHeader record");
  }
  if (h.format_version() != kFactorFormatVersion) {
    return Corrupt(key, absl::StrCat("unknown format version ", h.format_version()));
  }
  FactorInfo info;
  std::optional<DType> dtype = ParseDType(h.dtype());
  if (!dtype) return Corrupt(key, absl::StrCat("unknown dtype '", h.dtype(), "'"));
  info.dtype = *dtype;
  if (static_cast<size_t>(h.shape_size()) > kMaxFactorRank) {
    return Corrupt(key, absl::StrCat("rank ", h.shape_size(), " over ", kMaxFactorRank));
  }
  info.shape.assign(h.shape().begin(), h.shape().end());
  absl::StatusOr<uint64_t> expected = TensorByteSize(info.dtype, info.shape);
  if (!expected.ok()) return Corrupt(key, expected.status().message());
  if (*expected != h.byte_size()) {
    return Corrupt(key, absl::StrCat("shape x dtype is ", *expected, " bytes, header says ",
                                     h.byte_size()));
  }
  if (h.byte_size() > kMaxFactorBytes) return Corrupt(key, "tensor over 1 TiB");
  info.byte_size = h.byte_size();
  info.crc32c = h.crc32c();
  info.chunk_size = h.chunk_size();
  info.generation = h.generation();
  if (static_cast<size_t>(h.holders_size()) > kMaxFactorHolders) {
    return Corrupt(key, absl::StrCat(h.holders_size(), " holders, over ", kMaxFactorHolders));
  }
  for (const std::string& holder : h.holders()) {
    if (holder.empty() || holder.size() > kMaxHolderIdBytes) return Corrupt(key, "bad holder id");
    info.holders.push_back(holder);
  }
  uint64_t chunks = 0;
  if (info.byte_size > 0 && !info.held()) {
    if (info.chunk_size == 0 || info.chunk_size > kMaxFactorChunkBytes) {
      return Corrupt(key, absl::StrCat("chunk size ", info.chunk_size, " out of range"));
    }
    chunks = (info.byte_size + info.chunk_size - 1) / info.chunk_size;
  }
  if (static_cast<uint64_t>(h.chunk_crc32c_size()) != chunks) {
    return Corrupt(key, absl::StrCat(h.chunk_crc32c_size(), " chunk checksums for ", chunks,
                                     " chunks"));
  }
  info.chunk_crc32c.assign(h.chunk_crc32c().begin(), h.chunk_crc32c().end());
  return info;
}

absl::Status ValidateFactorKey(absl::string_view key) {
  if (key.empty() || key.size() > kMaxFactorKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("factor key must be 1..", kMaxFactorKeyBytes, " bytes, got ", key.size()));
  }
  if (key.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("factor key contains a NUL byte");
  }
  return absl::OkStatus();
}

std::string FactorHeaderKey(absl::string_view key) { return absl::StrCat(kFactorHeaderPrefix, key); }

std::string FactorChunkPrefix(absl::string_view key) {
  std::string s = absl::StrCat(kFactorChunkPrefix, key);
  s.push_back('\0');
  return s;
}

std::string FactorChunkKey(absl::string_view key, uint64_t generation, uint32_t index) {
  return absl::StrCat(FactorChunkPrefix(key), absl::StrFormat("%016x/%08x", generation, index));
}

absl::StatusOr<std::pair<std::string, uint64_t>> ParseFactorChunkKey(absl::string_view ck) {
  // "c/" key "\0" 16 hex "/" 8 hex
  constexpr size_t kTail = 1 + 16 + 1 + 8;
  if (ck.size() < kFactorChunkPrefix.size() + 1 + kTail || ck.substr(0, 2) != kFactorChunkPrefix ||
      ck[ck.size() - kTail] != '\0' || ck[ck.size() - 9] != '/') {
    return absl::DataLossError(absl::StrCat("malformed chunk key '", absl::CHexEscape(ck), "'"));
  }
  uint64_t gen = 0;
  if (!absl::SimpleHexAtoi(ck.substr(ck.size() - kTail + 1, 16), &gen)) {
    return absl::DataLossError(absl::StrCat("malformed chunk key '", absl::CHexEscape(ck), "'"));
  }
  std::string key(ck.substr(2, ck.size() - kTail - 2));
  return std::make_pair(std::move(key), gen);
}

}  // namespace moec::storage
