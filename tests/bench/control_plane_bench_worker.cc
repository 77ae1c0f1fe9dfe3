// The worker processes of control_plane_bench: this binary with --worker (protocol in
// control_plane_bench.h).
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/process_tuning.h"
#include "tests/bench/control_plane_bench.h"
#include "worker/coordinator_client.h"

namespace control_plane_bench {
namespace {

std::string Join(const std::vector<double>& v) {
  return absl::StrJoin(v, " ", [](std::string* out, double x) { absl::StrAppend(out, x); });
}

// Answers "error <what>: <s>"; returns the exit code 1.
int Fail(absl::string_view what, const absl::Status& s) {
  std::printf("error %s: %s\n", std::string(what).c_str(), s.ToString().c_str());
  std::fflush(stdout);
  return 1;
}

// rtt N.
int WorkerRtt(moec::worker::CoordinatorClient& client, const std::string& id, int n) {
  std::vector<double> rtt;
  for (int i = 0; i < n; ++i) {
    auto r0 = Clock::now();
    if (auto s = client.Heartbeat(id, {}).status(); !s.ok()) return Fail("Heartbeat", s);
    rtt.push_back(Ms(Clock::now() - r0));
  }
  std::printf("rtt %s\n", Join(rtt).c_str());
  return 0;
}

// run (and the stop that ends it).
int WorkerRun(moec::worker::CoordinatorClient& client, const std::string& id, bool lease_next) {
  std::vector<double> latency, lease_calls;
  std::optional<moec::worker::Lease> next;
  int granted = 0;
  auto leased_at = Clock::now(), finished = Clock::now();
  while (true) {
    if (!next.has_value()) {
      const auto asked = Clock::now();
      auto lease = client.LeaseTask(id);
      if (!lease.ok()) return Fail("LeaseTask", lease.status());
      if (!lease->has_value()) {  // nothing ready now: stop if the job ended, else back off
        pollfd p{STDIN_FILENO, POLLIN, 0};
        if (poll(&p, 1, 0) == 1) break;  // "stop"
        std::this_thread::sleep_for(std::chrono::microseconds(500));  // as moec-worker does
        continue;
      }
      next = *std::move(lease);
      leased_at = Clock::now();
      lease_calls.push_back(Ms(leased_at - asked));
    }
    const std::string task_id = next->task.task_id();
    next.reset();
    if (absl::Status s = client.CompleteTask(id, task_id, 0, {}, lease_next ? &next : nullptr);
        !s.ok()) {
      return Fail("CompleteTask", s);
    }
    finished = Clock::now();
    latency.push_back(Ms(finished - leased_at));
    leased_at = finished;  // a task granted with the completion is in hand now
    if (next.has_value()) ++granted;
  }
  std::string line;
  if (!std::getline(std::cin, line) || line != "stop") {
    return Fail("run", absl::InternalError("no stop"));
  }
  std::printf("lat %s\nlease %s\ndone %lld %d\n", Join(latency).c_str(), Join(lease_calls).c_str(),
              static_cast<long long>(finished.time_since_epoch().count()), granted);
  return 0;
}

}  // namespace

bool LeaseNext() {
  return !std::getenv("BENCH_LEASE_NEXT") || std::atoi(std::getenv("BENCH_LEASE_NEXT")) != 0;
}

int WorkerMain(const std::string& address, int index) {
  moec::SkipMutexDeadlockDetection();  // as moec-worker does
  moec::worker::GrpcClientOptions o;
  o.address = address;
  o.lease_wait_ms = std::atoi(std::getenv("BENCH_LEASE_WAIT_MS") ? std::getenv("BENCH_LEASE_WAIT_MS") : "1000");
  o.token = "bench";
  auto client = moec::worker::NewGrpcCoordinatorClient(o);
  if (!client.ok()) return Fail("client", client.status());
  auto id = (*client)->RegisterWorker({absl::StrCat("bench", index)});
  if (!id.ok()) return Fail("RegisterWorker", id.status());
  std::printf("ready %s\n", id->c_str());
  std::fflush(stdout);
  const bool lease_next = LeaseNext();
  std::string line;
  while (std::getline(std::cin, line)) {
    int rc = 0;
    if (absl::StartsWith(line, "rtt ")) {
      rc = WorkerRtt(**client, *id, std::atoi(line.c_str() + 4));
    } else if (line == "run") {
      rc = WorkerRun(**client, *id, lease_next);
    } else {
      return Fail("command", absl::InvalidArgumentError(line));
    }
    if (rc != 0) return rc;
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace control_plane_bench
