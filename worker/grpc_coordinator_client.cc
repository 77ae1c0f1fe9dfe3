#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_payloads.h"
#include "grpcpp/grpcpp.h"
#include "proto/channel_credentials.h"
#include "moec/v1/coordinator.grpc.pb.h"
#include "moec/v1/factor.grpc.pb.h"
#include "common/status_macros.h"
#include "proto/factor_stream.h"
#include "proto/rpc_status.h"
#include "worker/coordinator_client.h"

namespace moec::worker {
namespace {

// Pieces of at most this many bytes per PutFactor message (under the 32 MiB message limit).
constexpr size_t kPieceBytes = 4 << 20;

std::optional<Lease> ToLease(const v1::LeaseTaskResponse& resp) {
  if (!resp.granted()) return std::nullopt;
  return Lease{resp.task(), resp.rank(), {resp.group().begin(), resp.group().end()},
               resp.recipe_json(), resp.overwrite(),
               {resp.input_fingerprints().begin(), resp.input_fingerprints().end()}};
}

class GrpcCoordinatorClient : public CoordinatorClient {
 public:
  GrpcCoordinatorClient(std::shared_ptr<grpc::Channel> channel, GrpcClientOptions options)
      : stub_(v1::CoordinatorService::NewStub(channel)),
        factor_stub_(v1::FactorService::NewStub(channel)),
        options_(std::move(options)) {}

  absl::StatusOr<std::string> PutOutput(const std::string& worker_id, const std::string& task_id,
                                        const std::string& name, storage::DType dtype,
                                        absl::Span<const int64_t> shape,
                                        absl::string_view data) override {
    v1::PutFactorResponse resp;
    auto ctx = Context();
    auto writer = factor_stub_->PutFactor(ctx.get(), &resp);
    v1::PutFactorRequest head;
    v1::FactorPutHeader* h = head.mutable_header();
    h->set_worker_id(worker_id);
    h->set_task_id(task_id);
    h->set_name(name);
    h->set_dtype(std::string(storage::DTypeName(dtype)));
    for (int64_t d : shape) h->add_shape(d);
    bool ok = writer->Write(head);
    for (size_t off = 0; ok && off < data.size(); off += kPieceBytes) {
      v1::PutFactorRequest part;
      part.set_data(std::string(data.substr(off, kPieceBytes)));
      ok = writer->Write(part);
    }
    writer->WritesDone();
    absl::Status s = FromGrpcStatus(writer->Finish());
    if (!s.ok()) return s;
    return resp.key();
  }

  absl::StatusOr<std::string> RecordOutput(const std::string& worker_id,
                                           const std::string& task_id, const std::string& name,
                                           storage::DType dtype, absl::Span<const int64_t> shape,
                                           uint32_t crc32c, const std::string& store_id) override {
    v1::RecordFactorRequest req;
    v1::FactorPutHeader* h = req.mutable_header();
    h->set_worker_id(worker_id);
    h->set_task_id(task_id);
    h->set_name(name);
    h->set_dtype(std::string(storage::DTypeName(dtype)));
    for (int64_t d : shape) h->add_shape(d);
    req.set_crc32c(crc32c);
    req.set_store_id(store_id);
    v1::PutFactorResponse resp;
    auto ctx = Context();
    MOEC_RETURN_IF_ERROR(FromGrpcStatus(factor_stub_->RecordFactor(ctx.get(), req, &resp)));
    return resp.key();
  }

  absl::StatusOr<storage::Factor> GetFactor(const std::string& key,
                                            std::vector<Holder>* holders) override {
    v1::GetFactorRequest req;
    req.set_key(key);
    auto ctx = Context();
    auto reader = factor_stub_->GetFactor(ctx.get(), req);
    v1::FactorStat stat;
    MOEC_ASSIGN_OR_RETURN(storage::Factor f, ReadFactorStream(reader.get(), key, &stat));
    if (holders != nullptr) {
      holders->clear();
      for (const v1::FactorHolder& h : stat.holders()) {
        holders->push_back({h.store_id(), h.worker_id(), h.address()});
      }
    }
    return f;
  }

