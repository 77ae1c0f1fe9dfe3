// The two ends of a FactorService.GetFactor stream, shared by the coordinator's factor service,
// the workers' activation servers and their clients: the stat message first, then the tensor's
// bytes in pieces of at most 1 MiB (under gRPC's default 4 MiB message limit).
#ifndef MOEC_PROTO_FACTOR_STREAM_H_
#define MOEC_PROTO_FACTOR_STREAM_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/sync_stream.h"
#include "moec/v1/factor.pb.h"
#include "storage/factor_store.h"

namespace moec {

// The stat fields of `info` (not its holders).
void FillFactorStat(const std::string& key, const storage::FactorInfo& info, v1::FactorStat* out);

// Writes `head` (the stat), then the bytes of `key` (header `info`) read chunk by chunk from
// `store`, each chunk's CRC32C checked. Nothing but the head for a tensor held elsewhere.
grpc::Status WriteFactorStream(const storage::FactorStore& store, const std::string& key,
                               const storage::FactorInfo& info, const v1::GetFactorResponse& head,
                               grpc::ServerWriterInterface<v1::GetFactorResponse>* writer);

// Reads a GetFactor stream of `key` to its end. *stat receives the stat message (its holders
// included). A tensor held elsewhere (stat->held()) comes back with no bytes. Errors: the call's;
// DataLoss carrying `key` for an incomplete stream or bytes whose CRC32C differs from the stat's.
absl::StatusOr<storage::Factor> ReadFactorStream(
    grpc::ClientReaderInterface<v1::GetFactorResponse>* reader, const std::string& key,
    v1::FactorStat* stat);

}  // namespace moec

#endif  // MOEC_PROTO_FACTOR_STREAM_H_
