#include "client/client.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "proto/channel_credentials.h"
#include "proto/rpc_status.h"

namespace moec::client {

absl::StatusOr<std::unique_ptr<MoecClient>> MoecClient::Create(const ClientOptions& options) {
  if (options.address.empty()) {
    return absl::InvalidArgumentError("no coordinator: pass --coordinator HOST:PORT or set MOEC_COORDINATOR");
  }
  if (options.token.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "no token: pass --token-file PATH or set MOEC_TOKEN_FILE (or, under mutual TLS, a "
        "client certificate the coordinator knows: --tls-cert and --tls-key)");
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!options.tls_cert.empty() && options.tls_ca.empty()) {
    return absl::InvalidArgumentError("a client certificate needs TLS: pass --tls-ca too");
  }
  std::shared_ptr<grpc::ChannelCredentials> creds =
      ChannelCredentials(options.tls_ca, options.tls_cert, options.tls_key);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReportBytes);  // GetJobReport's figures
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(options.address, creds, args);
  if (options.connect_timeout_ms > 0 &&
      !channel->WaitForConnected(std::chrono::system_clock::now() +
                                 std::chrono::milliseconds(options.connect_timeout_ms))) {
    return absl::UnavailableError(absl::StrCat("no coordinator accepted a connection at ",
                                               options.address, " within ",
                                               options.connect_timeout_ms / 1000.0, " s"));
  }
  return std::unique_ptr<MoecClient>(new MoecClient(options, std::move(channel)));
}

std::unique_ptr<grpc::ClientContext> MoecClient::Context(bool deadline,
                                                          bool wait_for_ready) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_wait_for_ready(wait_for_ready);
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  if (deadline) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(options_.rpc_timeout_ms));
  }
  return ctx;
}

absl::StatusOr<v1::SubmitJobResponse> MoecClient::Submit(const std::string& recipe_yaml,
                                                         const std::string& recipe_path,
                                                         const std::vector<std::string>& overrides,
                                                         bool overwrite) {
  v1::SubmitJobRequest req;
  req.set_overwrite(overwrite);
  req.set_recipe_yaml(recipe_yaml);
  req.set_recipe_path(recipe_path);
  for (const auto& o : overrides) req.add_overrides(o);
  v1::SubmitJobResponse resp;
  auto ctx = Context();
  absl::Status s = FromGrpcStatus(stub_->SubmitJob(ctx.get(), req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<v1::GetJobResponse> MoecClient::GetJob(const std::string& job_id,
                                                      bool include_tasks, bool wait_for_ready) {
  v1::GetJobRequest req;
  req.set_job_id(job_id);
  req.set_include_tasks(include_tasks);
  v1::GetJobResponse resp;
  auto ctx = Context(/*deadline=*/true, wait_for_ready);
  absl::Status s = FromGrpcStatus(stub_->GetJob(ctx.get(), req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<v1::GetJobReportResponse> MoecClient::GetJobReport(const std::string& job_id,
                                                                  bool include_files) {
  v1::GetJobReportRequest req;
  req.set_job_id(job_id);
  req.set_include_files(include_files);
  v1::GetJobReportResponse resp;
  auto ctx = Context();
  absl::Status s = FromGrpcStatus(stub_->GetJobReport(ctx.get(), req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<std::vector<v1::JobRecord>> MoecClient::ListJobs() {
  v1::ListJobsResponse resp;
  auto ctx = Context();
  absl::Status s = FromGrpcStatus(stub_->ListJobs(ctx.get(), {}, &resp));
  if (!s.ok()) return s;
  return std::vector<v1::JobRecord>(resp.jobs().begin(), resp.jobs().end());
}

absl::StatusOr<std::vector<v1::WorkerStatus>> MoecClient::ListWorkers() {
  v1::ListWorkersResponse resp;
  auto ctx = Context();
  absl::Status s = FromGrpcStatus(stub_->ListWorkers(ctx.get(), {}, &resp));
  if (!s.ok()) return s;
  return std::vector<v1::WorkerStatus>(resp.workers().begin(), resp.workers().end());
}

absl::Status MoecClient::Cancel(const std::string& job_id) {
  v1::CancelJobRequest req;
  req.set_job_id(job_id);
  v1::CancelJobResponse resp;
  auto ctx = Context();
  return FromGrpcStatus(stub_->CancelJob(ctx.get(), req, &resp));
}

absl::Status MoecClient::Resume(const std::string& job_id) {
  v1::ResumeJobRequest req;
  req.set_job_id(job_id);
  v1::ResumeJobResponse resp;
  auto ctx = Context();
  return FromGrpcStatus(stub_->ResumeJob(ctx.get(), req, &resp));
}

absl::Status MoecClient::Watch(const std::string& job_id, int64_t from_seq,
                               const std::function<void(const v1::JobEvent&)>& on_event,
                               absl::Duration retry_for) {
  int64_t next = std::max<int64_t>(from_seq, 1);
  absl::Time give_up = absl::Now() + retry_for;
  while (true) {
    v1::WatchJobRequest req;
    req.set_job_id(job_id);
    req.set_from_seq(next);
    auto ctx = Context(/*deadline=*/false);
    auto reader = stub_->WatchJob(ctx.get(), req);
    v1::JobEvent e;
    while (reader->Read(&e)) {
      on_event(e);
      next = e.seq() + 1;
      give_up = absl::Now() + retry_for;
    }
    absl::Status s = FromGrpcStatus(reader->Finish());
    if (s.ok()) return s;
    if (!absl::IsUnavailable(s) || absl::Now() > give_up) return s;
    absl::SleepFor(absl::Milliseconds(500));  // coordinator restarting: resume the stream
  }
}

absl::StatusOr<std::string> MoecClient::GetFactorBytes(const std::string& key,
                                                       uint64_t max_bytes) {
  v1::GetFactorRequest req;
  req.set_key(key);
  auto ctx = Context();
  auto reader = factor_stub_->GetFactor(ctx.get(), req);
  v1::GetFactorResponse part;
  std::string data;
  uint64_t expected = 0;
  bool have_stat = false;
  while (reader->Read(&part)) {
    if (part.has_stat()) {
      expected = part.stat().byte_size();
      if (expected > max_bytes) {
        ctx->TryCancel();
        return absl::ResourceExhaustedError(absl::StrCat("factor '", key, "' has ", expected,
                                                         " bytes, more than ", max_bytes));
      }
      data.reserve(expected);
      have_stat = true;
    } else {
      data += part.data();
    }
  }
  absl::Status s = FromGrpcStatus(reader->Finish());
  if (!s.ok()) return s;
  if (!have_stat || data.size() != expected) {
    return absl::DataLossError(absl::StrCat("factor '", key, "': incomplete stream"));
  }
  return data;
}

}  // namespace moec::client
