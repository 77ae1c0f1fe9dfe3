#include "storage/rocksdb_kv_store.h"

#include <algorithm>
#include <filesystem>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/perf_level.h"
#include "rocksdb/table.h"
#include "rocksdb/utilities/options_util.h"
#include "storage/group_sync.h"

namespace moec::storage {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(context, ": ", s.ToString());
  switch (s.code()) {
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(msg);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(msg);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(msg);
    case rocksdb::Status::kNotSupported:
      return absl::UnimplementedError(msg);
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
      return absl::UnavailableError(msg);
    case rocksdb::Status::kTimedOut:
      return absl::DeadlineExceededError(msg);
    case rocksdb::Status::kAborted:
      return absl::AbortedError(msg);
    case rocksdb::Status::kIOError:
      if (s.subcode() == rocksdb::Status::kNoSpace) return absl::ResourceExhaustedError(msg);
      if (s.subcode() == rocksdb::Status::kPathNotFound) return absl::NotFoundError(msg);
      if (absl::StrContains(s.ToString(), "lock")) return absl::FailedPreconditionError(msg);
      return absl::InternalError(msg);
    default:
      return absl::InternalError(msg);
  }
}

rocksdb::WriteOptions ToWriteOptions(Durability d) {
  rocksdb::WriteOptions wo;
  wo.sync = d == Durability::kSync;
  wo.disableWAL = d == Durability::kDeferred;
  return wo;
}

// RocksDB counts every key comparison and memtable step in thread-local perf counters unless
// the calling thread turns them off (its default level is kEnableCount); nothing here reads
// them. Off, a coordinator commit's memtable inserts cost less (no thread-local lookup per
// comparison). Called at the top of every operation: a thread-local flag, set once per thread.
void NoPerfCounters() {
  thread_local bool off = false;
  if (!off) {
    rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable);
    off = true;
  }
}

rocksdb::Slice ToSlice(absl::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
absl::string_view ToView(const rocksdb::Slice& s) { return absl::string_view(s.data(), s.size()); }

class RocksIterator : public KvIterator {
 public:
  RocksIterator(std::unique_ptr<rocksdb::Iterator> it, absl::Status status)
      : it_(std::move(it)), status_(std::move(status)) {}
  void Seek(absl::string_view target) override {
    if (it_) it_->Seek(ToSlice(target));
  }
  bool Valid() const override { return it_ && it_->Valid(); }
  void Next() override { it_->Next(); }
  absl::string_view key() const override { return ToView(it_->key()); }
  absl::string_view value() const override { return ToView(it_->value()); }
  absl::Status status() const override {
    if (!status_.ok() || !it_) return status_;
    return FromRocks(it_->status(), "iterator");
  }

 private:
  std::unique_ptr<rocksdb::Iterator> it_;
  absl::Status status_;
};

rocksdb::DBOptions DbOptions(const RocksDbKvStoreOptions& options) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = options.background_jobs;
  db_options.bytes_per_sync = 8 << 20;
  db_options.paranoid_checks = true;
  db_options.max_total_wal_size = 256 << 20;
  // Large values are read with one pread each; random-access advice would turn off kernel
  // readahead and split a cold 4 MiB read into page-sized I/Os (measured 3x slower).
  db_options.advise_random_on_open = false;
  return db_options;
}

// Options of the column families of small values.
rocksdb::ColumnFamilyOptions SmallValueOptions(const RocksDbKvStoreOptions& options) {
  rocksdb::ColumnFamilyOptions small;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  // Point lookups of absent keys are common (the coordinator asks whether each task that becomes
  // ready was done before): Bloom filters answer most of them without searching the memtable's
  // skip list or a table's index.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  small.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Small memtables: every insert searches the memtable's skip list, whose comparisons (each
  // through RocksDB's thread-local perf counters) grow with its size: a commit of 6 puts took
  // ~25 us with 8 MiB memtables and ~50 us with RocksDB's default 64 MiB once they had filled
  // (a standalone RocksDB loop on this VM).
  small.write_buffer_size = 8 << 20;
  small.memtable_prefix_bloom_size_ratio = 0.02;
  small.memtable_whole_key_filtering = true;
  return small;
}

// Options of the column families of large values (BlobDB), on top of the small ones.
rocksdb::ColumnFamilyOptions LargeValueOptions(const rocksdb::ColumnFamilyOptions& small,
                                               const RocksDbKvStoreOptions& options) {
  rocksdb::ColumnFamilyOptions large = small;
  large.enable_blob_files = true;
  large.min_blob_size = options.min_blob_bytes;
  large.blob_file_size = 256 << 20;
  large.blob_compression_type = rocksdb::kNoCompression;  // tensors barely compress
  large.enable_blob_garbage_collection = true;
  // Many moderate memtables instead of a few large ones: a task's bulk writes fill them while
  // the flush thread drains them, and the write slowdown (at max - 1 unflushed memtables) is only
  // reached when the disk truly lags.
  large.write_buffer_size = options.large_value_write_buffer_bytes;
  large.max_write_buffer_number = 8;
  return large;
}

