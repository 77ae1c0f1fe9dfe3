#include "coordinator/output_staging.h"

#include <cctype>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moec::coordinator {

std::shared_ptr<OutputStaging::Pending> OutputStaging::Open(const std::string& task_id) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Pending>& slot = pending_[task_id];
  if (slot == nullptr) {
    slot = std::make_shared<Pending>();
    absl::MutexLock pending_lock(&slot->mu);
    slot->txn = factors_->NewTransaction();
  }
  return slot;
}

absl::Status OutputStaging::Stream(Pending& pending, const std::string& key, storage::DType dtype,
                                   absl::Span<const int64_t> shape, ChunkSource& source) {
  absl::MutexLock lock(&pending.mu);
  storage::FactorTransaction& txn = *pending.txn;
  MOEC_RETURN_IF_ERROR(txn.Begin(key, dtype, shape));
  absl::Status s;
  std::string chunk;
  while (s.ok()) {
    absl::StatusOr<bool> more = source.Next(&chunk);
    if (!more.ok()) s = more.status();
    if (!s.ok() || !*more) break;
    s = txn.Append(chunk);
  }
  if (s.ok()) s = txn.End();
  if (!s.ok()) txn.AbortCurrent();
  return s;
}

std::shared_ptr<OutputStaging::Pending> OutputStaging::Take(const std::string& task_id) {
  absl::MutexLock lock(&mu_);
  auto it = pending_.find(task_id);
  if (it == pending_.end()) return nullptr;
  std::shared_ptr<Pending> out = std::move(it->second);
  pending_.erase(it);
  return out;
}

void OutputStaging::Discard(const std::string& task_id) {
  absl::MutexLock lock(&mu_);
  pending_.erase(task_id);
}

absl::Status OutputStaging::CheckName(absl::string_view name) {
  bool ok = !name.empty() && name.size() <= 256 && name.find("..") == absl::string_view::npos;
  for (char c : name) {
    ok = ok && (isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
                c == '/');
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("output name '", name, "' must be 1-256 of [A-Za-z0-9._/-] without '..'"));
  }
  return absl::OkStatus();
}

}  // namespace moec::coordinator
