#include "comm/communicator.h"

#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/task_profile.h"

namespace moec::comm {

absl::Status CheckAllToAll(const at::Tensor& input, absl::Span<const int64_t> send_counts,
                           int size) {
  if (static_cast<int>(send_counts.size()) != size) {
    return absl::InvalidArgumentError(absl::StrCat("all_to_all: ", send_counts.size(),
                                                   " send counts for a group of ", size));
  }
  if (input.dim() < 1) return absl::InvalidArgumentError("all_to_all: input has no row axis");
  int64_t total = 0;
  for (int64_t c : send_counts) {
    if (c < 0) return absl::InvalidArgumentError("all_to_all: negative send count");
    total += c;
  }
  if (total != input.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("all_to_all: send counts sum to ", total,
                                                   " but the input has ", input.size(0), " rows"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<at::Tensor>> Communicator::AllGather(const at::Tensor& t) {
  const int n = size();
  at::Tensor rows = t.dim() == 0 ? t.reshape({1}) : t;
  std::vector<at::Tensor> copies(n, rows);
  std::vector<int64_t> counts(n, rows.size(0));
  std::vector<int64_t> received;
  absl::StatusOr<at::Tensor> all = AllToAll(at::cat(copies, 0), counts, &received);
  if (!all.ok()) return all.status();
  std::vector<at::Tensor> out;
  int64_t offset = 0;
  for (int64_t c : received) {
    out.push_back(all->narrow(0, offset, c));
    offset += c;
  }
  return out;
}

namespace {

class SingleRank : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  absl::StatusOr<at::Tensor> AllToAll(const at::Tensor& input, absl::Span<const int64_t> counts,
                                      std::vector<int64_t>* recv_counts) override {
    if (absl::Status s = CheckAllToAll(input, counts, 1); !s.ok()) return s;
    if (recv_counts != nullptr) *recv_counts = {input.size(0)};
    return input.clone();
  }
  absl::Status AllReduceSum(at::Tensor&) override { return absl::OkStatus(); }
  absl::Status Broadcast(at::Tensor&, int root) override {
    return root == 0 ? absl::OkStatus() : absl::InvalidArgumentError("broadcast: root out of range");
  }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

// State shared by the ranks of a local group: each collective is an exchange in which every rank
// deposits one tensor per destination, waits for all deposits, takes its own, and waits until
// everybody has taken theirs before the slots are reused.
struct LocalShared {
  explicit LocalShared(int n, absl::Duration t) : size(n), timeout(t), slots(n) {}
  const int size;
  const absl::Duration timeout;
  absl::Mutex mu;
  std::vector<std::vector<at::Tensor>> slots;  // [source][destination]
  int deposited = 0;
  int taken = 0;
  int64_t generation = 0;
  bool broken = false;
};

class LocalRank : public Communicator {
 public:
  LocalRank(std::shared_ptr<LocalShared> shared, int rank)
      : shared_(std::move(shared)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return shared_->size; }

  absl::StatusOr<at::Tensor> AllToAll(const at::Tensor& input, absl::Span<const int64_t> counts,
                                      std::vector<int64_t>* recv_counts) override {
    if (absl::Status s = CheckAllToAll(input, counts, size()); !s.ok()) return s;
    std::vector<at::Tensor> parts;
    int64_t offset = 0;
    for (int j = 0; j < size(); ++j) {
      parts.push_back(input.narrow(0, offset, counts[j]).clone());
      if (j != rank_) bytes_sent_ += parts.back().nbytes();
      offset += counts[j];
    }
    absl::StatusOr<std::vector<at::Tensor>> got = Exchange(std::move(parts));
    if (!got.ok()) return got.status();
    if (recv_counts != nullptr) {
      recv_counts->clear();
      for (const at::Tensor& t : *got) recv_counts->push_back(t.size(0));
    }
    return at::cat(*got, 0);
  }
  absl::Status AllReduceSum(at::Tensor& t) override {
    absl::StatusOr<std::vector<at::Tensor>> got =
        Exchange(std::vector<at::Tensor>(size(), t.clone()));
    if (!got.ok()) return got.status();
    at::Tensor sum = (*got)[0].clone();
    for (int j = 1; j < size(); ++j) sum.add_((*got)[j]);
    t.copy_(sum);
    return absl::OkStatus();
  }
  absl::Status Broadcast(at::Tensor& t, int root) override {
    if (root < 0 || root >= size()) return absl::InvalidArgumentError("broadcast: root out of range");
    absl::StatusOr<std::vector<at::Tensor>> got =
        Exchange(std::vector<at::Tensor>(size(), rank_ == root ? t.clone() : at::Tensor()));
    if (!got.ok()) return got.status();
    t.copy_((*got)[root]);
    return absl::OkStatus();
  }
  absl::Status Barrier() override {
    return Exchange(std::vector<at::Tensor>(size())).status();
  }

 private:
  // Deposits parts[j] for rank j; returns what every rank deposited for this one.
  absl::StatusOr<std::vector<at::Tensor>> Exchange(std::vector<at::Tensor> parts) {
    LocalShared& s = *shared_;
    absl::MutexLock lock(&s.mu);
    const absl::Time deadline = absl::Now() + s.timeout;
    auto timed_out = [&] {
      s.broken = true;
      return absl::DeadlineExceededError(absl::StrCat("local group rank ", rank_,
                                                      ": peers did not arrive in time"));
    };
    // Wait until the previous exchange has been fully taken.
    const int64_t gen = s.generation;
    s.slots[rank_] = std::move(parts);
    ++s.deposited;
    auto all_deposited = [&] { return s.broken || s.generation != gen || s.deposited == s.size; };
    if (!s.mu.AwaitWithDeadline(absl::Condition(&all_deposited), deadline)) return timed_out();
    if (s.broken) return absl::UnavailableError("local group broken by a failed peer");
    std::vector<at::Tensor> out;
    for (int j = 0; j < s.size; ++j) out.push_back(s.slots[j][rank_]);
    if (++s.taken == s.size) {
      s.deposited = 0;
      s.taken = 0;
      ++s.generation;
    }
    auto next = [&] { return s.broken || s.generation != gen; };
    if (!s.mu.AwaitWithDeadline(absl::Condition(&next), deadline)) return timed_out();
    return out;
  }

  std::shared_ptr<LocalShared> shared_;
  const int rank_;
};

class MemoryStore : public RendezvousStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override {
    absl::MutexLock lock(&mu_);
    values_[key] = value;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    auto present = [&] { return values_.count(key) > 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&present), timeout)) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key ", key, " not set in time"));
    }
    return values_[key];
  }
  absl::StatusOr<int64_t> Add(const std::string& key, int64_t delta) override {
    absl::MutexLock lock(&mu_);
    const int64_t v = (values_.count(key) ? std::stoll(values_[key]) : 0) + delta;
    values_[key] = std::to_string(v);
    return v;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> values_;
};

}  // namespace

std::unique_ptr<Communicator> NewSingleRankCommunicator() { return std::make_unique<SingleRank>(); }

std::vector<std::unique_ptr<Communicator>> NewLocalGroup(int size, absl::Duration timeout) {
  auto shared = std::make_shared<LocalShared>(size, timeout);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<LocalRank>(shared, r));
  return out;
}

