#include "coordinator/worker_registry.h"

#include "absl/strings/str_cat.h"

namespace moec::coordinator {

std::string WorkerRegistry::Register(const WorkerInfo& info, int64_t now_ms) {
  std::string id = absl::StrCat("w", next_id_++, "-", info.name);
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

}  // namespace moec::coordinator
