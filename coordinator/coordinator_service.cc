#include "coordinator/coordinator_service.h"

#include <algorithm>

#include "common/status_payloads.h"
#include "coordinator/factor_service.h"
#include "coordinator/job_source.h"
#include "nlohmann/json.hpp"
#include "report/report.h"
#include "report/report_files.h"
#include "storage/factor_record.h"
#include "proto/rpc_status.h"

namespace moec::coordinator {
namespace {

void FillLease(const std::optional<LeasedTask>& t, v1::LeaseTaskResponse* resp) {
  resp->set_granted(t.has_value());
  if (!t.has_value()) return;
  *resp->mutable_task() = t->task;
  resp->set_rank(t->rank);
  for (const auto& w : t->group) resp->add_group(w);
  resp->set_recipe_json(t->recipe_json);
  resp->set_overwrite(t->overwrite);
  for (const auto& [id, fp] : t->input_fingerprints) (*resp->mutable_input_fingerprints())[id] = fp;
}

}  // namespace

void ConfigureServerThreads(grpc::ServerBuilder* builder) {
  builder->SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, 1);
  builder->SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 4);
  builder->SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 8);
}

// Returns from the handler unless the call holds `role` (coordinator/auth.h).
#define MOEC_AUTHORIZE(ctx, role)                           \
  do {                                                      \
    grpc::Status auth_status_ = auth_.Check(ctx, role);     \
    if (!auth_status_.ok()) return auth_status_;            \
  } while (0)

grpc::Status CoordinatorService::SubmitJob(grpc::ServerContext* ctx,
                                           const v1::SubmitJobRequest* req,
                                           v1::SubmitJobResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  std::vector<std::string> overrides(req->overrides().begin(), req->overrides().end());
  absl::StatusOr<SubmitResult> r = core_->SubmitJob(req->recipe_yaml(), req->recipe_path(), overrides,
                                                    req->overwrite());
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp->mutable_job() = r->job;
  resp->set_existed(r->existed);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                                        v1::GetJobResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  absl::StatusOr<v1::GetJobResponse> job = JobWithTasks(*core_, req->job_id(), req->include_tasks());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest*,
                                          v1::ListJobsResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  for (auto& j : core_->ListJobs()) *resp->add_jobs() = std::move(j);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                                          grpc::ServerWriter<v1::JobEvent>* writer) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  int64_t next = std::max<int64_t>(req->from_seq(), 1);
  while (!ctx->IsCancelled()) {
    bool ended = false;
    absl::StatusOr<std::vector<v1::JobEvent>> events =
        core_->ReadEvents(req->job_id(), next, 256, absl::Seconds(1), &ended);
    if (!events.ok()) return ToGrpcStatus(events.status());
    for (const auto& e : *events) {
      if (!writer->Write(e)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      next = e.seq() + 1;
    }
    if (ended && events->empty()) return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
}

grpc::Status CoordinatorService::CancelJob(grpc::ServerContext* ctx,
                                           const v1::CancelJobRequest* req,
                                           v1::CancelJobResponse*) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  return ToGrpcStatus(core_->CancelJob(req->job_id()));
}

grpc::Status CoordinatorService::ResumeJob(grpc::ServerContext* ctx,
                                           const v1::ResumeJobRequest* req,
                                           v1::ResumeJobResponse*) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  return ToGrpcStatus(core_->ResumeJob(req->job_id()));
}

grpc::Status CoordinatorService::ListWorkers(grpc::ServerContext* ctx,
                                             const v1::ListWorkersRequest*,
                                             v1::ListWorkersResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  for (const auto& w : core_->ListWorkers()) {
    v1::WorkerStatus* s = resp->add_workers();
    s->set_worker_id(w.worker_id);
    s->set_name(w.info.name);
    s->set_gpu(w.info.gpu);
    s->set_memory_bytes(w.info.memory_bytes);
    s->set_device_memory_bytes(w.info.device_memory_bytes);
    s->set_data_address(w.info.data_address);
    s->set_last_seen_ms(w.last_seen_ms);
    for (const auto& t : w.tasks) s->add_tasks(t);
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::GetJobReport(grpc::ServerContext* ctx,
                                              const v1::GetJobReportRequest* req,
                                              v1::GetJobReportResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kClient);
  CoordinatorJobSource source(core_);
  if (!req->include_files()) {
    absl::StatusOr<nlohmann::json> report = report::JobReport(source, req->job_id());
    if (!report.ok()) return ToGrpcStatus(report.status());
    resp->set_report_json(report->dump());
    return grpc::Status::OK;
  }
  absl::StatusOr<std::map<std::string, std::string>> files =
      report::BuildReportFiles(source, req->job_id());
  if (!files.ok()) return ToGrpcStatus(files.status());
  resp->set_report_json((*files)["report.json"]);
  for (auto& [name, content] : *files) (*resp->mutable_files())[name] = std::move(content);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::RegisterWorker(grpc::ServerContext* ctx,
                                                const v1::RegisterWorkerRequest* req,
                                                v1::RegisterWorkerResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  if (req->memory_bytes() < 0 || req->device_memory_bytes() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "negative memory size");
  }
  if (req->store_id().size() > storage::kMaxHolderIdBytes || req->data_address().size() > 256 ||
      req->store_id().empty() != req->data_address().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "store_id (at most 128 bytes) and data_address (at most 256) come together");
  }
  resp->set_worker_id(core_->RegisterWorker({req->name(), req->gpu(), req->memory_bytes(),
                                             req->device_memory_bytes(), req->previous_worker_id(),
                                             req->store_id(), req->data_address()}));
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                        const v1::HeartbeatRequest* req,
                                                        v1::HeartbeatResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish([&]() -> grpc::Status {
    if (grpc::Status a = auth_.Check(ctx, Role::kWorker); !a.ok()) return a;
    std::vector<std::string> running(req->running_task_ids().begin(), req->running_task_ids().end());
    absl::StatusOr<std::vector<std::string>> cancelled = core_->Heartbeat(req->worker_id(), running);
    if (!cancelled.ok()) return ToGrpcStatus(cancelled.status());
    for (const auto& id : *cancelled) resp->add_cancelled_task_ids(id);
    return grpc::Status::OK;
  }());
  return reactor;
}

