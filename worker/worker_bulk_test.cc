// Bulk outputs through real Workers: kept in each worker's activation store and recorded with
// the coordinator, read by a peer from the store of the worker that wrote them, and re-produced
// (lineage) when no worker holding them is left.
#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "stages/stage.h"
#include "tests/testing/status_matchers.h"
#include "worker/activation_store.h"
#include "worker/worker_test_fixture.h"

namespace moec::worker {
namespace {

// Per layer: stage "a" writes the bulk output "hidden.c00000" (its layer's bytes); stage "b"
// reads stage a's output of its layer and checks it. Counts the runs of "a".
class BulkStage : public stages::Stage {
 public:
  explicit BulkStage(std::atomic<int>* writes) : writes_(writes) {}
  static std::string Bytes(int layer) { return std::string(4096, static_cast<char>('a' + layer)); }
  absl::Status Run(stages::StageContext& ctx) override {
    const int layer = ctx.task->layer();
    if (ctx.stage->id == "a") {
      ++*writes_;
      return ctx.io->PutBulk("hidden.c00000", storage::DType::kU8, {4096}, Bytes(layer)).status();
    }
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey("a", layer, "hidden.c00000"));
    MOEC_ASSIGN_OR_RETURN(storage::Factor f, ctx.io->Get(key));
    if (f.data != Bytes(layer)) return absl::InternalError(absl::StrCat("layer ", layer, ": wrong bytes"));
    return absl::OkStatus();
  }

 private:
  std::atomic<int>* writes_;
};

// A worker's data plane: its activation store, served to peers, and its reader of theirs.
struct DataPlane {
  explicit DataPlane(const std::string& dir) {
    store = *ActivationStore::Open(dir);
    ActivationServerOptions o;
    o.token = "t";
    server = *ActivationServer::Start(store.get(), o);
    peers = std::make_unique<PeerReader>(PeerReaderOptions{"t"});
  }
  void Into(WorkerOptions* o) {
    o->activations = store.get();
    o->data_address = server->address();
    o->peers = peers.get();
  }
  std::unique_ptr<ActivationStore> store;
  std::unique_ptr<ActivationServer> server;
  std::unique_ptr<PeerReader> peers;
};

class WorkerBulkTest : public WorkerTest {
 protected:
  std::string SubmitStages(const std::string& stages) {
    auto r = core_->SubmitJob("name: bulk\nmodel: m\noutput: out\nstages:\n" + stages,
                              dir_.Join("r.yaml"), {});
    EXPECT_TRUE(r.ok()) << r.status();
    return r->job.job_id();
  }
  std::string Describe(const std::string& job) {
    std::string out = core_->GetJob(job)->error();
    const absl::StatusOr<std::vector<v1::TaskRecord>> tasks = core_->GetTasks(job);
    for (const v1::TaskRecord& t : *tasks) {
      absl::StrAppend(&out, "\n", t.task_id(), " ", v1::TaskState_Name(t.state()), " ", t.error());
    }
    return out;
  }
  static constexpr char kA[] = "  - {id: a, kind: noop}\n";
  static constexpr char kB[] = "  - {id: a, kind: noop}\n  - {id: b, kind: noop, needs: [a]}\n";
};

TEST_F(WorkerBulkTest, PeersReadBulkOutputsFromTheWorkerThatKeepsThemAndLostOnesAreReProduced) {
  std::atomic<int> writes{0};
  stages::StageRegistry registry;
  registry.Register("noop", [&] { return std::make_unique<BulkStage>(&writes); });
  ::moec::testing::TempDir dir_a, dir_b;
  auto plane_a = std::make_unique<DataPlane>(dir_a.path());
  DataPlane plane_b(dir_b.path());
  WorkerOptions oa = Fast(), ob = Fast();
  plane_a->Into(&oa);
  plane_b.Into(&ob);
  ob.holder_wait = absl::Milliseconds(300);
  // Worker A alone produces stage a's outputs: A's store keeps them, the coordinator only
  // records them.
  {
    Worker a(client_.get(), &registry, oa);
    ASSERT_OK(a.Start());
    ASSERT_EQ(WaitForEnd(SubmitStages(kA)), v1::JOB_SUCCEEDED);
    a.Stop();
  }
  // A stays registered (it may come back) but is no longer eligible once its last poll window
  // (3 s) has passed.
  absl::SleepFor(absl::Milliseconds(3200));
  EXPECT_EQ(writes.load(), 3);
  EXPECT_EQ(core_->Stats().factor_bytes_held, 3 * 4096);
  EXPECT_EQ(core_->Stats().factor_bytes_stored, 0);
  // Worker B runs stage b of a job that reuses them: it reads them from A's store.
  Worker b(client_.get(), &registry, ob);
  ASSERT_OK(b.Start());
  std::string job = SubmitStages(kB);
  ASSERT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED) << Describe(job);
  EXPECT_EQ(writes.load(), 3);  // nothing re-produced
  EXPECT_EQ(plane_b.peers->reads(), 3);
  // A is gone with its store: a job that reads them again re-produces them on B (lineage).
  plane_a.reset();
  job = SubmitStages(std::string(kB) + "  - {id: c, kind: noop, needs: [a], with: {sleep_ms: 1}}\n");
  ASSERT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED) << core_->GetJob(job)->error();
  EXPECT_EQ(writes.load(), 6);  // each of stage a's 3 tasks once more
  b.Stop();
}

}  // namespace
}  // namespace moec::worker
