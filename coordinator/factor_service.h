// gRPC adapter of the coordinator's factor store: task outputs in (staged for the held task,
// committed by CompleteTask), committed tensors out, chunk by chunk.
#ifndef MOEC_COORDINATOR_FACTOR_SERVICE_H_
#define MOEC_COORDINATOR_FACTOR_SERVICE_H_

#include <string>

#include "coordinator/coordinator.h"
#include "moec/v1/factor.grpc.pb.h"

namespace moec::coordinator {

// Thread-safe. `core` must outlive the service.
class FactorService final : public v1::FactorService::Service {
 public:
  FactorService(Coordinator* core, std::string token) : core_(core), token_(std::move(token)) {}

  grpc::Status PutFactor(grpc::ServerContext* ctx, grpc::ServerReader<v1::PutFactorRequest>* reader,
                         v1::PutFactorResponse* resp) override;
  grpc::Status GetFactor(grpc::ServerContext* ctx, const v1::GetFactorRequest* req,
                         grpc::ServerWriter<v1::GetFactorResponse>* writer) override;
  grpc::Status StatFactor(grpc::ServerContext* ctx, const v1::StatFactorRequest* req,
                          v1::StatFactorResponse* resp) override;

 private:
  Coordinator* const core_;  // Not owned.
  const std::string token_;
};

// UNAUTHENTICATED unless the call carries "authorization: Bearer <token>" (constant-time).
grpc::Status CheckBearerToken(const grpc::ServerContext* ctx, const std::string& token);
grpc::Status CheckBearerToken(const grpc::CallbackServerContext* ctx, const std::string& token);

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_FACTOR_SERVICE_H_
