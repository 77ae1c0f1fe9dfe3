// Who may call which RPC of the coordinator (docs/operations.md, "Tokens and roles").
//
// Two roles. A client submits, watches, cancels and resumes jobs, lists workers and reads the
// outputs that reports are made of; a worker registers, leases and completes tasks, uses the
// group store and writes and reads factors. A call's roles come from its bearer token (the
// client token, the worker token, or one token that is both) or, under mutual TLS, from its
// verified client certificate's identity (subject common name or a subject alternative name)
// when that identity is listed for a role.
#ifndef MOEC_COORDINATOR_AUTH_H_
#define MOEC_COORDINATOR_AUTH_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"

namespace moec::coordinator {

enum class Role : uint8_t { kClient = 1, kWorker = 2 };

absl::string_view RoleName(Role role);

struct RoleCredentials {
  std::string client_token;  // empty: no token acts as a client
  std::string worker_token;  // empty: no token acts as a worker (may equal client_token: both)
  std::vector<std::string> client_identities;  // certificate identities acting as clients
  std::vector<std::string> worker_identities;
};

class Authenticator {
 public:
  // Errors: InvalidArgument when a role has neither a token nor an identity.
  static absl::StatusOr<Authenticator> Create(RoleCredentials credentials);
  // One token for both roles (a single --token-file).
  static Authenticator SharedToken(std::string token);

  // OK when the call may act as `role`. UNAUTHENTICATED when it carries no token or certificate
  // the coordinator knows; PERMISSION_DENIED when they are another role's.
  template <typename ServerContextT>
  grpc::Status Check(const ServerContextT* ctx, Role role) const {
    return Check(ctx->client_metadata(), ctx->auth_context().get(), role);
  }
  // The roles (bits of Role) that the call's credentials hold.
  template <typename ServerContextT>
  uint8_t RolesOf(const ServerContextT* ctx) const {
    return RolesOf(ctx->client_metadata(), ctx->auth_context().get());
  }

  grpc::Status Check(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                     const grpc::AuthContext* auth, Role role) const;
  uint8_t RolesOf(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                  const grpc::AuthContext* auth) const;

  // Whether `token` is the client token (compared in constant time); the dashboard's login.
  bool IsClientToken(absl::string_view token) const;
  bool HasClientToken() const { return !c_.client_token.empty(); }

 private:
  explicit Authenticator(RoleCredentials c) : c_(std::move(c)) {}
  RoleCredentials c_;
};

// Whether a client may read factor `key` ("<fingerprint>/<output>"): the outputs `moec report`
// and its figures read (the evaluate stages' reports, summaries, routing counts, bit tables,
// kept experts and their scores), never weights, codes or hidden states.
bool ClientMayRead(absl::string_view key);

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_AUTH_H_
