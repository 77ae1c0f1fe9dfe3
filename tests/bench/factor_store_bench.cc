// FactorStore throughput against raw file I/O, measured in the same run.
//
// Writes ~1 GiB of tensors (sizes 1 MiB .. 256 MiB) (a) through FactorStore on RocksDB (one
// transaction, committed: chunks flushed to blob files, headers synced) and (b) sequentially to
// one file with write() + fdatasync. Reads them back (a) with FactorStore::ReadInto (CRC32C
// verified) and (b) with read(), both with a cold page cache (posix_fadvise DONTNEED on every
// file first) and warm. Prints MiB/s and the ratios store/raw; each figure is the median of
// --repeats runs, alternating baseline and store.
//
// Usage: factor_store_bench [--dir DIR] [--total_mib N] [--repeats N] [--chunk_mib N] [--read_threads N]
// Targets (issue #2): write ratio >= 0.7, cold read ratio >= 0.8.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/process_tuning.h"
#include "storage/factor_store.h"
#include "storage/file_util.h"
#include "storage/rocksdb_kv_store.h"

namespace moec::storage {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1ull << 20;

#define BENCH_CHECK_OK(expr)                                                    \
  do {                                                                          \
    absl::Status s_ = (expr);                                                   \
    if (!s_.ok()) {                                                             \
      std::fprintf(stderr, "%s failed: %s\n", #expr, s_.ToString().c_str());    \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Tensor sizes: 256, 128, ..., 1 MiB, repeated until `total` is reached (last one trimmed).
std::vector<uint64_t> Sizes(uint64_t total) {
  std::vector<uint64_t> out;
  uint64_t sum = 0;
  while (sum < total) {
    for (uint64_t mib = 256; mib >= 1 && sum < total; mib /= 2) {
      uint64_t n = std::min(mib * kMiB, total - sum);
      out.push_back(n);
      sum += n;
    }
  }
  return out;
}

void DropFileCache(const std::string& file) {
  int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Evicts `path` (a file, or every file under a directory) from the page cache.
void DropCache(const std::string& path) {
  if (!fs::is_directory(path)) return DropFileCache(path);
  for (const auto& entry : fs::recursive_directory_iterator(path)) {
    if (entry.is_regular_file()) DropFileCache(entry.path().string());
  }
}

double RawWrite(const std::string& path, const std::vector<uint64_t>& sizes, const std::string& data) {
  auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) std::exit(1);
  for (uint64_t n : sizes) {
    const char* p = data.data();
    uint64_t left = n;
    while (left > 0) {
      ssize_t w = ::write(fd, p, left);
      if (w <= 0) std::exit(1);
      p += w;
      left -= static_cast<uint64_t>(w);
    }
  }
  ::fdatasync(fd);
  ::close(fd);
  return Seconds(t0, Clock::now());
}

double RawRead(const std::string& path, const std::vector<uint64_t>& sizes, std::string& buf) {
  auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) std::exit(1);
  for (uint64_t n : sizes) {
    uint64_t got = 0;
    while (got < n) {
      ssize_t r = ::read(fd, buf.data() + got, n - got);
      if (r <= 0) std::exit(1);
      got += static_cast<uint64_t>(r);
    }
  }
  ::close(fd);
  return Seconds(t0, Clock::now());
}

struct StoreRun {
  double write_s;
  double cold_read_s;
  double warm_read_s;
};

StoreRun StoreWriteRead(const std::string& dir, const std::vector<uint64_t>& sizes,
                        const std::string& data, std::string& buf, uint64_t chunk_bytes,
                        int read_threads) {
  fs::remove_all(dir);
  RocksDbKvStoreOptions o;
  o.path = dir;
  o.column_families = {{"meta", false}, {"factors", true}};
  auto kv = RocksDbKvStore::Open(o);
  BENCH_CHECK_OK(kv.status());
  FactorStoreOptions fo;
  if (chunk_bytes > 0) fo.chunk_bytes = chunk_bytes;
  if (read_threads > 0) fo.read_threads = read_threads;
  auto store = FactorStore::Open(kv->get(), fo);
  BENCH_CHECK_OK(store.status());
  StoreRun run{};
  auto t0 = Clock::now();
  auto txn = (*store)->NewTransaction();
  for (size_t i = 0; i < sizes.size(); ++i) {
    BENCH_CHECK_OK(txn->Put(absl::StrCat("t", i), DType::kU8, {static_cast<int64_t>(sizes[i])},
                            absl::string_view(data.data(), sizes[i])));
  }
  BENCH_CHECK_OK(txn->Commit());
  run.write_s = Seconds(t0, Clock::now());
  txn.reset();
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 0) DropCache(dir);
    auto r0 = Clock::now();
    for (size_t i = 0; i < sizes.size(); ++i) {
      BENCH_CHECK_OK((*store)->ReadInto(
          absl::StrCat("t", i), absl::MakeSpan(reinterpret_cast<uint8_t*>(buf.data()), sizes[i])));
    }
    (pass == 0 ? run.cold_read_s : run.warm_read_s) = Seconds(r0, Clock::now());
  }
  return run;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Args {
  std::string dir = fs::temp_directory_path().string() + "/moec_factor_bench";
  uint64_t total_mib = 1024;
  uint64_t chunk_mib = 0;  // 0: FactorStoreOptions default
  int read_threads = 0;    // 0: FactorStoreOptions default
  int repeats = 3;
};

// False (after printing the usage) for an unknown flag or a bad value.
bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--dir") a->dir = argv[i + 1];
    else if (flag == "--total_mib") a->total_mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (flag == "--repeats") a->repeats = std::atoi(argv[i + 1]);
    else if (flag == "--chunk_mib") a->chunk_mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (flag == "--read_threads") a->read_threads = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--dir DIR] [--total_mib N] [--repeats N] [--chunk_mib N] [--read_threads N]\n", argv[0]);
      return false;
    }
  }
  if (argc % 2 == 0 || a->total_mib == 0 || a->repeats < 1) {
    std::fprintf(stderr, "usage: %s [--dir DIR] [--total_mib N] [--repeats N] [--chunk_mib N] [--read_threads N]\n", argv[0]);
    return false;
  }
  return true;
}