// The default column family, then the configured ones (the default one may be configured too).
std::vector<rocksdb::ColumnFamilyDescriptor> Descriptors(
    const RocksDbKvStoreOptions& options, const rocksdb::ColumnFamilyOptions& small,
    const rocksdb::ColumnFamilyOptions& large) {
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, small);
  for (const auto& spec : options.column_families) {
    if (spec.name == rocksdb::kDefaultColumnFamilyName) {
      descriptors[0].options = spec.large_values ? large : small;
      continue;
    }
    descriptors.emplace_back(spec.name, spec.large_values ? large : small);
  }
  return descriptors;
}

// FailedPrecondition when an existing database at `path` has a column family not in descriptors.
absl::Status CheckKnownColumnFamilies(
    const rocksdb::DBOptions& db_options, const std::string& path,
    const std::vector<rocksdb::ColumnFamilyDescriptor>& descriptors) {
  std::vector<std::string> existing;
  if (rocksdb::DB::ListColumnFamilies(db_options, path, &existing).ok()) {
    for (const auto& name : existing) {
      bool known = std::any_of(descriptors.begin(), descriptors.end(),
                               [&](const auto& d) { return d.name == name; });
      if (!known) {
        return absl::FailedPreconditionError(absl::StrCat(
            "database ", path, " has column family '", name, "' that moec does not know"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RocksDbKvStoreOptions::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("RocksDbKvStoreOptions.path is empty");
  if (column_families.empty()) {
    return absl::InvalidArgumentError("RocksDbKvStoreOptions.column_families is empty");
  }
  for (size_t i = 0; i < column_families.size(); ++i) {
    if (column_families[i].name.empty()) {
      return absl::InvalidArgumentError("empty column family name");
    }
    for (size_t j = 0; j < i; ++j) {
      if (column_families[j].name == column_families[i].name) {
        return absl::InvalidArgumentError(
            absl::StrCat("duplicate column family '", column_families[i].name, "'"));
      }
    }
  }
  if (large_value_write_buffer_bytes < (1u << 20)) {
    return absl::InvalidArgumentError("large_value_write_buffer_bytes must be >= 1 MiB");
  }
  if (background_jobs < 1) return absl::InvalidArgumentError("background_jobs must be >= 1");
  return absl::OkStatus();
}

struct RocksDbKvStore::Impl {
  std::string path;
  std::unique_ptr<rocksdb::DB> db;  // destroyed after handles are released (see destructor)
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  absl::flat_hash_map<std::string, rocksdb::ColumnFamilyHandle*> by_name;
  std::vector<std::string> exposed;
  // Families whose values carry their own checksums (FactorStore chunks have CRC32C): their
  // reads skip RocksDB's second, software-computed, checksum pass over every value.
  absl::flat_hash_map<std::string, bool> large_values;
  std::unique_ptr<GroupSync> group_sync;  // SyncLog's group commit over the WAL

  absl::StatusOr<rocksdb::ColumnFamilyHandle*> Handle(absl::string_view cf) const {
    if (std::find(exposed.begin(), exposed.end(), cf) == exposed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown column family '", cf, "' in ", path));
    }
    return by_name.find(cf)->second;
  }
};

RocksDbKvStore::RocksDbKvStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RocksDbKvStore::~RocksDbKvStore() {
  if (impl_->db) {
    for (auto* h : impl_->handles) impl_->db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    impl_->db->Close().PermitUncheckedError();  // a failed close loses nothing synced
  }
}

const std::string& RocksDbKvStore::path() const { return impl_->path; }

absl::StatusOr<std::unique_ptr<RocksDbKvStore>> RocksDbKvStore::Open(
    const RocksDbKvStoreOptions& options) {
  MOEC_RETURN_IF_ERROR(options.Validate());
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("create directory ", options.path, ": ", ec.message()));
  }

  const rocksdb::DBOptions db_options = DbOptions(options);
  const rocksdb::ColumnFamilyOptions small = SmallValueOptions(options);
  const rocksdb::ColumnFamilyOptions large = LargeValueOptions(small, options);
  const std::vector<rocksdb::ColumnFamilyDescriptor> descriptors =
      Descriptors(options, small, large);
  MOEC_RETURN_IF_ERROR(CheckKnownColumnFamilies(db_options, options.path, descriptors));

  auto impl = std::make_unique<Impl>();
  impl->path = options.path;
  rocksdb::DB* raw = nullptr;
  MOEC_RETURN_IF_ERROR(FromRocks(
      rocksdb::DB::Open(db_options, options.path, descriptors, &impl->handles, &raw),
      absl::StrCat("open ", options.path)));
  impl->db.reset(raw);
  impl->group_sync = std::make_unique<GroupSync>(
      [raw] { return static_cast<uint64_t>(raw->GetLatestSequenceNumber()); },
      [raw, path = impl->path] { return FromRocks(raw->SyncWAL(), absl::StrCat("sync the log of ", path)); });
  for (size_t i = 0; i < descriptors.size(); ++i) {
    impl->by_name[descriptors[i].name] = impl->handles[i];
  }
  for (const auto& spec : options.column_families) {
    impl->exposed.push_back(spec.name);
    impl->large_values[spec.name] = spec.large_values;
  }
  return std::unique_ptr<RocksDbKvStore>(new RocksDbKvStore(std::move(impl)));
}

std::vector<std::string> RocksDbKvStore::ColumnFamilies() const { return impl_->exposed; }

absl::Status RocksDbKvStore::Read(absl::string_view cf, absl::string_view key,
                                  absl::FunctionRef<absl::Status(absl::string_view)> fn) const {
  NoPerfCounters();
  MOEC_ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * h, impl_->Handle(cf));
  rocksdb::PinnableSlice value;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = !impl_->large_values.find(cf)->second;
  rocksdb::Status s = impl_->db->Get(ro, h, ToSlice(key), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("key '", key, "' not in column family '", cf, "'"));
  }
  MOEC_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("get ", cf, "/", key)));
  return fn(ToView(value));
}

