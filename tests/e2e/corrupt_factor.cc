// Test tool for e2e.cluster: corrupts a factor record of a stopped coordinator's RocksDB, as a bad
// disk would — one byte of the first chunk of the first factor whose key ends with SUFFIX is
// flipped (the chunk's CRC32C no longer matches; RocksDB itself sees a valid value).
//   corrupt_factor DATA_DIR/db SUFFIX     prints the corrupted factor's key
#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "coordinator/job_store.h"
#include "storage/factor_record.h"
#include "storage/rocksdb_kv_store.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: corrupt_factor DB_DIR KEY_SUFFIX\n");
    return 2;
  }
  moec::storage::RocksDbKvStoreOptions o;
  o.path = argv[1];
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) o.column_families.push_back({cf, false});
  o.column_families.push_back({"factors", true});
  auto kv = moec::storage::RocksDbKvStore::Open(o);
  if (!kv.ok()) {
    std::fprintf(stderr, "%s\n", kv.status().ToString().c_str());
    return 1;
  }
  auto it = (*kv)->NewIterator("factors");
  for (it->Seek(moec::storage::kFactorChunkPrefix); it->Valid(); it->Next()) {
    if (!absl::StartsWith(it->key(), moec::storage::kFactorChunkPrefix)) break;
    auto parsed = moec::storage::ParseFactorChunkKey(it->key());
    if (!parsed.ok() || !absl::EndsWith(parsed->first, argv[2])) continue;
    const std::string chunk_key(it->key());
    std::string value(it->value());
    if (value.empty()) continue;
    value[0] = static_cast<char>(value[0] ^ 0x5a);
    if (auto s = (*kv)->Put("factors", chunk_key, value, moec::storage::Durability::kSync); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("%s\n", parsed->first.c_str());
    return 0;
  }
  std::fprintf(stderr, "no factor ending with %s\n", argv[2]);
  return 1;
}