  absl::StatusOr<std::string> RegisterWorker(const Registration& r) override {
    v1::RegisterWorkerRequest req;
    req.set_name(r.name);
    req.set_previous_worker_id(r.previous_id);
    req.set_gpu(r.gpu);
    req.set_memory_bytes(r.memory_bytes);
    req.set_device_memory_bytes(r.device_memory_bytes);
    req.set_store_id(r.store_id);
    req.set_data_address(r.data_address);
    v1::RegisterWorkerResponse resp;
    auto ctx = Context();
    absl::Status s = FromGrpcStatus(stub_->RegisterWorker(ctx.get(), req, &resp));
    if (!s.ok()) return s;
    return resp.worker_id();
  }

  absl::StatusOr<std::vector<std::string>> Heartbeat(
      const std::string& worker_id, const std::vector<std::string>& running) override {
    v1::HeartbeatRequest req;
    req.set_worker_id(worker_id);
    for (const std::string& id : running) req.add_running_task_ids(id);
    v1::HeartbeatResponse resp;
    auto ctx = Context();
    absl::Status s = FromGrpcStatus(stub_->Heartbeat(ctx.get(), req, &resp));
    if (!s.ok()) return s;
    return std::vector<std::string>(resp.cancelled_task_ids().begin(),
                                    resp.cancelled_task_ids().end());
  }

  absl::StatusOr<std::optional<Lease>> LeaseTask(const std::string& worker_id) override {
    v1::LeaseTaskRequest req;
    req.set_worker_id(worker_id);
    req.set_wait_ms(options_.lease_wait_ms);
    v1::LeaseTaskResponse resp;
    auto ctx = Context(options_.lease_wait_ms);
    {
      absl::MutexLock lock(&wait_mu_);
      if (waits_cancelled_) return absl::CancelledError("the worker is stopping");
      waiting_ = ctx.get();
    }
    absl::Status s = FromGrpcStatus(stub_->LeaseTask(ctx.get(), req, &resp));
    {
      absl::MutexLock lock(&wait_mu_);
      waiting_ = nullptr;
    }
    if (!s.ok()) return s;
    return ToLease(resp);
  }

  void CancelWaits() override {
    absl::MutexLock lock(&wait_mu_);
    waits_cancelled_ = true;
    if (waiting_ != nullptr) waiting_->TryCancel();
  }

  absl::StatusOr<bool> ReportProgress(const std::string& worker_id, const std::string& task_id,
                                      double fraction, const std::string& message) override {
    v1::ReportProgressRequest req;
    req.set_worker_id(worker_id);
    req.set_task_id(task_id);
    req.set_fraction(fraction);
    req.set_message(message);
    v1::ReportProgressResponse resp;
    auto ctx = Context();
    absl::Status s = FromGrpcStatus(stub_->ReportProgress(ctx.get(), req, &resp));
    if (!s.ok()) return s;
    return resp.cancelled();
  }

  absl::Status CompleteTask(const std::string& worker_id, const std::string& task_id,
                            int64_t compute_ms, const v1::TaskProfile& profile,
                            std::optional<Lease>* next) override {
    v1::CompleteTaskRequest req;
    req.set_compute_ms(compute_ms);
    *req.mutable_profile() = profile;
    req.set_worker_id(worker_id);
    req.set_task_id(task_id);
    req.set_lease_next(next != nullptr);
    v1::CompleteTaskResponse resp;
    auto ctx = Context();
    absl::Status s = FromGrpcStatus(stub_->CompleteTask(ctx.get(), req, &resp));
    if (s.ok() && next != nullptr) *next = ToLease(resp.next());
    return s;
  }