absl::Status RocksDbKvStore::Put(absl::string_view cf, absl::string_view key,
                                 absl::string_view value, Durability durability) {
  NoPerfCounters();
  MOEC_ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * h, impl_->Handle(cf));
  rocksdb::WriteOptions wo = ToWriteOptions(durability);
  return FromRocks(impl_->db->Put(wo, h, ToSlice(key), ToSlice(value)),
                   absl::StrCat("put ", cf, "/", key));
}

namespace {

// Whether ops[i] is a Put that a later Put of the same key in the batch overwrites (in a batch
// of Puts only): it need not be written. A coordinator
// commit puts the job record and a newly ready task twice (as the completion left it, then as
// the lease granted with it left it); each skipped Put is one memtable insert fewer.
bool OverwrittenLater(const std::vector<KvWriteBatch::Op>& ops, size_t i) {
  if (ops[i].kind != KvWriteBatch::OpKind::kPut) return false;
  for (size_t j = i + 1; j < ops.size(); ++j) {
    if (ops[j].key == ops[i].key && ops[j].cf == ops[i].cf) return true;
  }
  return false;
}

}  // namespace

absl::Status RocksDbKvStore::Write(const KvWriteBatch& batch, Durability durability) {
  NoPerfCounters();
  rocksdb::WriteBatch wb;
  const std::vector<KvWriteBatch::Op>& ops = batch.ops();
  // Only small batches of Puts alone are searched for overwrites (the search is quadratic).
  const bool search =
      ops.size() <= 64 && std::all_of(ops.begin(), ops.end(), [](const KvWriteBatch::Op& op) {
        return op.kind == KvWriteBatch::OpKind::kPut;
      });
  for (size_t i = 0; i < ops.size(); ++i) {
    if (search && OverwrittenLater(ops, i)) continue;
    const KvWriteBatch::Op& op = ops[i];
    MOEC_ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * h, impl_->Handle(op.cf));
    rocksdb::Status s;
    switch (op.kind) {
      case KvWriteBatch::OpKind::kPut:
        s = wb.Put(h, ToSlice(op.key), ToSlice(op.value));
        break;
      case KvWriteBatch::OpKind::kDelete:
        s = wb.Delete(h, ToSlice(op.key));
        break;
      case KvWriteBatch::OpKind::kDeleteRange:
        if (op.key < op.value) s = wb.DeleteRange(h, ToSlice(op.key), ToSlice(op.value));
        break;
    }
    MOEC_RETURN_IF_ERROR(FromRocks(s, "build write batch"));
  }
  rocksdb::Status s = impl_->db->Write(ToWriteOptions(durability), &wb);
  if (s.ok()) return absl::OkStatus();
  return FromRocks(s, absl::StrCat("write batch to ", impl_->path));
}

absl::Status RocksDbKvStore::SyncLog() { return impl_->group_sync->Sync(); }

int64_t RocksDbKvStore::log_syncs() const { return impl_->group_sync->syncs(); }

double RocksDbKvStore::log_sync_seconds() const {
  return absl::ToDoubleSeconds(impl_->group_sync->sync_time());
}

absl::Status RocksDbKvStore::Flush(absl::string_view cf) {
  MOEC_ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * h, impl_->Handle(cf));
  rocksdb::FlushOptions fo;
  fo.wait = true;
  fo.allow_write_stall = true;
  return FromRocks(impl_->db->Flush(fo, h), absl::StrCat("flush ", cf));
}

std::unique_ptr<KvIterator> RocksDbKvStore::NewIterator(absl::string_view cf) const {
  NoPerfCounters();
  absl::StatusOr<rocksdb::ColumnFamilyHandle*> h = impl_->Handle(cf);
  if (!h.ok()) return std::make_unique<RocksIterator>(nullptr, h.status());
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  return std::make_unique<RocksIterator>(
      std::unique_ptr<rocksdb::Iterator>(impl_->db->NewIterator(ro, *h)), absl::OkStatus());
}

}  // namespace moec::storage