// 256 MiB of pseudo-random bytes: the tensors' contents.
std::string RandomData() {
  std::string data(256 * kMiB, '\0');
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= data.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&data[i], &v, 8);
  }
  return data;
}

// Seconds of every repeat: raw (baseline) and store writes and cold / warm reads.
struct Runs {
  std::vector<double> rw, rr_cold, rr_warm, sw, sr_cold, sr_warm;
};

Runs RunAll(const Args& a, const std::vector<uint64_t>& sizes, const std::string& data) {
  std::string buf(256 * kMiB, '\0');
  const std::string raw_path = a.dir + "/raw.bin";
  const std::string db_dir = a.dir + "/db";
  Runs runs;
  for (int r = 0; r < a.repeats; ++r) {
    runs.rw.push_back(RawWrite(raw_path, sizes, data));
    DropCache(a.dir + "/raw.bin");
    runs.rr_cold.push_back(RawRead(raw_path, sizes, buf));
    runs.rr_warm.push_back(RawRead(raw_path, sizes, buf));
    fs::remove(raw_path);
    StoreRun s = StoreWriteRead(db_dir, sizes, data, buf, a.chunk_mib * kMiB, a.read_threads);
    runs.sw.push_back(s.write_s);
    runs.sr_cold.push_back(s.cold_read_s);
    runs.sr_warm.push_back(s.warm_read_s);
    fs::remove_all(db_dir);
  }
  return runs;
}

void PrintResults(const Args& a, uint64_t total, size_t tensors, const Runs& runs) {
  const double rw = Median(runs.rw), sw = Median(runs.sw);
  const double rr_cold = Median(runs.rr_cold), sr_cold = Median(runs.sr_cold);
  const double rr_warm = Median(runs.rr_warm), sr_warm = Median(runs.sr_warm);
  auto mibs = [&](double s) { return static_cast<double>(total) / kMiB / s; };
  std::printf("factor_store_bench: %llu MiB in %zu tensors (1..256 MiB), %d repeats, dir %s\n",
              static_cast<unsigned long long>(a.total_mib), tensors, a.repeats, a.dir.c_str());
  std::printf("%-12s %14s %14s %8s\n", "", "raw MiB/s", "store MiB/s", "ratio");
  std::printf("%-12s %14.0f %14.0f %8.2f\n", "write+sync", mibs(rw), mibs(sw), rw / sw);
  std::printf("%-12s %14.0f %14.0f %8.2f\n", "read cold", mibs(rr_cold), mibs(sr_cold),
              rr_cold / sr_cold);
  std::printf("%-12s %14.0f %14.0f %8.2f\n", "read warm", mibs(rr_warm), mibs(sr_warm),
              rr_warm / sr_warm);
  std::printf("RESULT write_ratio=%.2f read_cold_ratio=%.2f read_warm_ratio=%.2f\n", rw / sw,
              rr_cold / sr_cold, rr_warm / sr_warm);
}

int Main(int argc, char** argv) {
  Args args;
  TuneMallocForLargeBuffers();  // as every moec binary does
  if (!ParseArgs(argc, argv, &args)) return 2;
  fs::create_directories(args.dir);
  const uint64_t total = args.total_mib * kMiB;
  const std::vector<uint64_t> sizes = Sizes(total);
  const std::string data = RandomData();
  const Runs runs = RunAll(args, sizes, data);
  PrintResults(args, total, sizes.size(), runs);
  fs::remove_all(args.dir);
  return 0;
}

}  // namespace
}  // namespace moec::storage

int main(int argc, char** argv) { return moec::storage::Main(argc, argv); }
