// Factories for running one test suite against every KvStore backend (parity suites).
#ifndef MOEC_STORAGE_KV_STORE_TEST_UTIL_H_
#define MOEC_STORAGE_KV_STORE_TEST_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "storage/rocksdb_kv_store.h"
#include "tests/testing/temp_dir.h"

namespace moec::storage::testing {

enum class Backend { kInMemory, kRocksDb };

inline std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kInMemory ? "InMemory" : "RocksDb";
}

// Owns a store of the given backend with column families "meta" (small values) and "factors"
// (large values), plus the temp directory a RocksDB store lives in.
class StoreHolder {
 public:
  explicit StoreHolder(Backend backend) : backend_(backend) { Reopen(); }
  KvStore* store() { return store_.get(); }
  Backend backend() const { return backend_; }
  const std::string& dir() const { return dir_.path(); }
  // Closes and reopens (RocksDB keeps its data; in-memory starts empty).
  void Reopen() {
    store_.reset();
    if (backend_ == Backend::kInMemory) {
      store_ = std::make_unique<InMemoryKvStore>(std::vector<std::string>{"meta", "factors"});
      return;
    }
    auto s = RocksDbKvStore::Open(Options(dir_.path()));
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  static RocksDbKvStoreOptions Options(const std::string& path) {
    RocksDbKvStoreOptions o;
    o.path = path + "/db";
    o.column_families = {{"meta", false}, {"factors", true}};
    o.large_value_write_buffer_bytes = 8 << 20;
    return o;
  }

 private:
  Backend backend_;
  ::moec::testing::TempDir dir_;
  std::unique_ptr<KvStore> store_;
};

}  // namespace moec::storage::testing

#endif  // MOEC_STORAGE_KV_STORE_TEST_UTIL_H_
