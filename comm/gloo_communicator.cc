// Gloo through libtorch's c10d: ProcessGroupGloo over a c10d::Store that forwards to a
// RendezvousStore (the coordinator's GroupStore RPCs on workers).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/communicator.h"

namespace moec::comm {
namespace {

std::chrono::milliseconds Millis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// c10d's store interface over a RendezvousStore, for one connection attempt. c10d reports errors
// by throwing. Waits for keys in slices, and give up early (throwing) once any rank has
// published the failure of this attempt (AbortKey): the ranks then retry together instead of
// waiting out the timeout for a peer that will not come.
class StoreAdapter : public c10d::Store {
 public:
  StoreAdapter(std::shared_ptr<RendezvousStore> store, absl::Duration timeout,
               std::string abort_key)
      : c10d::Store(Millis(timeout)), store_(std::move(store)), abort_key_(std::move(abort_key)) {}

  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    Check(store_->Set(key, std::string(value.begin(), value.end())));
  }
  std::vector<uint8_t> get(const std::string& key) override {
    std::string v = WaitFor(key, absl::FromChrono(timeout_));
    return std::vector<uint8_t>(v.begin(), v.end());
  }
  int64_t add(const std::string& key, int64_t value) override {
    absl::StatusOr<int64_t> v = store_->Add(key, value);
    Check(v.status());
    return *v;
  }
  // c10d clones the store for its own threads (PyTorch 2.x): the same rendezvous, same attempt.
  c10::intrusive_ptr<c10d::Store> clone() override {
    return c10::make_intrusive<StoreAdapter>(store_, absl::FromChrono(timeout_), abort_key_);
  }
  bool deleteKey(const std::string&) override { return false; }
  bool check(const std::vector<std::string>& keys) override {
    for (const std::string& k : keys) {
      if (!store_->Get(k, absl::ZeroDuration()).ok()) return false;
    }
    return true;
  }
  int64_t getNumKeys() override { TORCH_CHECK(false, "getNumKeys is not supported"); }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    for (const std::string& k : keys) WaitFor(k, absl::FromChrono(timeout));
  }

 private:
  static void Check(const absl::Status& s) {
    TORCH_CHECK(s.ok(), "rendezvous store: ", s.ToString());
  }
  std::string WaitFor(const std::string& key, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      const absl::Duration slice = std::min(absl::Milliseconds(250), deadline - absl::Now());
      absl::StatusOr<std::string> v = store_->Get(key, std::max(absl::ZeroDuration(), slice));
      if (v.ok()) return *v;
      if (!absl::IsDeadlineExceeded(v.status()) || absl::Now() >= deadline) Check(v.status());
      TORCH_CHECK(!store_->Get(abort_key_, absl::ZeroDuration()).ok(),
                  "rendezvous store: a peer failed to connect (", abort_key_, ")");
    }
  }
  std::shared_ptr<RendezvousStore> store_;
  const std::string abort_key_;
};

