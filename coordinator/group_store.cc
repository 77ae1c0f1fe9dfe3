#include "coordinator/group_store.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moec::coordinator {

absl::StatusOr<GroupStore::Namespace*> GroupStore::OpenLocked(const std::string& ns,
                                                              const std::string& key) {
  if (key.empty() || key.size() > limits_.max_key_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("group store key of ", key.size(), " bytes (1..", limits_.max_key_bytes, ")"));
  }
  const absl::Time now = absl::Now();
  for (auto it = namespaces_.begin(); it != namespaces_.end();) {
    it = now - it->second.last_used > limits_.idle ? namespaces_.erase(it) : std::next(it);
  }
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end()) {
    if (namespaces_.size() >= limits_.max_namespaces) {
      return absl::ResourceExhaustedError(
          absl::StrCat("group store holds ", namespaces_.size(), " namespaces"));
    }
    it = namespaces_.emplace(ns, Namespace{}).first;
  }
  it->second.last_used = now;
  return &it->second;
}

absl::Status GroupStore::Set(const std::string& ns, const std::string& key, std::string value) {
  if (value.size() > limits_.max_value_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("group store value of ", value.size(),
                                                   " bytes (at most ", limits_.max_value_bytes, ")"));
  }
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Namespace*> n = OpenLocked(ns, key);
  if (!n.ok()) return n.status();
  if ((*n)->values.count(key) == 0 && (*n)->values.size() >= limits_.max_keys) {
    return absl::ResourceExhaustedError(absl::StrCat("group store namespace ", ns, " is full"));
  }
  (*n)->values[key] = std::move(value);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> GroupStore::Get(const std::string& ns,
                                                           const std::string& key,
                                                           absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Namespace*> n = OpenLocked(ns, key);
  if (!n.ok()) return n.status();
  auto present = [this, &ns, &key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = namespaces_.find(ns);
    return it != namespaces_.end() && it->second.values.count(key) > 0;
  };
  mu_.AwaitWithTimeout(absl::Condition(&present), std::min(wait, limits_.max_wait));
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end() || it->second.values.count(key) == 0) return std::nullopt;
  return it->second.values[key];
}

absl::StatusOr<int64_t> GroupStore::Add(const std::string& ns, const std::string& key,
                                        int64_t delta) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Namespace*> n = OpenLocked(ns, key);
  if (!n.ok()) return n.status();
  int64_t v = 0;
  auto it = (*n)->values.find(key);
  if (it != (*n)->values.end() && !absl::SimpleAtoi(it->second, &v)) {
    return absl::FailedPreconditionError(absl::StrCat("group store key ", key, " is not an integer"));
  }
  v += delta;
  (*n)->values[key] = absl::StrCat(v);
  return v;
}

size_t GroupStore::namespaces() const {
  absl::MutexLock lock(&mu_);
  return namespaces_.size();
}

}  // namespace moec::coordinator
