// Roles (coordinator/auth.h): every RPC of both services tried with the other role's token,
// with no token and with its own, over an in-process channel; certificate identities through
// an AuthContext as gRPC's TLS fills it.
#include "coordinator/auth.h"

#include <functional>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/factor_service.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"

namespace moec::coordinator {
namespace {

constexpr char kClientToken[] = "client-s3cret";
constexpr char kWorkerToken[] = "worker-s3cret";

class RoleTest : public ::testing::Test {
 protected:
  static std::vector<std::string> Families() {
    auto cfs = JobStoreColumnFamilies();
    cfs.push_back("factors");
    return cfs;
  }
  RoleTest() : kv_(Families()) {
    store_ = *JobStore::Open(&kv_);
    factors_ = *storage::FactorStore::Open(&kv_, {});
    core_ = *Coordinator::Create(store_.get(), {}, [] { return absl::Now(); }, factors_.get());
    RoleCredentials c;
    c.client_token = kClientToken;
    c.worker_token = kWorkerToken;
    absl::StatusOr<Authenticator> auth = Authenticator::Create(c);
    EXPECT_TRUE(auth.ok()) << auth.status();
    service_ = std::make_unique<CoordinatorService>(core_.get(), *auth);
    factor_service_ = std::make_unique<FactorService>(core_.get(), *auth);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    builder.RegisterService(factor_service_.get());
    server_ = builder.BuildAndStart();
    auto channel = server_->InProcessChannel(grpc::ChannelArguments());
    stub_ = v1::CoordinatorService::NewStub(channel);
    factor_stub_ = v1::FactorService::NewStub(channel);
  }
  ~RoleTest() override { server_->Shutdown(); }

  using Call = std::function<grpc::StatusCode(const std::string&)>;

  // A client context carrying `token` (empty: no authorization header).
  static std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token) {
    auto c = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) c->AddMetadata("authorization", "Bearer " + token);
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return c;
  }

  // A unary RPC of the coordinator service with request `req`.
  template <typename Method, typename Req, typename Resp>
  Call Unary(Method method, Req req, Resp resp) {
    return [this, method, req, resp](const std::string& token) mutable {
      return ((*stub_).*method)(Ctx(token).get(), req, &resp).error_code();
    };
  }

  // Every RPC of both services, by name: its status code when called with a token. Requests
  // are empty or name things that do not exist: a call that passes the role check fails later
  // (NOT_FOUND, INVALID_ARGUMENT ...) or succeeds.
  std::map<std::string, Call> Rpcs() {
    std::map<std::string, Call> m = JobRpcs();
    for (auto& [name, call] : WorkerRpcs()) m[name] = call;
    for (auto& [name, call] : FactorRpcs()) m[name] = call;
    return m;
  }

  std::map<std::string, Call> JobRpcs() {
    using S = v1::CoordinatorService::Stub;
    v1::GetJobRequest get_job;
    get_job.set_job_id("nojob");
    v1::CancelJobRequest cancel;
    cancel.set_job_id("nojob");
    v1::ResumeJobRequest resume;
    resume.set_job_id("nojob");
    std::map<std::string, Call> m;
    m["SubmitJob"] = Unary(&S::SubmitJob, v1::SubmitJobRequest(), v1::SubmitJobResponse());
    m["GetJob"] = Unary(&S::GetJob, get_job, v1::GetJobResponse());
    m["ListJobs"] = Unary(&S::ListJobs, v1::ListJobsRequest(), v1::ListJobsResponse());
    m["CancelJob"] = Unary(&S::CancelJob, cancel, v1::CancelJobResponse());
    m["ResumeJob"] = Unary(&S::ResumeJob, resume, v1::ResumeJobResponse());
    m["ListWorkers"] = Unary(&S::ListWorkers, v1::ListWorkersRequest(), v1::ListWorkersResponse());
    v1::GetJobReportRequest report;
    report.set_job_id("nojob");
    m["GetJobReport"] = Unary(&S::GetJobReport, report, v1::GetJobReportResponse());
    m["WatchJob"] = [this](const std::string& token) {
      v1::WatchJobRequest req;
      req.set_job_id("nojob");
      auto c = Ctx(token);
      auto reader = stub_->WatchJob(c.get(), req);
      v1::JobEvent e;
      while (reader->Read(&e)) {
      }
      return reader->Finish().error_code();
    };
    return m;
  }

