// gRPC adapter of the coordinator's factor store: task outputs in (staged for the held task,
// committed by CompleteTask), committed tensors out, chunk by chunk.
#ifndef MOEC_COORDINATOR_FACTOR_SERVICE_H_
#define MOEC_COORDINATOR_FACTOR_SERVICE_H_

#include <string>

#include "coordinator/auth.h"
#include "coordinator/coordinator.h"
#include "moec/v1/factor.grpc.pb.h"

namespace moec::coordinator {

// Thread-safe. `core` must outlive the service.
class FactorService final : public v1::FactorService::Service {
 public:
  FactorService(Coordinator* core, Authenticator auth) : core_(core), auth_(std::move(auth)) {}
  // One token for both roles.
  FactorService(Coordinator* core, std::string token)
      : FactorService(core, Authenticator::SharedToken(std::move(token))) {}

  grpc::Status PutFactor(grpc::ServerContext* ctx, grpc::ServerReader<v1::PutFactorRequest>* reader,
                         v1::PutFactorResponse* resp) override;
  grpc::Status GetFactor(grpc::ServerContext* ctx, const v1::GetFactorRequest* req,
                         grpc::ServerWriter<v1::GetFactorResponse>* writer) override;
  grpc::Status StatFactor(grpc::ServerContext* ctx, const v1::StatFactorRequest* req,
                          v1::StatFactorResponse* resp) override;
  grpc::Status RecordFactor(grpc::ServerContext* ctx, const v1::RecordFactorRequest* req,
                            v1::PutFactorResponse* resp) override;

 private:
  // Writes: workers. Reads: workers, and clients for the outputs reports read (ClientMayRead).
  grpc::Status CheckRead(const grpc::ServerContext* ctx, const std::string& key) const;
  // The stat of `key`; for a tensor held by workers, with the holders registered now.
  void FillStat(const std::string& key, const storage::FactorInfo& info, v1::FactorStat* out) const;

  Coordinator* const core_;  // Not owned.
  const Authenticator auth_;
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_FACTOR_SERVICE_H_
