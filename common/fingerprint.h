// SHA-256 fingerprints of canonical bytes: task identities, job identities, content digests.
#ifndef MOEC_COMMON_FINGERPRINT_H_
#define MOEC_COMMON_FINGERPRINT_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace moec {

// Incremental SHA-256 (OpenSSL EVP). Used from one thread only.
//
// Fields are added length-prefixed by AddField so that ("ab","c") and ("a","bc") differ.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  // Appends raw bytes.
  void Update(absl::string_view bytes);
  // Appends an 8-byte little-endian length followed by the bytes.
  void AddField(absl::string_view bytes);
  void AddU64(uint64_t v);

  // Returns the 32-byte digest. The object must not be used afterwards.
  std::array<uint8_t, 32> Finish();
  // Returns the digest as 64 lowercase hex characters.
  std::string FinishHex();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// SHA-256 of `bytes` as lowercase hex.
std::string Sha256Hex(absl::string_view bytes);

}  // namespace moec

#endif  // MOEC_COMMON_FINGERPRINT_H_
