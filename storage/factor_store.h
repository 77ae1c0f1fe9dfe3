// FactorStore: typed tensors (dtype, shape, CRC32C) over a KvStore column family. Every
// intermediate result of a job (statistics, Hessian summaries, quantized weights, activation
// chains) lives here. Layout and guarantees: docs/formats/factor_store.md.
//
// A tensor is split into chunks of at most `chunk_bytes` (16 MiB) written as they come (not yet
// durable, not yet visible); a transaction's Commit makes its chunks durable and then writes all
// its headers, plus any extra key-value writes, in one synced batch. So either all outputs of a
// task are visible after a crash or none are, and a half-written tensor is never seen.
#ifndef MOEC_STORAGE_FACTOR_STORE_H_
#define MOEC_STORAGE_FACTOR_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "storage/factor_record.h"
#include "storage/kv_store.h"

namespace moec::storage {

struct FactorStoreOptions {
  // Column family holding headers and chunks; it should be a large-value family (BlobDB).
  std::string column_family = "factors";
  // Bytes per chunk value; larger tensors are split. 16 MiB rather than the 64 MiB cap of the
  // design: buffers of this size are recycled by malloc (TuneMallocForLargeBuffers) while 64 MiB
  // ones are fresh mmaps on every read (measured in docs/benchmarks.md). At most 1 GiB.
  uint64_t chunk_bytes = 16ull << 20;
  // Threads reading the chunks of one tensor in parallel (the caller's thread included).
  int read_threads = 2;
  absl::Status Validate() const;
};

// A tensor read back from the store.
struct Factor {
  FactorInfo info;
  std::string data;  // info.byte_size bytes, little-endian, row-major
};

class FactorStore;

// The outputs of one task, committed together. Used from one thread only. Destroying an
// uncommitted transaction discards its chunks.
class FactorTransaction {
 public:
  ~FactorTransaction();
  FactorTransaction(const FactorTransaction&) = delete;
  FactorTransaction& operator=(const FactorTransaction&) = delete;

  // Stages tensor `key` with bytes `data`. Errors: InvalidArgument for a bad key, a shape/dtype
  // whose size differs from data.size(), or a key already staged in this transaction.
  absl::Status Put(absl::string_view key, DType dtype, absl::Span<const int64_t> shape,
                   absl::string_view data);

  // Streaming form of Put: Begin, then Append the bytes in order (any sizes), then End.
  absl::Status Begin(absl::string_view key, DType dtype, absl::Span<const int64_t> shape);
  absl::Status Append(absl::string_view bytes);
  absl::Status End();
  // Stages the header of a tensor held elsewhere: the bytes (`byte_size` of dtype and shape,
  // CRC32C `crc32c`) are in the activation stores of `holders` (store ids, 1..16), and this
  // store keeps only the header. Errors: as Put, and InvalidArgument for bad holders.
  absl::Status PutHeld(absl::string_view key, DType dtype, absl::Span<const int64_t> shape,
                       uint32_t crc32c, absl::Span<const std::string> holders);
  // Abandons the tensor being streamed (its chunks are discarded); no-op when none is.
  void AbortCurrent();

  // Key-value writes committed atomically with the tensors (e.g. a task's state, an event).
  KvWriteBatch& extra_writes() { return extra_; }

  // Makes every staged tensor and extra write visible and durable, atomically. With
  // kBuffered, the commit record is logged but not synced: durable after the next
  // KvStore::SyncLog (the tensors' chunks are flushed either way).
  // Errors: FailedPrecondition if a streamed tensor is unfinished or Commit ran before; errors
  // of the KvStore.
  absl::Status Commit(Durability durability = Durability::kSync);

 private:
  friend class FactorStore;
  explicit FactorTransaction(FactorStore* store) : store_(store) {}
  absl::Status WriteChunk(absl::string_view bytes);
  absl::Status FlushPending(bool final);

  FactorStore* const store_;  // Not owned; outlives the transaction.
  std::vector<std::pair<std::string, FactorInfo>> staged_;
  KvWriteBatch extra_;
  bool committed_ = false;
  // The tensor being streamed.
  bool streaming_ = false;
  std::string key_;
  FactorInfo info_;
  uint64_t received_ = 0;
  uint32_t running_crc_ = 0;  // of the bytes in written chunks, combined chunk by chunk
  std::string pending_;  // bytes not yet forming a full chunk
};

// Thread-safe. The KvStore must outlive the FactorStore.
class FactorStore {
 public:
  // Errors: InvalidArgument for bad options or a column family the store lacks.
  static absl::StatusOr<std::unique_ptr<FactorStore>> Open(KvStore* kv,
                                                           const FactorStoreOptions& options = {});

  std::unique_ptr<FactorTransaction> NewTransaction();

  // Returns the header of `key`. Errors: NotFound; DataLoss for a corrupt header.
  absl::StatusOr<FactorInfo> Stat(absl::string_view key) const;
  // Reads a whole tensor, verifying every chunk's and the tensor's CRC32C.
  // Errors: NotFound; DataLoss naming the key (and chunk) on any mismatch or missing chunk;
  // FailedPrecondition for a tensor held elsewhere (FactorInfo::held; so for ReadInto and
  // ReadChunkInto too).
  absl::StatusOr<Factor> Get(absl::string_view key) const;
  // As Get, into caller memory of exactly info.byte_size bytes (no extra copy of the tensor).
  absl::Status ReadInto(absl::string_view key, absl::Span<uint8_t> out) const;
  // Reads chunk `i` of a tensor whose header is `info` into `out` (info.ChunkBytes(i) bytes),
  // checking its CRC32C: for streaming a tensor out chunk by chunk.
  // Errors: InvalidArgument for a bad index or buffer size; DataLoss as for Get.
  absl::Status ReadChunkInto(absl::string_view key, const FactorInfo& info, size_t i,
                             absl::Span<uint8_t> out) const;
  // Keys of committed tensors that start with `prefix`, sorted.
  absl::StatusOr<std::vector<std::string>> List(absl::string_view prefix) const;
  // Deletes a tensor (header and chunks) durably. Deleting a missing key is OK.
  absl::Status Delete(absl::string_view key);
  // Deletes chunks that no committed header references (left by crashes or aborted
  // transactions) and returns how many. Runs at Open. Errors: FailedPrecondition while a
  // transaction is open.
  absl::StatusOr<uint64_t> CollectGarbage();

  const FactorStoreOptions& options() const { return options_; }
  KvStore* kv() const { return kv_; }

 private:
  friend class FactorTransaction;
  FactorStore(KvStore* kv, FactorStoreOptions options) : kv_(kv), options_(std::move(options)) {}
  absl::Status ReadChunks(absl::string_view key, const FactorInfo& info, uint8_t* out) const;
  absl::Status ReadChunk(absl::string_view key, const FactorInfo& info, size_t i, uint8_t* out,
                         uint32_t* crc) const;

  KvStore* const kv_;  // Not owned.
  const FactorStoreOptions options_;
  absl::Mutex mu_;
  int open_transactions_ ABSL_GUARDED_BY(mu_) = 0;
  // Serializes commits so that replacing a key's generation cannot interleave.
  absl::Mutex commit_mu_ ABSL_ACQUIRED_AFTER(mu_);
};

}  // namespace moec::storage

#endif  // MOEC_STORAGE_FACTOR_STORE_H_
