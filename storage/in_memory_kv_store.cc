#include "storage/in_memory_kv_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moec::storage {
namespace {

class SnapshotIterator : public KvIterator {
 public:
  explicit SnapshotIterator(std::vector<std::pair<std::string, std::string>> rows,
                            absl::Status status)
      : rows_(std::move(rows)), status_(std::move(status)), pos_(rows_.size()) {}
  void Seek(absl::string_view target) override {
    pos_ = std::lower_bound(rows_.begin(), rows_.end(), target,
                            [](const auto& row, absl::string_view t) { return row.first < t; }) -
           rows_.begin();
  }
  bool Valid() const override { return status_.ok() && pos_ < rows_.size(); }
  void Next() override { ++pos_; }
  absl::string_view key() const override { return rows_[pos_].first; }
  absl::string_view value() const override { return rows_[pos_].second; }
  absl::Status status() const override { return status_; }

 private:
  const std::vector<std::pair<std::string, std::string>> rows_;
  const absl::Status status_;
  size_t pos_;
};

}  // namespace

InMemoryKvStore::InMemoryKvStore(std::vector<std::string> column_families)
    : cf_names_(std::move(column_families)) {
  for (const auto& cf : cf_names_) tables_[cf];
}

std::vector<std::string> InMemoryKvStore::ColumnFamilies() const { return cf_names_; }

absl::Status InMemoryKvStore::CheckCf(absl::string_view cf) const {
  if (std::find(cf_names_.begin(), cf_names_.end(), cf) == cf_names_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown column family '", cf, "'"));
  }
  return absl::OkStatus();
}

absl::Status InMemoryKvStore::Read(absl::string_view cf, absl::string_view key,
                                   absl::FunctionRef<absl::Status(absl::string_view)> fn) const {
  MOEC_RETURN_IF_ERROR(CheckCf(cf));
  std::string copy;
  {
    absl::MutexLock lock(&mu_);
    const Table& t = tables_.find(cf)->second;
    auto it = t.find(key);
    if (it == t.end()) {
      return absl::NotFoundError(absl::StrCat("key '", key, "' not in column family '", cf, "'"));
    }
    copy = it->second;  // fn runs without the lock held
  }
  return fn(copy);
}

absl::Status InMemoryKvStore::Put(absl::string_view cf, absl::string_view key,
                                  absl::string_view value, Durability durability) {
  KvWriteBatch batch;
  batch.Put(cf, key, value);
  return Write(batch, durability);
}

absl::Status InMemoryKvStore::Write(const KvWriteBatch& batch, Durability durability) {
  for (const auto& op : batch.ops()) MOEC_RETURN_IF_ERROR(CheckCf(op.cf));
  absl::MutexLock lock(&mu_);
  for (const auto& op : batch.ops()) {
    Table& t = tables_.find(op.cf)->second;
    switch (op.kind) {
      case KvWriteBatch::OpKind::kPut:
        t[op.key] = op.value;
        break;
      case KvWriteBatch::OpKind::kDelete:
        t.erase(op.key);
        break;
      case KvWriteBatch::OpKind::kDeleteRange:
        if (op.key < op.value) t.erase(t.lower_bound(op.key), t.lower_bound(op.value));
        break;
    }
  }
  return absl::OkStatus();
}

absl::Status InMemoryKvStore::Flush(absl::string_view cf) { return CheckCf(cf); }

std::unique_ptr<KvIterator> InMemoryKvStore::NewIterator(absl::string_view cf) const {
  absl::Status s = CheckCf(cf);
  std::vector<std::pair<std::string, std::string>> rows;
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    const Table& t = tables_.find(cf)->second;
    rows.assign(t.begin(), t.end());
  }
  return std::make_unique<SnapshotIterator>(std::move(rows), std::move(s));
}

absl::Status InMemoryKvStore::TEST_Corrupt(absl::string_view cf, absl::string_view key,
                                           size_t offset) {
  MOEC_RETURN_IF_ERROR(CheckCf(cf));
  absl::MutexLock lock(&mu_);
  Table& t = tables_.find(cf)->second;
  auto it = t.find(key);
  if (it == t.end() || offset >= it->second.size()) return absl::NotFoundError("no such byte");
  it->second[offset] ^= 0x01;
  return absl::OkStatus();
}

}  // namespace moec::storage
