// The gRPC wire format and auth of CoordinatorService, over an in-process channel (no sockets).
#include "coordinator/coordinator_service.h"
#include "coordinator/factor_service.h"

#include <filesystem>
#include <thread>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "proto/event_kind.h"

namespace moec::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kRecipe[] = R"(name: svc
model: m
output: out
stages:
  - {id: stats, kind: noop}
)";

class CoordinatorServiceTest : public ::testing::Test {
 protected:
  static std::vector<std::string> Families() {
    auto cfs = JobStoreColumnFamilies();
    cfs.push_back("factors");
    return cfs;
  }
  CoordinatorServiceTest() : kv_(Families()) {
    std::filesystem::create_directories(dir_.Join("m"));
    dir_.WriteFile("m/config.json", R"({"num_hidden_layers": 2})");
    store_ = *JobStore::Open(&kv_);
    storage::FactorStoreOptions fo;
    fo.chunk_bytes = 5;
    factors_ = *storage::FactorStore::Open(&kv_, fo);
    core_ = *Coordinator::Create(store_.get(), {}, [] { return absl::Now(); }, factors_.get());
    service_ = std::make_unique<CoordinatorService>(core_.get(), "s3cret");
    factor_service_ = std::make_unique<FactorService>(core_.get(), "s3cret");
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    builder.RegisterService(factor_service_.get());
    server_ = builder.BuildAndStart();
    auto channel = server_->InProcessChannel(grpc::ChannelArguments());
    stub_ = v1::CoordinatorService::NewStub(channel);
    factor_stub_ = v1::FactorService::NewStub(channel);
  }
  ~CoordinatorServiceTest() override { server_->Shutdown(); }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "s3cret") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  // A submission of kRecipe.
  v1::SubmitJobRequest SubmitRequest() {
    v1::SubmitJobRequest sreq;
    sreq.set_recipe_yaml(kRecipe);
    sreq.set_recipe_path(dir_.Join("recipe.yaml"));
    return sreq;
  }

  void RegisterWorker(const std::string& name, std::string* worker_id) {
    v1::RegisterWorkerRequest rreq;
    rreq.set_name(name);
    v1::RegisterWorkerResponse rresp;
    ASSERT_TRUE(stub_->RegisterWorker(Ctx().get(), rreq, &rresp).ok());
    *worker_id = rresp.worker_id();
  }

  // A thread that watches `job` from its first event to its end, collecting the events' kinds.
  std::thread WatchKinds(const std::string& job, std::vector<std::string>* kinds) {
    return std::thread([this, job, kinds] {
      v1::WatchJobRequest wreq;
      wreq.set_job_id(job);
      auto ctx = Ctx();
      auto reader = stub_->WatchJob(ctx.get(), wreq);
      v1::JobEvent e;
      while (reader->Read(&e)) kinds->push_back(EventKindName(KindOf(e)));
      EXPECT_TRUE(reader->Finish().ok());
    });
  }

  // Streams the 12-byte output "hessian" of the task the worker holds, in three pieces.
  void PutHessian(const std::string& worker_id, const std::string& task_id,
                  v1::PutFactorResponse* presp) {
    auto ctx = Ctx();
    auto writer = factor_stub_->PutFactor(ctx.get(), presp);
    v1::PutFactorRequest head;
    head.mutable_header()->set_worker_id(worker_id);
    head.mutable_header()->set_task_id(task_id);
    head.mutable_header()->set_name("hessian");
    head.mutable_header()->set_dtype("U8");
    head.mutable_header()->add_shape(12);
    ASSERT_TRUE(writer->Write(head));
    for (const char* piece : {"hello ", "moec", "!!"}) {
      v1::PutFactorRequest part;
      part.set_data(piece);
      ASSERT_TRUE(writer->Write(part));
    }
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }

  ::moec::testing::TempDir dir_;
  storage::InMemoryKvStore kv_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<storage::FactorStore> factors_;
  std::unique_ptr<Coordinator> core_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<FactorService> factor_service_;
  std::unique_ptr<v1::FactorService::Stub> factor_stub_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::CoordinatorService::Stub> stub_;
};

