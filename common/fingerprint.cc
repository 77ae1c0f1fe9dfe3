#include "common/fingerprint.h"

#include <openssl/evp.h>

#include "absl/strings/escaping.h"
#include "glog/logging.h"

namespace moec {

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  impl_->ctx = EVP_MD_CTX_new();
  CHECK(impl_->ctx != nullptr) << "EVP_MD_CTX_new failed (out of memory)";
  CHECK_EQ(EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr), 1);
}

Sha256::~Sha256() { EVP_MD_CTX_free(impl_->ctx); }

void Sha256::Update(absl::string_view bytes) {
  CHECK_EQ(EVP_DigestUpdate(impl_->ctx, bytes.data(), bytes.size()), 1);
}

void Sha256::AddU64(uint64_t v) {
  char buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  Update(absl::string_view(buf, 8));
}

void Sha256::AddField(absl::string_view bytes) {
  AddU64(bytes.size());
  Update(bytes);
}

std::array<uint8_t, 32> Sha256::Finish() {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  CHECK_EQ(EVP_DigestFinal_ex(impl_->ctx, out.data(), &len), 1);
  CHECK_EQ(len, 32u);
  return out;
}

std::string Sha256::FinishHex() {
  auto d = Finish();
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

std::string Sha256Hex(absl::string_view bytes) {
  Sha256 h;
  h.Update(bytes);
  return h.FinishHex();
}

}  // namespace moec
