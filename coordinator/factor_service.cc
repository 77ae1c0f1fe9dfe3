#include <algorithm>

#include "coordinator/factor_service.h"

#include "absl/strings/str_cat.h"
#include "proto/factor_stream.h"
#include "proto/rpc_status.h"

namespace moec::coordinator {
namespace {

// Reads the data messages that follow a PutFactor header.
class StreamSource : public ChunkSource {
 public:
  explicit StreamSource(grpc::ServerReader<v1::PutFactorRequest>* reader) : reader_(reader) {}
  absl::StatusOr<bool> Next(std::string* chunk) override {
    v1::PutFactorRequest req;
    if (!reader_->Read(&req)) return false;
    if (!req.has_data()) return absl::InvalidArgumentError("PutFactor: a second header in the stream");
    *chunk = std::move(*req.mutable_data());
    return true;
  }

 private:
  grpc::ServerReader<v1::PutFactorRequest>* reader_;
};

}  // namespace

void FactorService::FillStat(const std::string& key, const storage::FactorInfo& info,
                             v1::FactorStat* out) const {
  FillFactorStat(key, info, out);
  for (const WorkerRegistry::View& w : core_->HoldersOf(info.holders)) {
    v1::FactorHolder* h = out->add_holders();
    h->set_store_id(w.info.store_id);
    h->set_worker_id(w.worker_id);
    h->set_address(w.info.data_address);
  }
}

grpc::Status FactorService::CheckRead(const grpc::ServerContext* ctx, const std::string& key) const {
  const uint8_t roles = auth_.RolesOf(ctx);
  if (roles & static_cast<uint8_t>(Role::kWorker)) return grpc::Status::OK;
  if ((roles & static_cast<uint8_t>(Role::kClient)) && ClientMayRead(key)) return grpc::Status::OK;
  if (roles == 0) return auth_.Check(ctx, Role::kWorker);  // UNAUTHENTICATED
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat("a client reads only the outputs reports are made of, not ", key));
}

grpc::Status FactorService::PutFactor(grpc::ServerContext* ctx,
                                      grpc::ServerReader<v1::PutFactorRequest>* reader,
                                      v1::PutFactorResponse* resp) {
  if (grpc::Status a = auth_.Check(ctx, Role::kWorker); !a.ok()) return a;
  v1::PutFactorRequest first;
  if (!reader->Read(&first) || !first.has_header()) {
    return ToGrpcStatus(absl::InvalidArgumentError("PutFactor: the stream must start with a header"));
  }
  const v1::FactorPutHeader& h = first.header();
  std::optional<storage::DType> dtype = storage::ParseDType(h.dtype());
  if (!dtype) return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("unknown dtype '", h.dtype(), "'")));
  std::vector<int64_t> shape(h.shape().begin(), h.shape().end());
  StreamSource source(reader);
  absl::StatusOr<std::string> key =
      core_->PutTaskOutput(h.worker_id(), h.task_id(), h.name(), *dtype, shape, source);
  if (!key.ok()) return ToGrpcStatus(key.status());
  resp->set_key(*key);
  return grpc::Status::OK;
}

grpc::Status FactorService::RecordFactor(grpc::ServerContext* ctx, const v1::RecordFactorRequest* req,
                                         v1::PutFactorResponse* resp) {
  if (grpc::Status a = auth_.Check(ctx, Role::kWorker); !a.ok()) return a;
  const v1::FactorPutHeader& h = req->header();
  std::optional<storage::DType> dtype = storage::ParseDType(h.dtype());
  if (!dtype) return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("unknown dtype '", h.dtype(), "'")));
  std::vector<int64_t> shape(h.shape().begin(), h.shape().end());
  absl::StatusOr<std::string> key = core_->RecordTaskOutput(
      h.worker_id(), h.task_id(), h.name(), *dtype, shape, req->crc32c(), req->store_id());
  if (!key.ok()) return ToGrpcStatus(key.status());
  resp->set_key(*key);
  return grpc::Status::OK;
}

grpc::Status FactorService::GetFactor(grpc::ServerContext* ctx, const v1::GetFactorRequest* req,
                                      grpc::ServerWriter<v1::GetFactorResponse>* writer) {
  if (grpc::Status a = CheckRead(ctx, req->key()); !a.ok()) return a;
  storage::FactorStore* factors = core_->factors();
  if (factors == nullptr) return ToGrpcStatus(absl::FailedPreconditionError("no factor store"));
  absl::StatusOr<storage::FactorInfo> info = factors->Stat(req->key());
  if (!info.ok()) return ToGrpcStatus(info.status());
  v1::GetFactorResponse head;
  FillStat(req->key(), *info, head.mutable_stat());
  // A tensor held by workers: the stat alone, naming the holders the reader fetches it from.
  return WriteFactorStream(*factors, req->key(), *info, head, writer);
}

grpc::Status FactorService::StatFactor(grpc::ServerContext* ctx, const v1::StatFactorRequest* req,
                                       v1::StatFactorResponse* resp) {
  if (grpc::Status a = CheckRead(ctx, req->key()); !a.ok()) return a;
  if (core_->factors() == nullptr) return ToGrpcStatus(absl::FailedPreconditionError("no factor store"));
  absl::StatusOr<storage::FactorInfo> info = core_->factors()->Stat(req->key());
  if (!info.ok()) return ToGrpcStatus(info.status());
  FillStat(req->key(), *info, resp->mutable_stat());
  return grpc::Status::OK;
}

}  // namespace moec::coordinator
