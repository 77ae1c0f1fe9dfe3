// gRPC adapter of the Coordinator: each handler checks the bearer token, converts the request,
// calls one Coordinator method and converts the result. No logic lives here.
//
// Heartbeat and CompleteTask — the calls every worker makes for every task — use gRPC's
// callback API: they run on the thread that read the request, not handed to a polling thread of
// the synchronous server, and a completion that waits for a log sync finishes from the syncer's
// thread (Coordinator::CompleteTaskAsync) instead of blocking one. control_plane_bench: ~17%
// more tasks/s than with synchronous handlers (docs/benchmarks.md). The rest, some of which
// block (LeaseTask's long poll, WatchJob), stay synchronous.
#ifndef MOEC_COORDINATOR_COORDINATOR_SERVICE_H_
#define MOEC_COORDINATOR_COORDINATOR_SERVICE_H_

#include <string>

#include "coordinator/auth.h"
#include "coordinator/coordinator.h"
#include "grpcpp/server_builder.h"
#include "moec/v1/coordinator.grpc.pb.h"

namespace moec::coordinator {

// Thread-safe. `core` must outlive the service.
class CoordinatorService final
    : public v1::CoordinatorService::WithCallbackMethod_Heartbeat<
          v1::CoordinatorService::WithCallbackMethod_CompleteTask<v1::CoordinatorService::Service>> {
 public:
  CoordinatorService(Coordinator* core, Authenticator auth) : core_(core), auth_(std::move(auth)) {}
  // One token for both roles.
  CoordinatorService(Coordinator* core, std::string token)
      : CoordinatorService(core, Authenticator::SharedToken(std::move(token))) {}

  grpc::Status SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req,
                         v1::SubmitJobResponse* resp) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                      v1::GetJobResponse* resp) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override;
  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                         v1::CancelJobResponse* resp) override;
  grpc::Status ResumeJob(grpc::ServerContext* ctx, const v1::ResumeJobRequest* req,
                         v1::ResumeJobResponse* resp) override;
  grpc::Status ListWorkers(grpc::ServerContext* ctx, const v1::ListWorkersRequest* req,
                           v1::ListWorkersResponse* resp) override;
  grpc::Status GetJobReport(grpc::ServerContext* ctx, const v1::GetJobReportRequest* req,
                            v1::GetJobReportResponse* resp) override;
  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                              v1::RegisterWorkerResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx, const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) override;
  grpc::Status LeaseTask(grpc::ServerContext* ctx, const v1::LeaseTaskRequest* req,
                         v1::LeaseTaskResponse* resp) override;
  grpc::Status ReportProgress(grpc::ServerContext* ctx, const v1::ReportProgressRequest* req,
                              v1::ReportProgressResponse* resp) override;
  grpc::ServerUnaryReactor* CompleteTask(grpc::CallbackServerContext* ctx,
                                         const v1::CompleteTaskRequest* req,
                                         v1::CompleteTaskResponse* resp) override;
  grpc::Status FailTask(grpc::ServerContext* ctx, const v1::FailTaskRequest* req,
                        v1::FailTaskResponse* resp) override;
  grpc::Status ReleaseTask(grpc::ServerContext* ctx, const v1::ReleaseTaskRequest* req,
                           v1::ReleaseTaskResponse* resp) override;
  grpc::Status GroupStoreSet(grpc::ServerContext* ctx, const v1::GroupStoreSetRequest* req,
                             v1::GroupStoreSetResponse* resp) override;
  grpc::Status GroupStoreGet(grpc::ServerContext* ctx, const v1::GroupStoreGetRequest* req,
                             v1::GroupStoreGetResponse* resp) override;
  grpc::Status GroupStoreAdd(grpc::ServerContext* ctx, const v1::GroupStoreAddRequest* req,
                             v1::GroupStoreAddResponse* resp) override;

 private:
  Coordinator* const core_;  // Not owned.
  const Authenticator auth_;  // jobs and workers' listing: clients; the rest: workers
};

// Thread settings of the coordinator's gRPC server's synchronous handlers (moec-coordinator, the
// benches): at least 4 and at most 8 idle polling threads instead of gRPC's 1-2, so that workers calling at once do
// not make the server create and end a thread every few calls (control_plane_bench: 555 thread
// creations over 2,000 tasks before, 57 after). Calls in flight are not limited by it.
void ConfigureServerThreads(grpc::ServerBuilder* builder);

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_COORDINATOR_SERVICE_H_
