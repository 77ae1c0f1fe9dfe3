#include "storage/factor_store.h"

#include <algorithm>

#include <cstring>
#include <atomic>
#include <optional>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/crc32c.h"
#include "common/status_macros.h"
#include "common/status_payloads.h"

namespace moec::storage {
namespace {

// Prefix of all chunk keys of one generation of `key`.
std::string GenerationPrefix(absl::string_view key, uint64_t generation) {
  return absl::StrCat(FactorChunkPrefix(key), absl::StrFormat("%016x", generation));
}

// Adds to `batch` the deletion of every chunk of `key` except those of `keep_generation`.
void DeleteOtherGenerations(absl::string_view cf, absl::string_view key, uint64_t keep_generation,
                            KvWriteBatch* batch) {
  std::string all = FactorChunkPrefix(key);
  std::string keep = GenerationPrefix(key, keep_generation);
  batch->DeleteRange(cf, all, keep);
  batch->DeleteRange(cf, PrefixSuccessor(keep), PrefixSuccessor(all));
}

}  // namespace

absl::Status FactorStoreOptions::Validate() const {
  if (column_family.empty()) return absl::InvalidArgumentError("FactorStoreOptions.column_family is empty");
  if (read_threads < 1 || read_threads > 64) {
    return absl::InvalidArgumentError("FactorStoreOptions.read_threads must be 1..64");
  }
  if (chunk_bytes == 0 || chunk_bytes > kMaxFactorChunkBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("FactorStoreOptions.chunk_bytes must be 1..", kMaxFactorChunkBytes));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// FactorTransaction

FactorTransaction::~FactorTransaction() {
  if (!committed_) {
    // Best effort: whatever is left is found by CollectGarbage at the next Open.
    KvWriteBatch batch;
    const std::string& cf = store_->options_.column_family;
    auto drop = [&](const std::string& key, uint64_t gen) {
      std::string p = GenerationPrefix(key, gen);
      batch.DeleteRange(cf, p, PrefixSuccessor(p));
    };
    for (const auto& [key, info] : staged_) drop(key, info.generation);
    if (streaming_) drop(key_, info_.generation);
    if (!batch.empty()) store_->kv_->Write(batch, Durability::kDeferred).IgnoreError();
  }
  absl::MutexLock lock(&store_->mu_);
  --store_->open_transactions_;
}

absl::Status FactorTransaction::Begin(absl::string_view key, DType dtype,
                                      absl::Span<const int64_t> shape) {
  if (committed_) return absl::FailedPreconditionError("transaction already committed");
  if (streaming_) {
    return absl::FailedPreconditionError(
        absl::StrCat("factor '", key, "' begun while '", key_, "' is unfinished"));
  }
  MOEC_RETURN_IF_ERROR(ValidateFactorKey(key));
  if (shape.size() > kMaxFactorRank) {
    return absl::InvalidArgumentError(absl::StrCat("factor '", key, "': rank over ", kMaxFactorRank));
  }
  for (const auto& [k, info] : staged_) {
    if (k == key) {
      return absl::InvalidArgumentError(absl::StrCat("factor '", key, "' staged twice"));
    }
  }
  absl::StatusOr<uint64_t> bytes = TensorByteSize(dtype, shape);
  if (!bytes.ok()) return Annotate(bytes.status(), absl::StrCat("factor '", key, "'"));
  if (*bytes > kMaxFactorBytes) {
    return absl::InvalidArgumentError(absl::StrCat("factor '", key, "' is over 1 TiB"));
  }
  streaming_ = true;
  key_ = std::string(key);
  info_ = FactorInfo();
  info_.dtype = dtype;
  info_.shape.assign(shape.begin(), shape.end());
  info_.byte_size = *bytes;
  info_.chunk_size = store_->options_.chunk_bytes;
  absl::BitGen gen;
  info_.generation = absl::Uniform<uint64_t>(gen);
  received_ = 0;
  running_crc_ = 0;
  pending_.clear();
  return absl::OkStatus();
}

absl::Status FactorTransaction::WriteChunk(absl::string_view bytes) {
  uint32_t index = static_cast<uint32_t>(info_.chunk_crc32c.size());
  const uint32_t crc = crc32c::Value(bytes);
  info_.chunk_crc32c.push_back(crc);
  running_crc_ = crc32c::Combine(running_crc_, crc, bytes.size());
  return store_->kv_->Put(store_->options_.column_family,
                          FactorChunkKey(key_, info_.generation, index), bytes,
                          Durability::kDeferred);
}

absl::Status FactorTransaction::Append(absl::string_view bytes) {
  if (!streaming_) return absl::FailedPreconditionError("Append without Begin");
  if (bytes.size() > info_.byte_size - received_) {
    return absl::InvalidArgumentError(absl::StrCat("factor '", key_, "' has ", info_.byte_size,
                                                   " bytes; append of ", bytes.size(), " at ",
                                                   received_, " runs past it"));
  }
  received_ += bytes.size();
  const uint64_t chunk = info_.chunk_size;
  while (!bytes.empty()) {
    if (pending_.empty() && bytes.size() >= chunk) {
      MOEC_RETURN_IF_ERROR(WriteChunk(bytes.substr(0, chunk)));
      bytes.remove_prefix(chunk);
      continue;
    }
    size_t take = std::min<uint64_t>(chunk - pending_.size(), bytes.size());
    pending_.append(bytes.data(), take);
    bytes.remove_prefix(take);
    if (pending_.size() == chunk) {
      MOEC_RETURN_IF_ERROR(WriteChunk(pending_));
      pending_.clear();
    }
  }
  return absl::OkStatus();
}

absl::Status FactorTransaction::End() {
  if (!streaming_) return absl::FailedPreconditionError("End without Begin");
  if (received_ != info_.byte_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "factor '", key_, "' ended after ", received_, " of ", info_.byte_size, " bytes"));
  }
  if (!pending_.empty()) {
    MOEC_RETURN_IF_ERROR(WriteChunk(pending_));
    pending_.clear();
    pending_.shrink_to_fit();
  }
  info_.crc32c = running_crc_;
  staged_.emplace_back(std::move(key_), std::move(info_));
  streaming_ = false;
  return absl::OkStatus();
}