TEST_F(CoordinatorServiceTest, WrongOrMissingTokenIsUnauthenticated) {
  v1::ListJobsRequest req;
  v1::ListJobsResponse resp;
  EXPECT_EQ(stub_->ListJobs(Ctx("wrong").get(), req, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext bare;
  EXPECT_EQ(stub_->ListJobs(&bare, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(stub_->ListJobs(Ctx().get(), req, &resp).ok());
  // The callback handlers (Heartbeat, CompleteTask) check the token as the others do.
  v1::HeartbeatRequest hreq;
  v1::HeartbeatResponse hresp;
  EXPECT_EQ(stub_->Heartbeat(Ctx("wrong").get(), hreq, &hresp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::CompleteTaskRequest creq;
  v1::CompleteTaskResponse cresp;
  EXPECT_EQ(stub_->CompleteTask(Ctx("wrong").get(), creq, &cresp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext bare_complete;
  EXPECT_EQ(stub_->CompleteTask(&bare_complete, creq, &cresp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // With the token they reach the Coordinator, whose errors cross the wire.
  hreq.set_worker_id("w-nobody");
  EXPECT_EQ(stub_->Heartbeat(Ctx().get(), hreq, &hresp).error_code(), grpc::StatusCode::NOT_FOUND);
  creq.set_worker_id("w-nobody");
  creq.set_task_id("nojob/stats/L0");
  EXPECT_EQ(stub_->CompleteTask(Ctx().get(), creq, &cresp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(CoordinatorServiceTest, SubmitLeaseCompleteAndWatchOverTheWire) {
  const v1::SubmitJobRequest sreq = SubmitRequest();
  v1::SubmitJobResponse sresp;
  ASSERT_TRUE(stub_->SubmitJob(Ctx().get(), sreq, &sresp).ok());
  const std::string job = sresp.job().job_id();
  EXPECT_FALSE(sresp.existed());

  // Malformed recipes keep their precise error across the wire.
  v1::SubmitJobRequest bad = sreq;
  bad.set_recipe_yaml("name: svc\nmodel: m\noutput: out\nstages: [{id: a, kind: nope}]\n");
  grpc::Status bs = stub_->SubmitJob(Ctx().get(), bad, &sresp);
  EXPECT_EQ(bs.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bs.error_message(), HasSubstr("recipe.yaml:4: stage 'a': unknown kind 'nope'"));

  // A watcher started before any work sees every event and the end of the job.
  std::vector<std::string> kinds;
  std::thread watcher = WatchKinds(job, &kinds);

  std::string worker;
  ASSERT_NO_FATAL_FAILURE(RegisterWorker("host:1", &worker));
  v1::LeaseTaskRequest lreq;
  lreq.set_worker_id(worker);
  v1::LeaseTaskResponse lresp;
  ASSERT_TRUE(stub_->LeaseTask(Ctx().get(), lreq, &lresp).ok());
  for (int i = 0; i < 2; ++i) {
    // The first task comes from LeaseTask, the second with the first one's completion.
    ASSERT_TRUE(lresp.granted()) << i;
    EXPECT_EQ(lresp.task().task_id(), job + "/stats/L" + std::to_string(i));
    v1::CompleteTaskRequest creq;
    creq.set_worker_id(worker);
    creq.set_task_id(lresp.task().task_id());
    creq.set_lease_next(true);
    v1::CompleteTaskResponse cresp;
    ASSERT_TRUE(stub_->CompleteTask(Ctx().get(), creq, &cresp).ok());
    lresp = cresp.next();
  }
  EXPECT_FALSE(lresp.granted());  // nothing after the last task
  watcher.join();
  EXPECT_THAT(kinds, ElementsAre("job_submitted", "task_leased", "task_done", "task_leased",
                                 "task_done", "job_succeeded"));

  v1::GetJobRequest greq;
  greq.set_job_id(job);
  greq.set_include_tasks(true);
  v1::GetJobResponse gresp;
  ASSERT_TRUE(stub_->GetJob(Ctx().get(), greq, &gresp).ok());
  EXPECT_EQ(gresp.job().state(), v1::JOB_SUCCEEDED);
  EXPECT_EQ(gresp.tasks_size(), 2);
  greq.set_job_id("nope");
  EXPECT_EQ(stub_->GetJob(Ctx().get(), greq, &gresp).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::CancelJobRequest creq;
  creq.set_job_id(job);
  v1::CancelJobResponse cresp;
  EXPECT_EQ(stub_->CancelJob(Ctx().get(), creq, &cresp).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(CoordinatorServiceTest, TaskOutputsStreamInCommitWithCompletionAndStreamOut) {
  v1::SubmitJobResponse sresp;
  ASSERT_TRUE(stub_->SubmitJob(Ctx().get(), SubmitRequest(), &sresp).ok());
  std::string worker;
  ASSERT_NO_FATAL_FAILURE(RegisterWorker("", &worker));
  v1::LeaseTaskRequest lreq;
  lreq.set_worker_id(worker);
  v1::LeaseTaskResponse lresp;
  ASSERT_TRUE(stub_->LeaseTask(Ctx().get(), lreq, &lresp).ok());
  ASSERT_TRUE(lresp.granted());

  v1::PutFactorResponse presp;
  ASSERT_NO_FATAL_FAILURE(PutHessian(worker, lresp.task().task_id(), &presp));
  EXPECT_EQ(presp.key(), lresp.task().fingerprint() + "/hessian");

  v1::StatFactorRequest streq;
  streq.set_key(presp.key());
  v1::StatFactorResponse stresp;
  EXPECT_EQ(factor_stub_->StatFactor(Ctx().get(), streq, &stresp).error_code(),
            grpc::StatusCode::NOT_FOUND);  // staged until the task completes
  v1::CompleteTaskRequest creq;
  creq.set_worker_id(worker);
  creq.set_task_id(lresp.task().task_id());
  v1::CompleteTaskResponse cresp;
  ASSERT_TRUE(stub_->CompleteTask(Ctx().get(), creq, &cresp).ok());
  ASSERT_TRUE(factor_stub_->StatFactor(Ctx().get(), streq, &stresp).ok());
  EXPECT_EQ(stresp.stat().byte_size(), 12u);

  v1::GetFactorRequest greq;
  greq.set_key(presp.key());
  auto gctx = Ctx();
  auto reader = factor_stub_->GetFactor(gctx.get(), greq);
  v1::GetFactorResponse part;
  std::string bytes;
  int chunks = 0;
  ASSERT_TRUE(reader->Read(&part));
  EXPECT_EQ(part.stat().dtype(), "U8");
  while (reader->Read(&part)) {
    bytes += part.data();
    ++chunks;
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(bytes, "hello moec!!");
  EXPECT_EQ(chunks, 3);  // 5-byte chunks
  v1::StatFactorResponse denied;
  EXPECT_EQ(factor_stub_->StatFactor(Ctx("nope").get(), streq, &denied).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

// A granted task given back over the wire (ReleaseTask) is granted again with the same attempt;
// the call needs the token like every other.
TEST_F(CoordinatorServiceTest, ReleaseTaskGivesAGrantBack) {
  v1::SubmitJobRequest sreq;
  sreq.set_recipe_yaml(kRecipe);
  sreq.set_recipe_path(dir_.Join("recipe.yaml"));
  v1::SubmitJobResponse sresp;
  ASSERT_TRUE(stub_->SubmitJob(Ctx().get(), sreq, &sresp).ok());
  v1::RegisterWorkerRequest rreq;
  rreq.set_name("host:1");
  v1::RegisterWorkerResponse rresp;
  ASSERT_TRUE(stub_->RegisterWorker(Ctx().get(), rreq, &rresp).ok());
  v1::LeaseTaskRequest lreq;
  lreq.set_worker_id(rresp.worker_id());
  v1::LeaseTaskResponse first, second;
  ASSERT_TRUE(stub_->LeaseTask(Ctx().get(), lreq, &first).ok());
  ASSERT_TRUE(first.granted());
  v1::ReleaseTaskRequest req;
  req.set_worker_id(rresp.worker_id());
  req.set_task_id(first.task().task_id());
  v1::ReleaseTaskResponse resp;
  EXPECT_EQ(stub_->ReleaseTask(Ctx("nope").get(), req, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(stub_->ReleaseTask(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(stub_->ReleaseTask(Ctx().get(), req, &resp).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);  // no longer held
  ASSERT_TRUE(stub_->LeaseTask(Ctx().get(), lreq, &second).ok());
  ASSERT_TRUE(second.granted());
  EXPECT_EQ(second.task().task_id(), first.task().task_id());
  EXPECT_EQ(second.task().attempts(), 1);
}

}  // namespace
}  // namespace moec::coordinator
