// An in-memory KvStore for unit tests of the layers above storage (JobStore, FactorStore users).
// Same semantics as RocksDbKvStore except durability: nothing survives the object.
#ifndef MOEC_STORAGE_IN_MEMORY_KV_STORE_H_
#define MOEC_STORAGE_IN_MEMORY_KV_STORE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "storage/kv_store.h"

namespace moec::storage {

// Thread-safe. Iterators copy the column family at creation (a snapshot), so they are O(n).
class InMemoryKvStore : public KvStore {
 public:
  explicit InMemoryKvStore(std::vector<std::string> column_families);

  std::vector<std::string> ColumnFamilies() const override;
  absl::Status Read(absl::string_view cf, absl::string_view key,
                    absl::FunctionRef<absl::Status(absl::string_view)> fn) const override;
  absl::Status Put(absl::string_view cf, absl::string_view key, absl::string_view value,
                   Durability durability) override;
  absl::Status Write(const KvWriteBatch& batch, Durability durability) override;
  absl::Status SyncLog() override { return absl::OkStatus(); }  // nothing to lose in memory
  absl::Status Flush(absl::string_view cf) override;
  std::unique_ptr<KvIterator> NewIterator(absl::string_view cf) const override;

  // Test hook: overwrites a stored value in place (to simulate on-disk corruption).
  absl::Status TEST_Corrupt(absl::string_view cf, absl::string_view key, size_t offset);

 private:
  using Table = std::map<std::string, std::string, std::less<>>;
  absl::Status CheckCf(absl::string_view cf) const;

  const std::vector<std::string> cf_names_;
  mutable absl::Mutex mu_;
  std::map<std::string, Table, std::less<>> tables_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moec::storage

#endif  // MOEC_STORAGE_IN_MEMORY_KV_STORE_H_
