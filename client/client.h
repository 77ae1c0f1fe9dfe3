// A small C++ client of CoordinatorService used by the `moec` CLI: one object per coordinator,
// bearer token attached to every call.
#ifndef MOEC_CLIENT_CLIENT_H_
#define MOEC_CLIENT_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "moec/v1/coordinator.grpc.pb.h"
#include "moec/v1/factor.grpc.pb.h"
#include "report/source.h"

namespace moec::client {

struct ClientOptions {
  std::string address;  // HOST:PORT
  std::string token;     // empty: a client certificate stands for the role (mutual TLS)
  std::string tls_ca;    // PEM; empty: plaintext
  std::string tls_cert;  // PEM client certificate for mutual TLS (with tls_key)
  std::string tls_key;
  int64_t rpc_timeout_ms = 30000;
  // How long Create waits for the coordinator to accept a connection (one that is still
  // starting, say); 0: not at all, the first RPC fails at once when it is not there.
  int64_t connect_timeout_ms = 0;
};

// Largest response the client accepts (a report with its figures).
inline constexpr int kMaxReportBytes = 256 << 20;

// Thread-safe. A JobSource, so reports (report/) are built over it.
class MoecClient final : public report::JobSource {
 public:
  static absl::StatusOr<std::unique_ptr<MoecClient>> Create(const ClientOptions& options);

  absl::StatusOr<v1::SubmitJobResponse> Submit(const std::string& recipe_yaml,
                                               const std::string& recipe_path,
                                               const std::vector<std::string>& overrides,
                                               bool overwrite = false);
  // With `wait_for_ready`, waits (up to the RPC timeout) for an unreachable coordinator to come
  // up instead of failing at once: for following a job across coordinator restarts.
  absl::StatusOr<v1::GetJobResponse> GetJob(const std::string& job_id, bool include_tasks,
                                            bool wait_for_ready = false) override;
  absl::StatusOr<std::vector<v1::JobRecord>> ListJobs() override;
  absl::StatusOr<std::vector<v1::WorkerStatus>> ListWorkers();
  // The job's report, built by the coordinator (report/report.h); with `include_files`, its
  // files too (report/report_files.h). Responses up to kMaxReportBytes are accepted.
  absl::StatusOr<v1::GetJobReportResponse> GetJobReport(const std::string& job_id,
                                                        bool include_files);
  absl::Status Cancel(const std::string& job_id);
  absl::Status Resume(const std::string& job_id);
  // Streams events from `from_seq` until the job ends; `on_event` sees each. If the stream
  // breaks (coordinator restart), reconnects from the last event + 1 for up to `retry_for`.
  absl::Status Watch(const std::string& job_id, int64_t from_seq,
                     const std::function<void(const v1::JobEvent&)>& on_event,
                     absl::Duration retry_for = absl::Seconds(30));
  // The bytes of committed factor `key` ("<task fingerprint>/<name>"), at most `max_bytes`.
  // Errors: NotFound, ResourceExhausted (larger), DataLoss (incomplete stream).
  absl::StatusOr<std::string> GetFactorBytes(const std::string& key, uint64_t max_bytes) override;

 private:
  explicit MoecClient(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)), stub_(v1::CoordinatorService::NewStub(channel)),
        factor_stub_(v1::FactorService::NewStub(channel)) {}
  std::unique_ptr<grpc::ClientContext> Context(bool deadline = true,
                                               bool wait_for_ready = false) const;

  const ClientOptions options_;
  std::unique_ptr<v1::CoordinatorService::Stub> stub_;
  std::unique_ptr<v1::FactorService::Stub> factor_stub_;
};

}  // namespace moec::client

#endif  // MOEC_CLIENT_CLIENT_H_
