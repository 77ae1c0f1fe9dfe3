#include "coordinator/worker_registry.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace moec::coordinator {

namespace {

// n of an id "w<n>-<name>" for `name`, or -1.
int64_t IdNumber(absl::string_view id, absl::string_view name) {
  if (!absl::ConsumePrefix(&id, "w") || !absl::ConsumeSuffix(&id, name) ||
      !absl::ConsumeSuffix(&id, "-")) {
    return -1;
  }
  int64_t n = -1;
  return !id.empty() && absl::SimpleAtoi(id, &n) && n >= 0 && absl::StrCat(n) == id ? n : -1;
}

}  // namespace

void WorkerRegistry::ReserveId(absl::string_view id) {
  const size_t dash = id.find('-');
  if (dash == absl::string_view::npos) return;
  const int64_t n = IdNumber(id, id.substr(dash + 1));
  if (n >= 0) next_id_ = std::max<int64_t>(next_id_, n + 1);
}

std::string WorkerRegistry::Register(const WorkerInfo& info, int64_t now_ms) {
  std::string id;
  const int64_t previous = IdNumber(info.previous_id, info.name);
  if (previous >= 0 && workers_.count(info.previous_id) == 0) {
    id = info.previous_id;
    next_id_ = std::max<int64_t>(next_id_, previous + 1);
  } else {
    do {
      id = absl::StrCat("w", next_id_++, "-", info.name);
    } while (workers_.count(id) > 0);
  }
  Worker w;
  w.info = info;
  w.last_seen_ms = now_ms;
  workers_.emplace(id, std::move(w));
  return id;
}

bool WorkerRegistry::Touch(absl::string_view id, int64_t now_ms) {
  auto it = workers_.find(std::string(id));
  if (it == workers_.end()) return false;
  it->second.last_seen_ms = now_ms;
  return true;
}

std::vector<std::string> WorkerRegistry::DropSilent(int64_t now_ms, int64_t timeout_ms) {
  std::vector<std::string> dropped;
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (now_ms - it->second.last_seen_ms > timeout_ms) {
      dropped.push_back(it->first);
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  return dropped;
}

void WorkerRegistry::WaitUntil(absl::string_view id, int64_t until_ms) {
  auto it = workers_.find(std::string(id));
  if (it != workers_.end() && !it->second.mailbox.has_value()) {
    it->second.waiting_until_ms = until_ms;
  }
}

std::vector<WorkerSlots> WorkerRegistry::Idle(int64_t now_ms, absl::string_view preferred) const {
  std::vector<WorkerSlots> idle;
  for (const auto& [id, w] : workers_) {
    if (!w.mailbox.has_value() && w.waiting_until_ms >= now_ms) {
      idle.push_back({id, 1, id == preferred, w.info.gpu, w.info.device_memory_bytes});
    }
  }
  return idle;
}

std::vector<WorkerSlots> WorkerRegistry::Cluster() const {
  std::vector<WorkerSlots> all;
  for (const auto& [id, w] : workers_) {
    all.push_back({id, 1, false, w.info.gpu, w.info.device_memory_bytes});
  }
  return all;
}

void WorkerRegistry::Deliver(const std::string& id, LeasedTask grant) {
  Worker& w = workers_.at(id);
  w.waiting_until_ms = -1;
  w.mailbox = std::move(grant);
}

bool WorkerRegistry::HasMail(absl::string_view id) const {
  auto it = workers_.find(std::string(id));
  return it != workers_.end() && it->second.mailbox.has_value();
}

std::optional<LeasedTask> WorkerRegistry::TakeMail(absl::string_view id, int64_t now_ms) {
  auto it = workers_.find(std::string(id));
  if (it == workers_.end()) return std::nullopt;
  it->second.last_seen_ms = now_ms;
  std::optional<LeasedTask> out = std::move(it->second.mailbox);
  it->second.mailbox.reset();
  return out;
}

std::vector<WorkerRegistry::View> WorkerRegistry::List() const {
  std::vector<View> out;
  for (const auto& [id, w] : workers_) out.push_back({id, w.info, w.last_seen_ms});
  return out;
}

std::optional<WorkerRegistry::View> WorkerRegistry::ServingStore(absl::string_view store_id) const {
  std::optional<View> best;
  for (const auto& [id, w] : workers_) {
    if (w.info.store_id.empty() || w.info.store_id != store_id) continue;
    if (!best || w.last_seen_ms > best->last_seen_ms) best = View{id, w.info, w.last_seen_ms};
  }
  return best;
}

}  // namespace moec::coordinator
