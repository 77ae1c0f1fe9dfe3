// KvStore on RocksDB. Column families are declared at open; those holding large values (factor
// chunks) use integrated BlobDB so values live in blob files and compactions never rewrite them.
// RocksDB headers stay inside rocksdb_kv_store.cc.
//
// Durability contract: Write/Put with Durability::kSync return after the WAL is fsynced; writes
// with kDeferred skip the WAL and are durable after Flush(cf). Destruction closes the database;
// iterators must be destroyed before the store.
#ifndef MOEC_STORAGE_ROCKSDB_KV_STORE_H_
#define MOEC_STORAGE_ROCKSDB_KV_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/kv_store.h"

namespace moec::storage {

struct ColumnFamilySpec {
  std::string name;
  // Values of a few KiB and more: store them in blob files (BlobDB), with more memtables.
  // Reads of such a family do not verify RocksDB's per-value checksum: its users (FactorStore)
  // store and check their own CRC32C on every value.
  bool large_values = false;
};

struct RocksDbKvStoreOptions {
  // Directory of the database; created when missing.
  std::string path;
  // Column families to open (the RocksDB "default" family is always opened but not exposed
  // unless listed). A database holding families not listed here is refused.
  std::vector<ColumnFamilySpec> column_families;
  // Memtable size for large-value families, in bytes (up to 8 memtables may exist at once).
  size_t large_value_write_buffer_bytes = 64ull << 20;
  // Values at least this large go to blob files in large-value families.
  size_t min_blob_bytes = 4096;
  // Block cache for small-value families, in bytes.
  size_t block_cache_bytes = 64ull << 20;
  // Background flush/compaction threads.
  int background_jobs = 4;

  absl::Status Validate() const;
};

class RocksDbKvStore : public KvStore {
 public:
  // Opens or creates the database. Errors: InvalidArgument for bad options; FailedPrecondition
  // when another process holds the database lock or it has unknown column families; DataLoss
  // for a corrupt database; NotFound/PermissionDenied from the file system.
  static absl::StatusOr<std::unique_ptr<RocksDbKvStore>> Open(const RocksDbKvStoreOptions& options);
  ~RocksDbKvStore() override;

  std::vector<std::string> ColumnFamilies() const override;
  absl::Status Read(absl::string_view cf, absl::string_view key,
                    absl::FunctionRef<absl::Status(absl::string_view)> fn) const override;
  absl::Status Put(absl::string_view cf, absl::string_view key, absl::string_view value,
                   Durability durability) override;
  absl::Status Write(const KvWriteBatch& batch, Durability durability) override;
  absl::Status Flush(absl::string_view cf) override;
  absl::Status SyncLog() override;
  int64_t log_syncs() const;  // WAL syncs SyncLog made so far (the rest were shared)
  double log_sync_seconds() const;  // time spent in them
  std::unique_ptr<KvIterator> NewIterator(absl::string_view cf) const override;

  const std::string& path() const;

 private:
  struct Impl;
  explicit RocksDbKvStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moec::storage

#endif  // MOEC_STORAGE_ROCKSDB_KV_STORE_H_