  absl::Status FailTask(const std::string& worker_id, const std::string& task_id,
                        const absl::Status& error, bool retriable) override {
    v1::FailTaskRequest req;
    req.set_worker_id(worker_id);
    req.set_task_id(task_id);
    req.set_code(static_cast<int>(error.code()));
    req.set_message(std::string(error.message()));
    req.set_retriable(retriable);
    if (std::optional<std::string> key = FactorKeyOf(error); key.has_value()) {
      req.set_factor_key(*key);
    }
    v1::FailTaskResponse resp;
    auto ctx = Context();
    return FromGrpcStatus(stub_->FailTask(ctx.get(), req, &resp));
  }

  absl::Status ReleaseTask(const std::string& worker_id, const std::string& task_id) override {
    v1::ReleaseTaskRequest req;
    req.set_worker_id(worker_id);
    req.set_task_id(task_id);
    v1::ReleaseTaskResponse resp;
    auto ctx = Context();
    return FromGrpcStatus(stub_->ReleaseTask(ctx.get(), req, &resp));
  }

  absl::Status GroupStoreSet(const std::string& worker_id, const std::string& task_id,
                             int attempt, const std::string& key,
                             const std::string& value) override {
    v1::GroupStoreSetRequest req;
    req.set_worker_id(worker_id);
    req.set_task_id(task_id);
    req.set_attempt(attempt);
    req.set_key(key);
    req.set_value(value);
    v1::GroupStoreSetResponse resp;
    auto ctx = Context();
    return FromGrpcStatus(stub_->GroupStoreSet(ctx.get(), req, &resp));
  }

  absl::StatusOr<std::optional<std::string>> GroupStoreGet(const std::string& worker_id,
                                                           const std::string& task_id,
                                                           int attempt, const std::string& key,
                                                           int64_t wait_ms) override {
    v1::GroupStoreGetRequest req;
    req.set_worker_id(worker_id);
    req.set_task_id(task_id);
    req.set_attempt(attempt);
    req.set_key(key);
    req.set_wait_ms(wait_ms);
    v1::GroupStoreGetResponse resp;
    auto ctx = Context(wait_ms);
    absl::Status s = FromGrpcStatus(stub_->GroupStoreGet(ctx.get(), req, &resp));
    if (!s.ok()) return s;
    if (!resp.found()) return std::optional<std::string>();
    return std::optional<std::string>(resp.value());
  }

  absl::StatusOr<int64_t> GroupStoreAdd(const std::string& worker_id, const std::string& task_id,
                                        int attempt, const std::string& key,
                                        int64_t delta) override {
    v1::GroupStoreAddRequest req;
    req.set_worker_id(worker_id);
    req.set_task_id(task_id);
    req.set_attempt(attempt);
    req.set_key(key);
    req.set_delta(delta);
    v1::GroupStoreAddResponse resp;
    auto ctx = Context();
    absl::Status s = FromGrpcStatus(stub_->GroupStoreAdd(ctx.get(), req, &resp));
    if (!s.ok()) return s;
    return resp.value();
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context(int64_t extra_ms = 0) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(options_.rpc_timeout_ms + extra_ms));
    return ctx;
  }

  std::unique_ptr<v1::CoordinatorService::Stub> stub_;
  std::unique_ptr<v1::FactorService::Stub> factor_stub_;
  const GrpcClientOptions options_;
  // The LeaseTask long poll in flight, which CancelWaits ends.
  absl::Mutex wait_mu_;
  grpc::ClientContext* waiting_ ABSL_GUARDED_BY(wait_mu_) = nullptr;
  bool waits_cancelled_ ABSL_GUARDED_BY(wait_mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorClient>> NewGrpcCoordinatorClient(
    const GrpcClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("coordinator address is empty");
  if (options.token.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError("no token and no client certificate to stand for the worker role");
  }
  std::shared_ptr<grpc::ChannelCredentials> creds =
      ChannelCredentials(options.tls_ca, options.tls_cert, options.tls_key);
  return std::unique_ptr<CoordinatorClient>(
      new GrpcCoordinatorClient(grpc::CreateChannel(options.address, creds), options));
}

}  // namespace moec::worker