  std::map<std::string, Call> WorkerRpcs() {
    using S = v1::CoordinatorService::Stub;
    auto nobody = [](auto req) {
      req.set_worker_id("w-nobody");
      return req;
    };
    v1::GroupStoreGetRequest group_get;
    group_get.set_key("k");
    std::map<std::string, Call> m;
    m["RegisterWorker"] = Unary(&S::RegisterWorker, v1::RegisterWorkerRequest(), v1::RegisterWorkerResponse());
    m["Heartbeat"] = Unary(&S::Heartbeat, nobody(v1::HeartbeatRequest()), v1::HeartbeatResponse());
    m["LeaseTask"] = Unary(&S::LeaseTask, nobody(v1::LeaseTaskRequest()), v1::LeaseTaskResponse());
    m["ReportProgress"] = Unary(&S::ReportProgress, nobody(v1::ReportProgressRequest()), v1::ReportProgressResponse());
    m["CompleteTask"] = Unary(&S::CompleteTask, nobody(v1::CompleteTaskRequest()), v1::CompleteTaskResponse());
    m["FailTask"] = Unary(&S::FailTask, nobody(v1::FailTaskRequest()), v1::FailTaskResponse());
    m["ReleaseTask"] = Unary(&S::ReleaseTask, nobody(v1::ReleaseTaskRequest()), v1::ReleaseTaskResponse());
    m["GroupStoreSet"] = Unary(&S::GroupStoreSet, v1::GroupStoreSetRequest(), v1::GroupStoreSetResponse());
    m["GroupStoreGet"] = Unary(&S::GroupStoreGet, group_get, v1::GroupStoreGetResponse());
    m["GroupStoreAdd"] = Unary(&S::GroupStoreAdd, v1::GroupStoreAddRequest(), v1::GroupStoreAddResponse());
    return m;
  }

  std::map<std::string, Call> FactorRpcs() {
    std::map<std::string, Call> m;
    m["PutFactor"] = [this](const std::string& token) {
      auto c = Ctx(token);
      v1::PutFactorResponse resp;
      auto writer = factor_stub_->PutFactor(c.get(), &resp);
      v1::PutFactorRequest header;
      header.mutable_header()->set_worker_id("w-nobody");
      header.mutable_header()->set_name("w");
      writer->Write(header);
      writer->WritesDone();
      return writer->Finish().error_code();
    };
    for (const char* key : {"fp/report", "fp/hidden.c00000", "fp/model.layers.0.mlp.gate_proj.weight"}) {
      m[std::string("GetFactor ") + key] = [this, key](const std::string& token) {
        v1::GetFactorRequest req;
        req.set_key(key);
        auto c = Ctx(token);
        auto reader = factor_stub_->GetFactor(c.get(), req);
        v1::GetFactorResponse part;
        while (reader->Read(&part)) {
        }
        return reader->Finish().error_code();
      };
      m[std::string("StatFactor ") + key] = [this, key](const std::string& token) {
        v1::StatFactorRequest req;
        req.set_key(key);
        v1::StatFactorResponse resp;
        return factor_stub_->StatFactor(Ctx(token).get(), req, &resp).error_code();
      };
    }
    return m;
  }

  storage::InMemoryKvStore kv_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<storage::FactorStore> factors_;
  std::unique_ptr<Coordinator> core_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<FactorService> factor_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::CoordinatorService::Stub> stub_;
  std::unique_ptr<v1::FactorService::Stub> factor_stub_;
};

// The client's RPCs: jobs, the workers' listing and the factors reports read.
bool ClientRpc(const std::string& name) {
  static const std::set<std::string> kClient = {
      "SubmitJob", "GetJob", "ListJobs", "WatchJob", "CancelJob", "ResumeJob", "ListWorkers",
      "GetJobReport", "GetFactor fp/report", "StatFactor fp/report"};
  return kClient.count(name) > 0;
}
bool WorkerRpc(const std::string& name) {
  return !ClientRpc(name) || absl::StartsWith(name, "GetFactor") || absl::StartsWith(name, "StatFactor");
}

