// KvStore: the one durable key-value interface of moec (column families, atomic batches,
// ordered iteration). Implementations: RocksDbKvStore (the real one) and InMemoryKvStore
// (tests of the layers above). Both pass tests/.../kv_store_parity_test.cc.
#ifndef MOEC_STORAGE_KV_STORE_H_
#define MOEC_STORAGE_KV_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moec::storage {

// How durable a write is when Write/Put returns.
enum class Durability {
  // Logged and fsynced: survives a crash of the process or the machine.
  kSync,
  // Logged, not fsynced: survives a crash of the process; a machine crash may lose the latest
  // such writes, but never one without those before it (a later kSync write or SyncLog syncs
  // them too).
  kBuffered,
  // Not logged: visible to readers at once, durable only after Flush(cf) returns. Meant for bulk
  // data (factor chunks) whose commit point is a later kSync write; a crash before Flush loses
  // the write entirely (never partially).
  kDeferred,
};

// An ordered list of mutations applied atomically by KvStore::Write.
class KvWriteBatch {
 public:
  enum class OpKind { kPut, kDelete, kDeleteRange };
  struct Op {
    OpKind kind;
    std::string cf;
    std::string key;    // begin key for kDeleteRange
    std::string value;  // end key (exclusive) for kDeleteRange
  };

  void Put(absl::string_view cf, absl::string_view key, absl::string_view value);
  void Delete(absl::string_view cf, absl::string_view key);
  // Deletes every key k with begin <= k < end.
  void DeleteRange(absl::string_view cf, absl::string_view begin, absl::string_view end);
  // Appends the operations of `other`.
  void Append(const KvWriteBatch& other);

  const std::vector<Op>& ops() const { return ops_; }
  bool empty() const { return ops_.empty(); }
  // Approximate bytes held (keys + values).
  size_t ByteSize() const { return bytes_; }

 private:
  std::vector<Op> ops_;
  size_t bytes_ = 0;
};

// Ordered iteration over one column family, from a consistent snapshot taken at creation.
// Used from one thread only. Must not outlive its store.
class KvIterator {
 public:
  virtual ~KvIterator() = default;
  // Positions at the first key >= target.
  virtual void Seek(absl::string_view target) = 0;
  virtual bool Valid() const = 0;
  virtual void Next() = 0;
  // REQUIRES: Valid(). Views valid until the next Seek/Next.
  virtual absl::string_view key() const = 0;
  virtual absl::string_view value() const = 0;
  // Non-OK if iteration stopped because of an error (e.g. DataLoss).
  virtual absl::Status status() const = 0;
};

// Thread-safe. Column families are fixed when the store is opened.
// Possible errors of every method: InvalidArgument for an unknown column family; DataLoss for
// corrupt storage; ResourceExhausted when the disk is full; Internal for other I/O failures.
class KvStore {
 public:
  virtual ~KvStore() = default;

  virtual std::vector<std::string> ColumnFamilies() const = 0;

  // Returns a copy of the value of `key` (through Read). Errors: NotFound.
  absl::StatusOr<std::string> Get(absl::string_view cf, absl::string_view key) const;

  // Calls `fn` with a view of the value of `key`, valid only during the call (no copy where the
  // backend can avoid it). Returns fn's status. Errors: NotFound.
  virtual absl::Status Read(absl::string_view cf, absl::string_view key,
                            absl::FunctionRef<absl::Status(absl::string_view)> fn) const = 0;

  // Writes one value (no batch copy; for large values).
  virtual absl::Status Put(absl::string_view cf, absl::string_view key, absl::string_view value,
                           Durability durability = Durability::kSync) = 0;

  // Applies every operation of `batch` atomically: after a crash either all or none are seen.
  virtual absl::Status Write(const KvWriteBatch& batch,
                             Durability durability = Durability::kSync) = 0;

  // Makes every kDeferred write to `cf` made before the call durable.
  virtual absl::Status Flush(absl::string_view cf) = 0;

  // Makes every logged write (kSync, kBuffered) that returned before the call durable, as if it
  // had been written kSync. Concurrent callers share syncs (group commit, storage/group_sync.h):
  // commit kBuffered under a lock, release it, then SyncLog — instead of syncing under the lock.
  virtual absl::Status SyncLog() = 0;

  virtual std::unique_ptr<KvIterator> NewIterator(absl::string_view cf) const = 0;
};

// Visits every (key, value) of `cf` whose key starts with `prefix`, in key order, until `fn`
// returns false. Returns the iterator's status.
absl::Status ScanPrefix(const KvStore& store, absl::string_view cf, absl::string_view prefix,
                        absl::FunctionRef<bool(absl::string_view, absl::string_view)> fn);

// The smallest key greater than every key that starts with `prefix` ("" when there is none).
std::string PrefixSuccessor(absl::string_view prefix);

}  // namespace moec::storage

#endif  // MOEC_STORAGE_KV_STORE_H_