void FactorTransaction::AbortCurrent() {
  if (!streaming_) return;
  std::string p = GenerationPrefix(key_, info_.generation);
  KvWriteBatch batch;
  batch.DeleteRange(store_->options_.column_family, p, PrefixSuccessor(p));
  store_->kv_->Write(batch, Durability::kDeferred).IgnoreError();  // else collected at next Open
  streaming_ = false;
  pending_.clear();
}

absl::Status FactorTransaction::Put(absl::string_view key, DType dtype,
                                    absl::Span<const int64_t> shape, absl::string_view data) {
  MOEC_RETURN_IF_ERROR(Begin(key, dtype, shape));
  if (data.size() != info_.byte_size) {
    streaming_ = false;
    return absl::InvalidArgumentError(absl::StrCat("factor '", key, "': shape and dtype give ",
                                                   info_.byte_size, " bytes, data has ",
                                                   data.size()));
  }
  MOEC_RETURN_IF_ERROR(Append(data));
  return End();
}

absl::Status FactorTransaction::PutHeld(absl::string_view key, DType dtype,
                                        absl::Span<const int64_t> shape, uint32_t crc32c,
                                        absl::Span<const std::string> holders) {
  if (holders.empty() || holders.size() > kMaxFactorHolders) {
    return absl::InvalidArgumentError(
        absl::StrCat("factor '", key, "': 1..", kMaxFactorHolders, " holders, got ", holders.size()));
  }
  for (const std::string& h : holders) {
    if (h.empty() || h.size() > kMaxHolderIdBytes) {
      return absl::InvalidArgumentError(absl::StrCat("factor '", key, "': bad holder id"));
    }
  }
  MOEC_RETURN_IF_ERROR(Begin(key, dtype, shape));
  streaming_ = false;
  info_.chunk_size = 0;
  info_.crc32c = crc32c;
  info_.holders.assign(holders.begin(), holders.end());
  staged_.emplace_back(std::move(key_), std::move(info_));
  return absl::OkStatus();
}