grpc::Status CoordinatorService::LeaseTask(grpc::ServerContext* ctx,
                                           const v1::LeaseTaskRequest* req,
                                           v1::LeaseTaskResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  absl::StatusOr<std::optional<LeasedTask>> t = core_->LeaseTask(
      req->worker_id(), absl::Milliseconds(std::clamp<int64_t>(req->wait_ms(), 0, 2000)));
  if (!t.ok()) return ToGrpcStatus(t.status());
  FillLease(*t, resp);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::ReportProgress(grpc::ServerContext* ctx,
                                                const v1::ReportProgressRequest* req,
                                                v1::ReportProgressResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  absl::StatusOr<bool> cancelled =
      core_->ReportProgress(req->worker_id(), req->task_id(), req->fraction(), req->message());
  if (!cancelled.ok()) return ToGrpcStatus(cancelled.status());
  resp->set_cancelled(*cancelled);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* CoordinatorService::CompleteTask(grpc::CallbackServerContext* ctx,
                                                           const v1::CompleteTaskRequest* req,
                                                           v1::CompleteTaskResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status a = auth_.Check(ctx, Role::kWorker); !a.ok()) {
    reactor->Finish(a);
    return reactor;
  }
  const bool lease_next = req->lease_next();
  core_->CompleteTaskAsync(req->worker_id(), req->task_id(), req->compute_ms(), req->profile(),
                           lease_next,
                           [reactor, resp, lease_next](absl::Status s, std::optional<LeasedTask> next) {
                             if (s.ok() && lease_next) FillLease(next, resp->mutable_next());
                             reactor->Finish(s.ok() ? grpc::Status::OK : ToGrpcStatus(s));
                           });
  return reactor;
}

grpc::Status CoordinatorService::FailTask(grpc::ServerContext* ctx, const v1::FailTaskRequest* req,
                                          v1::FailTaskResponse*) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  absl::Status error(static_cast<absl::StatusCode>(req->code()), req->message());
  if (error.ok()) error = absl::UnknownError(req->message());
  if (!req->factor_key().empty()) error = WithFactorKey(error, req->factor_key());
  return ToGrpcStatus(core_->FailTask(req->worker_id(), req->task_id(), error, req->retriable()));
}

grpc::Status CoordinatorService::ReleaseTask(grpc::ServerContext* ctx,
                                             const v1::ReleaseTaskRequest* req,
                                             v1::ReleaseTaskResponse*) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  return ToGrpcStatus(core_->ReleaseTask(req->worker_id(), req->task_id()));
}

grpc::Status CoordinatorService::GroupStoreSet(grpc::ServerContext* ctx,
                                               const v1::GroupStoreSetRequest* req,
                                               v1::GroupStoreSetResponse*) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  absl::StatusOr<std::string> ns = core_->GroupNamespace(req->worker_id(), req->task_id(), req->attempt());
  if (!ns.ok()) return ToGrpcStatus(ns.status());
  return ToGrpcStatus(core_->group_store().Set(*ns, req->key(), req->value()));
}

grpc::Status CoordinatorService::GroupStoreGet(grpc::ServerContext* ctx,
                                               const v1::GroupStoreGetRequest* req,
                                               v1::GroupStoreGetResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  absl::StatusOr<std::string> ns = core_->GroupNamespace(req->worker_id(), req->task_id(), req->attempt());
  if (!ns.ok()) return ToGrpcStatus(ns.status());
  absl::StatusOr<std::optional<std::string>> v = core_->group_store().Get(
      *ns, req->key(), absl::Milliseconds(std::clamp<int64_t>(req->wait_ms(), 0, 2000)));
  if (!v.ok()) return ToGrpcStatus(v.status());
  resp->set_found(v->has_value());
  if (v->has_value()) resp->set_value(**v);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::GroupStoreAdd(grpc::ServerContext* ctx,
                                               const v1::GroupStoreAddRequest* req,
                                               v1::GroupStoreAddResponse* resp) {
  MOEC_AUTHORIZE(ctx, Role::kWorker);
  absl::StatusOr<std::string> ns = core_->GroupNamespace(req->worker_id(), req->task_id(), req->attempt());
  if (!ns.ok()) return ToGrpcStatus(ns.status());
  absl::StatusOr<int64_t> v = core_->group_store().Add(*ns, req->key(), req->delta());
  if (!v.ok()) return ToGrpcStatus(v.status());
  resp->set_value(*v);
  return grpc::Status::OK;
}

}  // namespace moec::coordinator