TEST_F(RoleTest, EveryRpcRefusesTheOtherRolesTokenAndAcceptsItsOwn) {
  const auto rpcs = Rpcs();
  EXPECT_EQ(rpcs.size(), 25u);  // 17 unary, WatchJob, PutFactor, 2 factor reads x 3 keys
  for (const auto& [name, call] : rpcs) {
    SCOPED_TRACE(name);
    for (const std::string& token : {std::string(kClientToken), std::string(kWorkerToken)}) {
      const bool allowed = token == kClientToken ? ClientRpc(name) : WorkerRpc(name);
      const grpc::StatusCode code = call(token);
      if (allowed) {
        EXPECT_NE(code, grpc::StatusCode::PERMISSION_DENIED) << token;
        EXPECT_NE(code, grpc::StatusCode::UNAUTHENTICATED) << token;
      } else {
        EXPECT_EQ(code, grpc::StatusCode::PERMISSION_DENIED) << token;
      }
    }
    EXPECT_EQ(call(""), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(call("not-a-token"), grpc::StatusCode::UNAUTHENTICATED);
  }
}

TEST(ClientMayReadTest, ReportOutputsOnly) {
  EXPECT_TRUE(ClientMayRead("abc123/report"));
  EXPECT_TRUE(ClientMayRead("abc123/summary"));
  EXPECT_TRUE(ClientMayRead("abc123/expert_tokens"));
  EXPECT_TRUE(ClientMayRead("abc123/kept_experts"));
  EXPECT_FALSE(ClientMayRead("abc123/hidden"));
  EXPECT_FALSE(ClientMayRead("abc123/hidden.c00001"));
  EXPECT_FALSE(ClientMayRead("abc123/view"));
  EXPECT_FALSE(ClientMayRead("abc123/model.layers.0.self_attn.q_proj.weight.qweight"));
  EXPECT_FALSE(ClientMayRead("abc123/model.layers.0.mlp.experts.0.w1.weight.mask"));
  EXPECT_FALSE(ClientMayRead("report"));
  EXPECT_FALSE(ClientMayRead("/report"));
  EXPECT_FALSE(ClientMayRead("abc/def/report"));
}

// An AuthContext as gRPC's TLS transport fills it for a verified client certificate.
class CertContext : public grpc::AuthContext {
 public:
  CertContext(bool authenticated, std::map<std::string, std::string> properties)
      : authenticated_(authenticated), properties_(std::move(properties)) {}
  bool IsPeerAuthenticated() const override { return authenticated_; }
  std::vector<grpc::string_ref> GetPeerIdentity() const override { return {}; }
  std::string GetPeerIdentityPropertyName() const override { return "x509_common_name"; }
  std::vector<grpc::string_ref> FindPropertyValues(const std::string& name) const override {
    auto it = properties_.find(name);
    if (it == properties_.end()) return {};
    return {grpc::string_ref(it->second)};
  }
  grpc::AuthPropertyIterator begin() const override { return Iterator(); }
  grpc::AuthPropertyIterator end() const override { return Iterator(); }
  void AddProperty(const std::string&, const grpc::string_ref&) override {}
  bool SetPeerIdentityPropertyName(const std::string&) override { return false; }

 private:
  struct Iterator : grpc::AuthPropertyIterator {};
  bool authenticated_;
  std::map<std::string, std::string> properties_;
};

TEST(AuthenticatorTest, CertificateIdentitiesStandForTheirRoles) {
  RoleCredentials c;
  c.client_identities = {"alice"};
  c.worker_identities = {"gpu-node-7", "spiffe://moec/worker"};
  c.worker_token = kWorkerToken;
  absl::StatusOr<Authenticator> auth = Authenticator::Create(c);
  ASSERT_TRUE(auth.ok()) << auth.status();
  const std::multimap<grpc::string_ref, grpc::string_ref> none;
  CertContext alice(true, {{"x509_common_name", "alice"}});
  CertContext node(true, {{"x509_common_name", "node"}, {"x509_subject_alternative_name", "spiffe://moec/worker"}});
  CertContext unverified(false, {{"x509_common_name", "alice"}});
  CertContext stranger(true, {{"x509_common_name", "mallory"}});
  EXPECT_TRUE(auth->Check(none, &alice, Role::kClient).ok());
  EXPECT_EQ(auth->Check(none, &alice, Role::kWorker).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(auth->Check(none, &node, Role::kWorker).ok());
  EXPECT_EQ(auth->Check(none, &node, Role::kClient).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Only a verified certificate counts; an unknown one is no credential.
  EXPECT_EQ(auth->Check(none, &unverified, Role::kClient).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(auth->Check(none, &stranger, Role::kClient).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(auth->Check(none, nullptr, Role::kClient).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The worker token still works, and adds its role to a client certificate's.
  const std::string bearer = std::string("Bearer ") + kWorkerToken;
  const std::multimap<grpc::string_ref, grpc::string_ref> worker_token = {
      {grpc::string_ref("authorization"), grpc::string_ref(bearer)}};
  EXPECT_TRUE(auth->Check(worker_token, nullptr, Role::kWorker).ok());
  EXPECT_EQ(auth->RolesOf(worker_token, &alice), 3);
}

TEST(AuthenticatorTest, EveryRoleNeedsATokenOrAnIdentity) {
  RoleCredentials c;
  c.client_token = kClientToken;
  EXPECT_EQ(Authenticator::Create(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.worker_identities = {"node"};
  EXPECT_TRUE(Authenticator::Create(c).ok());
  c.client_token.clear();
  EXPECT_EQ(Authenticator::Create(c).status().code(), absl::StatusCode::kInvalidArgument);
  // One shared token holds both roles.
  const Authenticator shared = Authenticator::SharedToken("t");
  const std::string bearer = "Bearer t";
  const std::multimap<grpc::string_ref, grpc::string_ref> md = {
      {grpc::string_ref("authorization"), grpc::string_ref(bearer)}};
  EXPECT_EQ(shared.RolesOf(md, nullptr), 3);
}

}  // namespace
}  // namespace moec::coordinator
