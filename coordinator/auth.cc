#include "coordinator/auth.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"

namespace moec::coordinator {
namespace {

uint8_t Bit(Role r) { return static_cast<uint8_t>(r); }

// Constant-time comparison of a presented "Bearer <token>" with `token` (empty: never).
bool Presents(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
              const std::string& token) {
  if (token.empty()) return false;
  const std::string expected = "Bearer " + token;
  auto range = metadata.equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    if (it->second.size() == expected.size() &&
        CRYPTO_memcmp(it->second.data(), expected.data(), expected.size()) == 0) {
      return true;
    }
  }
  return false;
}

// The verified client certificate's identities (empty without mutual TLS).
std::vector<std::string> PeerIdentities(const grpc::AuthContext* auth) {
  std::vector<std::string> out;
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return out;
  for (const char* property : {"x509_common_name", "x509_subject_alternative_name"}) {
    for (const grpc::string_ref& v : auth->FindPropertyValues(property)) {
      out.emplace_back(v.data(), v.size());
    }
  }
  return out;
}

bool AnyListed(const std::vector<std::string>& identities, const std::vector<std::string>& listed) {
  for (const std::string& id : identities) {
    if (std::find(listed.begin(), listed.end(), id) != listed.end()) return true;
  }
  return false;
}

}  // namespace

absl::string_view RoleName(Role role) { return role == Role::kClient ? "client" : "worker"; }

absl::StatusOr<Authenticator> Authenticator::Create(RoleCredentials c) {
  if (c.client_token.empty() && c.client_identities.empty()) {
    return absl::InvalidArgumentError("no client token and no client certificate identity");
  }
  if (c.worker_token.empty() && c.worker_identities.empty()) {
    return absl::InvalidArgumentError("no worker token and no worker certificate identity");
  }
  return Authenticator(std::move(c));
}

Authenticator Authenticator::SharedToken(std::string token) {
  RoleCredentials c;
  c.client_token = token;
  c.worker_token = std::move(token);
  return Authenticator(std::move(c));
}

uint8_t Authenticator::RolesOf(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                               const grpc::AuthContext* auth) const {
  uint8_t roles = 0;
  if (Presents(metadata, c_.client_token)) roles |= Bit(Role::kClient);
  if (Presents(metadata, c_.worker_token)) roles |= Bit(Role::kWorker);
  if (!c_.client_identities.empty() || !c_.worker_identities.empty()) {
    const std::vector<std::string> ids = PeerIdentities(auth);
    if (AnyListed(ids, c_.client_identities)) roles |= Bit(Role::kClient);
    if (AnyListed(ids, c_.worker_identities)) roles |= Bit(Role::kWorker);
  }
  return roles;
}

grpc::Status Authenticator::Check(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                                  const grpc::AuthContext* auth, Role role) const {
  const uint8_t roles = RolesOf(metadata, auth);
  if (roles & Bit(role)) return grpc::Status::OK;
  if (roles == 0) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing or wrong bearer token (and no known client certificate)");
  }
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat("this call needs the ", RoleName(role), " role; the credentials "
                                   "presented are the ",
                                   RoleName(role == Role::kClient ? Role::kWorker : Role::kClient),
                                   "'s"));
}

bool Authenticator::IsClientToken(absl::string_view token) const {
  return !c_.client_token.empty() && token.size() == c_.client_token.size() &&
         CRYPTO_memcmp(token.data(), c_.client_token.data(), token.size()) == 0;
}

bool ClientMayRead(absl::string_view key) {
  static const std::set<absl::string_view, std::less<>> kReadable = {
      outputs::kReport,       outputs::kSummary,      outputs::kExpertTokens,
      outputs::kRoutingMass,  outputs::kSoftmaxMass,  outputs::kP2P1Median,
      outputs::kRouterEntropy, outputs::kTokens,      outputs::kQuantLoss,
      outputs::kLossBits,     outputs::kExpertBits,   outputs::kObjective,
      outputs::kAverageBits,  outputs::kKeptExperts,  outputs::kPruneLosses,
      outputs::kPruneLoss,    outputs::kSkipBeta,     outputs::kKeptMask,
      outputs::kDropScores,   outputs::kDroppedMoeLayers, outputs::kDroppedLayers,
      outputs::kSimilarity,   outputs::kOdpBeta,      outputs::kOdpLoss,
      outputs::kOdpSkipped,   outputs::kEnabledLayers};
  const size_t slash = key.find('/');
  if (slash == absl::string_view::npos || slash == 0) return false;
  return kReadable.count(key.substr(slash + 1)) > 0;
}

}  // namespace moec::coordinator
