#include "proto/rpc_status.h"

#include <string>

namespace moec {

// The numeric codes of absl::StatusCode and grpc::StatusCode are the same (both follow
// google.rpc.Code), so conversion is a cast.
grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace moec
