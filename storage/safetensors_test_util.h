// Builds raw safetensors bytes for tests: any JSON header text (valid or hostile) + data.
#ifndef MOEC_STORAGE_SAFETENSORS_TEST_UTIL_H_
#define MOEC_STORAGE_SAFETENSORS_TEST_UTIL_H_

#include <string>

namespace moec::storage::testing {

// 8-byte little-endian length of `header` (unpadded), the header, then `data`.
inline std::string RawSafetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

}  // namespace moec::storage::testing

#endif  // MOEC_STORAGE_SAFETENSORS_TEST_UTIL_H_