// c10d errors to Status: timeouts are DeadlineExceeded, everything else a broken peer.
absl::Status FromException(const std::exception& e, absl::string_view what) {
  const std::string msg = e.what();
  const std::string first_line = msg.substr(0, msg.find('\n'));
  if (absl::StrContains(msg, "imed out") || absl::StrContains(msg, "DEADLINE_EXCEEDED") ||
      absl::StrContains(msg, "timeout")) {
    return absl::DeadlineExceededError(absl::StrCat("gloo ", what, ": ", first_line));
  }
  return absl::UnavailableError(absl::StrCat("gloo ", what, ": ", first_line));
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(c10::intrusive_ptr<c10d::ProcessGroupGloo> pg, int rank, int size,
                   absl::Duration timeout)
      : pg_(std::move(pg)), rank_(rank), size_(size), timeout_(Millis(timeout)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  absl::StatusOr<at::Tensor> AllToAll(const at::Tensor& input, absl::Span<const int64_t> counts,
                                      std::vector<int64_t>* recv_counts) override {
    if (absl::Status s = CheckAllToAll(input, counts, size_); !s.ok()) return s;
    try {
      // Row counts first (equal splits of one int64 each), then the rows.
      at::Tensor send = at::tensor(std::vector<int64_t>(counts.begin(), counts.end()), at::kLong);
      at::Tensor recv = at::empty({size_}, at::kLong);
      std::vector<int64_t> none;
      pg_->alltoall_base(recv, send, none, none)->wait(timeout_);
      std::vector<int64_t> in_counts(counts.begin(), counts.end());
      std::vector<int64_t> out_counts(recv.data_ptr<int64_t>(), recv.data_ptr<int64_t>() + size_);
      std::vector<int64_t> row_shape(input.sizes().begin() + 1, input.sizes().end());
      int64_t rows = 0;
      for (int64_t c : out_counts) rows += c;
      std::vector<int64_t> out_shape = {rows};
      out_shape.insert(out_shape.end(), row_shape.begin(), row_shape.end());
      // Gloo moves host memory: rows on a device are staged through the host and come back on
      // the input's device.
      at::Tensor in = input.to(at::kCPU).contiguous();
      at::Tensor out = at::empty(out_shape, in.options());
      // Every rank takes part, also with nothing to send or receive: whether the others have
      // rows is not known here. c10d moves from the count vectors: pass copies.
      std::vector<int64_t> out_arg = out_counts, in_arg = in_counts;
      pg_->alltoall_base(out, in, out_arg, in_arg)->wait(timeout_);
      const int64_t row_bytes = input.size(0) > 0 ? in.nbytes() / input.size(0) : 0;
      for (int j = 0; j < size_; ++j) {
        if (j != rank_) bytes_sent_ += counts[j] * row_bytes;
      }
      if (recv_counts != nullptr) *recv_counts = out_counts;
      return out.to(input.device());
    } catch (const std::exception& e) {
      return FromException(e, "all_to_all");
    }
  }
  absl::Status AllReduceSum(at::Tensor& t) override {
    try {
      std::vector<at::Tensor> ts = {t.to(at::kCPU)};
      pg_->allreduce(ts)->wait(timeout_);
      if (!ts[0].is_same(t)) t.copy_(ts[0]);
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return FromException(e, "all_reduce");
    }
  }
  absl::Status Broadcast(at::Tensor& t, int root) override {
    if (root < 0 || root >= size_) return absl::InvalidArgumentError("broadcast: root out of range");
    try {
      std::vector<at::Tensor> ts = {t.to(at::kCPU)};
      c10d::BroadcastOptions options;
      options.rootRank = root;
      pg_->broadcast(ts, options)->wait(timeout_);
      if (!ts[0].is_same(t)) t.copy_(ts[0]);
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return FromException(e, "broadcast");
    }
  }
  absl::Status Barrier() override {
    try {
      pg_->barrier()->wait(timeout_);
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return FromException(e, "barrier");
    }
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  const int rank_, size_;
  const std::chrono::milliseconds timeout_;
};

constexpr int kMaxConnectAttempts = 5;

std::string AbortKey(int attempt) { return absl::StrCat("abort", attempt); }

// One attempt at forming the group, its keys under "try<attempt>/".
// Store waits end at `left`; collectives keep the full timeout.
absl::StatusOr<std::unique_ptr<Communicator>> ConnectGloo(std::shared_ptr<RendezvousStore> raw,
                                                          const GlooOptions& options,
                                                          absl::Duration left, int attempt) {
  // libtorch 2.x records every collective in a process-wide flight recorder (a debugging aid
  // moec does not read). After a group whose rendezvous timed out, a retried group's first
  // collective crashed inside it (worker_test under TSan, once in four TSan runs). Off unless
  // the user set it; the recorder reads the variable when it is first used.
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  try {
    auto store = c10::make_intrusive<StoreAdapter>(
        std::move(raw), std::max(left, absl::Milliseconds(1)), AbortKey(attempt));
    auto pg_options = c10d::ProcessGroupGloo::Options::create(Millis(options.timeout));
    pg_options->devices = {c10d::ProcessGroupGloo::createDeviceForHostname(options.host)};
    pg_options->threads = 1;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("try", attempt), store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, options.rank, options.size,
                                                          pg_options);
    return std::unique_ptr<Communicator>(
        new GlooCommunicator(std::move(pg), options.rank, options.size, options.timeout));
  } catch (const std::exception& e) {
    return FromException(e, absl::StrCat("rendezvous of rank ", options.rank, " on ", options.host));
  }
}

// Publishes whether this rank connected in `attempt` and waits for every rank's outcome: true
// when all connected. Errors: DeadlineExceeded when a rank's outcome does not arrive in time.
absl::StatusOr<bool> AgreeOnAttempt(RendezvousStore& store, const GlooOptions& options,
                                    int attempt, bool connected, absl::Time deadline) {
  const std::string prefix = absl::StrCat("outcome", attempt, "/");
  absl::Status set = store.Set(absl::StrCat(prefix, options.rank), connected ? "1" : "0");
  if (set.ok() && !connected) set = store.Set(AbortKey(attempt), "1");  // peers stop waiting
  if (!set.ok()) return set;
  bool all = true;
  for (int r = 0; r < options.size; ++r) {
    absl::StatusOr<std::string> v =
        store.Get(absl::StrCat(prefix, r), std::max(absl::ZeroDuration(), deadline - absl::Now()));
    if (!v.ok()) {
      return absl::Status(v.status().code(), absl::StrCat("gloo rendezvous: rank ", r,
                                                          " did not report its connection: ",
                                                          v.status().message()));
    }
    all = all && *v == "1";
  }
  return all;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NewGlooCommunicator(
    std::shared_ptr<RendezvousStore> store, const GlooOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: rank ", options.rank, " of a group of ", options.size));
  }
  if (store == nullptr) return absl::InvalidArgumentError("gloo: no rendezvous store");
  // Connection setup can fail on a loaded machine (a peer's socket closed mid-handshake). Every
  // attempt forms the group under its own key prefix; then the ranks agree through the store on
  // whether all of them connected, and retry together while the timeout allows. A rank that
  // never arrives makes the agreement wait time out (DeadlineExceeded), as before.
  const absl::Time deadline = absl::Now() + options.timeout;
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<std::unique_ptr<Communicator>> made =
        ConnectGloo(store, options, deadline - absl::Now(), attempt);
    absl::StatusOr<bool> all_connected = AgreeOnAttempt(*store, options, attempt, made.ok(), deadline);
    if (!all_connected.ok()) {
      return made.ok() ? all_connected.status()
                       : absl::Status(made.status().code(),
                                      absl::StrCat(made.status().message(), "; ",
                                                   all_connected.status().message()));
    }
    if (*all_connected) return made;
    if (attempt + 1 >= kMaxConnectAttempts || absl::Now() >= deadline) {
      return made.ok() ? absl::UnavailableError(absl::StrCat(
                             "gloo rendezvous of rank ", options.rank, ": a peer failed to connect ",
                             kMaxConnectAttempts, " times"))
                       : made.status();
    }
    absl::SleepFor(std::min(absl::Milliseconds(100 << attempt), deadline - absl::Now()));
  }
}

}  // namespace moec::comm