absl::Status FactorTransaction::Commit(Durability durability) {
  if (committed_) return absl::FailedPreconditionError("transaction committed twice");
  if (streaming_) {
    return absl::FailedPreconditionError(absl::StrCat("factor '", key_, "' is unfinished"));
  }
  const std::string& cf = store_->options_.column_family;
  absl::MutexLock commit_lock(&store_->commit_mu_);
  // Chunks first: they must be durable before any header points at them.
  if (!staged_.empty()) MOEC_RETURN_IF_ERROR(store_->kv_->Flush(cf));
  KvWriteBatch batch;
  for (const auto& [key, info] : staged_) {
    batch.Put(cf, FactorHeaderKey(key), EncodeFactorHeader(info));
    DeleteOtherGenerations(cf, key, info.generation, &batch);
  }
  batch.Append(extra_);
  if (!batch.empty()) MOEC_RETURN_IF_ERROR(store_->kv_->Write(batch, durability));
  committed_ = true;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// FactorStore

absl::StatusOr<std::unique_ptr<FactorStore>> FactorStore::Open(KvStore* kv,
                                                               const FactorStoreOptions& options) {
  MOEC_RETURN_IF_ERROR(options.Validate());
  auto cfs = kv->ColumnFamilies();
  if (std::find(cfs.begin(), cfs.end(), options.column_family) == cfs.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key-value store has no column family '", options.column_family, "'"));
  }
  auto store = std::unique_ptr<FactorStore>(new FactorStore(kv, options));
  MOEC_RETURN_IF_ERROR(store->CollectGarbage().status());
  return store;
}

std::unique_ptr<FactorTransaction> FactorStore::NewTransaction() {
  absl::MutexLock lock(&mu_);
  ++open_transactions_;
  return std::unique_ptr<FactorTransaction>(new FactorTransaction(this));
}

absl::StatusOr<FactorInfo> FactorStore::Stat(absl::string_view key) const {
  MOEC_RETURN_IF_ERROR(ValidateFactorKey(key));
  absl::StatusOr<std::string> raw = kv_->Get(options_.column_family, FactorHeaderKey(key));
  if (absl::IsNotFound(raw.status())) {
    return absl::NotFoundError(absl::StrCat("factor '", key, "' not found"));
  }
  MOEC_RETURN_IF_ERROR(raw.status());
  absl::StatusOr<FactorInfo> info = DecodeFactorHeader(*raw, key);
  if (absl::IsDataLoss(info.status())) return WithFactorKey(info.status(), key);
  return info;
}

absl::Status FactorStore::ReadChunk(absl::string_view key, const FactorInfo& info, size_t i,
                                    uint8_t* out, uint32_t* crc) const {
  const uint64_t expected = info.ChunkBytes(i);
  absl::Status s = kv_->Read(
      options_.column_family, FactorChunkKey(key, info.generation, static_cast<uint32_t>(i)),
      [&](absl::string_view v) -> absl::Status {
        if (v.size() != expected) {
          return absl::DataLossError(absl::StrCat("factor '", key, "' chunk ", i, " has ",
                                                  v.size(), " bytes, expected ", expected));
        }
        *crc = crc32c::Value(v);
        if (*crc != info.chunk_crc32c[i]) {
          return absl::DataLossError(
              absl::StrCat("factor '", key, "' chunk ", i, ": CRC32C mismatch"));
        }
        std::memcpy(out, v.data(), v.size());
        return absl::OkStatus();
      });
  if (absl::IsNotFound(s)) {
    s = absl::DataLossError(absl::StrCat("factor '", key, "' chunk ", i, " is missing"));
  }
  // The key travels with the error, for the coordinator's re-run of its producer.
  return absl::IsDataLoss(s) ? WithFactorKey(s, key) : s;
}

// The error of reading the bytes of a tensor this store only records.
static absl::Status HeldElsewhere(absl::string_view key, const FactorInfo& info) {
  return absl::FailedPreconditionError(absl::StrCat(
      "factor '", key, "' is held by the activation stores of ", absl::StrJoin(info.holders, ","),
      ", not here"));
}

absl::Status FactorStore::ReadChunks(absl::string_view key, const FactorInfo& info,
                                     uint8_t* out) const {
  if (info.held()) return HeldElsewhere(key, info);
  const size_t n = info.num_chunks();
  std::vector<uint32_t> crcs(n, 0);
  std::vector<absl::Status> errors(n);
  // Chunks are independent: readers take the next index until none is left, so the disk read
  // of one chunk overlaps the checksum and copy of another.
  std::atomic<size_t> next{0};
  auto reader = [&] {
    for (size_t i = next++; i < n; i = next++) {
      errors[i] = ReadChunk(key, info, i, out + i * info.chunk_size, &crcs[i]);
      if (!errors[i].ok()) next = n;  // stop early
    }
  };
  const size_t threads = std::min<size_t>(options_.read_threads, n);
  std::vector<std::thread> helpers;
  for (size_t t = 1; t < threads; ++t) helpers.emplace_back(reader);
  reader();
  for (auto& h : helpers) h.join();
  uint32_t crc = 0;
  for (size_t i = 0; i < n; ++i) {
    MOEC_RETURN_IF_ERROR(errors[i]);
    crc = crc32c::Combine(crc, crcs[i], info.ChunkBytes(i));
  }
  if (crc != info.crc32c) {
    return WithFactorKey(absl::DataLossError(absl::StrCat("factor '", key, "': CRC32C mismatch")),
                         key);
  }
  return absl::OkStatus();
}

absl::Status FactorStore::ReadChunkInto(absl::string_view key, const FactorInfo& info, size_t i,
                                        absl::Span<uint8_t> out) const {
  if (info.held()) return HeldElsewhere(key, info);
  if (i >= info.num_chunks() || out.size() != info.ChunkBytes(i)) {
    return absl::InvalidArgumentError(absl::StrCat("factor '", key, "': bad chunk ", i, " or buffer"));
  }
  uint32_t crc = 0;
  return ReadChunk(key, info, i, out.data(), &crc);
}

absl::Status FactorStore::ReadInto(absl::string_view key, absl::Span<uint8_t> out) const {
  MOEC_ASSIGN_OR_RETURN(FactorInfo info, Stat(key));
  if (out.size() != info.byte_size) {
    return absl::InvalidArgumentError(absl::StrCat("factor '", key, "' has ", info.byte_size,
                                                   " bytes, buffer has ", out.size()));
  }
  return ReadChunks(key, info, out.data());
}

absl::StatusOr<Factor> FactorStore::Get(absl::string_view key) const {
  Factor f;
  MOEC_ASSIGN_OR_RETURN(f.info, Stat(key));
  f.data.resize(f.info.byte_size);
  MOEC_RETURN_IF_ERROR(ReadChunks(key, f.info, reinterpret_cast<uint8_t*>(f.data.data())));
  return f;
}

absl::StatusOr<std::vector<std::string>> FactorStore::List(absl::string_view prefix) const {
  std::vector<std::string> keys;
  MOEC_RETURN_IF_ERROR(ScanPrefix(*kv_, options_.column_family,
                                  absl::StrCat(kFactorHeaderPrefix, prefix),
                                  [&](absl::string_view k, absl::string_view) {
                                    keys.emplace_back(k.substr(kFactorHeaderPrefix.size()));
                                    return true;
                                  }));
  return keys;
}

absl::Status FactorStore::Delete(absl::string_view key) {
  MOEC_RETURN_IF_ERROR(ValidateFactorKey(key));
  absl::MutexLock commit_lock(&commit_mu_);
  KvWriteBatch batch;
  batch.Delete(options_.column_family, FactorHeaderKey(key));
  std::string p = FactorChunkPrefix(key);
  batch.DeleteRange(options_.column_family, p, PrefixSuccessor(p));
  return kv_->Write(batch, Durability::kSync);
}

absl::StatusOr<uint64_t> FactorStore::CollectGarbage() {
  {
    absl::MutexLock lock(&mu_);
    if (open_transactions_ > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("garbage collection with ", open_transactions_, " open transactions"));
    }
  }
  absl::MutexLock commit_lock(&commit_mu_);
  const std::string& cf = options_.column_family;
  KvWriteBatch batch;
  uint64_t orphans = 0;
  // Chunks come grouped by factor key; its header is read once per group.
  bool have_key = false;
  std::string key;
  bool keep_all = false;                    // header unreadable: judge nothing, delete nothing
  std::optional<uint64_t> live_generation;  // nullopt when the key has no header
  MOEC_RETURN_IF_ERROR(ScanPrefix(*kv_, cf, kFactorChunkPrefix,
                                  [&](absl::string_view ck, absl::string_view) {
    absl::StatusOr<std::pair<std::string, uint64_t>> parsed = ParseFactorChunkKey(ck);
    if (!parsed.ok()) {
      batch.Delete(cf, ck);  // no header can reference a malformed chunk key
      ++orphans;
      return true;
    }
    if (!have_key || parsed->first != key) {
      have_key = true;
      key = parsed->first;
      absl::StatusOr<FactorInfo> info = Stat(key);
      keep_all = !info.ok() && !absl::IsNotFound(info.status());
      live_generation = info.ok() ? std::optional<uint64_t>(info->generation) : std::nullopt;
    }
    if (!keep_all && live_generation != parsed->second) {
      batch.Delete(cf, ck);
      ++orphans;
    }
    return true;
  }));
  if (!batch.empty()) MOEC_RETURN_IF_ERROR(kv_->Write(batch, Durability::kSync));
  return orphans;
}

}  // namespace moec::storage
