#include "storage/kv_store.h"

#include "absl/strings/match.h"

namespace moec::storage {

void KvWriteBatch::Put(absl::string_view cf, absl::string_view key, absl::string_view value) {
  ops_.push_back({OpKind::kPut, std::string(cf), std::string(key), std::string(value)});
  bytes_ += key.size() + value.size();
}

void KvWriteBatch::Delete(absl::string_view cf, absl::string_view key) {
  ops_.push_back({OpKind::kDelete, std::string(cf), std::string(key), ""});
  bytes_ += key.size();
}

void KvWriteBatch::DeleteRange(absl::string_view cf, absl::string_view begin,
                               absl::string_view end) {
  ops_.push_back({OpKind::kDeleteRange, std::string(cf), std::string(begin), std::string(end)});
  bytes_ += begin.size() + end.size();
}

void KvWriteBatch::Append(const KvWriteBatch& other) {
  ops_.insert(ops_.end(), other.ops_.begin(), other.ops_.end());
  bytes_ += other.bytes_;
}

absl::StatusOr<std::string> KvStore::Get(absl::string_view cf, absl::string_view key) const {
  std::string out;
  absl::Status s = Read(cf, key, [&out](absl::string_view v) {
    out.assign(v.data(), v.size());
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::Status ScanPrefix(const KvStore& store, absl::string_view cf, absl::string_view prefix,
                        absl::FunctionRef<bool(absl::string_view, absl::string_view)> fn) {
  std::unique_ptr<KvIterator> it = store.NewIterator(cf);
  for (it->Seek(prefix); it->Valid() && absl::StartsWith(it->key(), prefix); it->Next()) {
    if (!fn(it->key(), it->value())) break;
  }
  return it->status();
}

std::string PrefixSuccessor(absl::string_view prefix) {
  std::string s(prefix);
  while (!s.empty()) {
    unsigned char last = static_cast<unsigned char>(s.back());
    if (last != 0xFF) {
      s.back() = static_cast<char>(last + 1);
      return s;
    }
    s.pop_back();
  }
  return s;
}

}  // namespace moec::storage