std::shared_ptr<RendezvousStore> NewMemoryRendezvousStore() {
  return std::make_shared<MemoryStore>();
}

absl::StatusOr<Communicator*> LazyCommunicator::Impl() {
  if (impl_ != nullptr) return impl_.get();
  if (!failed_.ok()) return failed_;
  absl::StatusOr<std::unique_ptr<Communicator>> made = factory_();
  if (!made.ok()) {
    failed_ = made.status();
    return failed_;
  }
  impl_ = std::move(*made);
  return impl_.get();
}

// A task's collectives, rendezvous included, are its communication phase (TaskProfile).
absl::StatusOr<at::Tensor> LazyCommunicator::AllToAll(const at::Tensor& input,
                                                      absl::Span<const int64_t> send_counts,
                                                      std::vector<int64_t>* recv_counts) {
  profile::ScopedPhase phase(profile::Phase::kCommunication);
  absl::StatusOr<Communicator*> c = Impl();
  if (!c.ok()) return c.status();
  const int64_t before = (*c)->bytes_sent();
  absl::StatusOr<at::Tensor> out = (*c)->AllToAll(input, send_counts, recv_counts);
  bytes_sent_ += (*c)->bytes_sent() - before;
  return out;
}
absl::Status LazyCommunicator::AllReduceSum(at::Tensor& t) {
  profile::ScopedPhase phase(profile::Phase::kCommunication);
  absl::StatusOr<Communicator*> c = Impl();
  return c.ok() ? (*c)->AllReduceSum(t) : c.status();
}
absl::Status LazyCommunicator::Broadcast(at::Tensor& t, int root) {
  profile::ScopedPhase phase(profile::Phase::kCommunication);
  absl::StatusOr<Communicator*> c = Impl();
  return c.ok() ? (*c)->Broadcast(t, root) : c.status();
}
absl::Status LazyCommunicator::Barrier() {
  profile::ScopedPhase phase(profile::Phase::kCommunication);
  absl::StatusOr<Communicator*> c = Impl();
  return c.ok() ? (*c)->Barrier() : c.status();
}

}  // namespace moec::comm
