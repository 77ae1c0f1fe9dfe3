// absl::Status <-> grpc::Status, keeping code and message.
#ifndef MOEC_PROTO_RPC_STATUS_H_
#define MOEC_PROTO_RPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace moec {

grpc::Status ToGrpcStatus(const absl::Status& s);
absl::Status FromGrpcStatus(const grpc::Status& s);

}  // namespace moec

#endif  // MOEC_PROTO_RPC_STATUS_H_
