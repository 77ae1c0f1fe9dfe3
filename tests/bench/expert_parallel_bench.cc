// Expert-parallel scaling of a layer task (docs/data_plane.md): the real `gptq` stage on one
// synthetic MoE layer (8 experts, top-2), run by a gang of W = 1 and W = 2 worker processes
// that form a Gloo group (over a file rendezvous store), each with `--threads` intra-op threads
// (default 1: a worker per core, as on a cluster a worker per GPU). Prints the speedup
// t(W=1) / t(W=2) (target >= 1.7), the all_to_all bytes per rank next to the scaling model's
// formula, and, for reference, W = 1 with all cores as intra-op threads. Like the moec
// binaries it runs with OMP_WAIT_POLICY=PASSIVE (common/process_tuning.h).
//
// Usage: expert_parallel_bench [--hidden 512] [--ffn 1408] [--windows 32] [--seqlen 128]
//                              [--threads 1] [--repeats 2]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/communicator.h"
#include "common/process_tuning.h"
#include "dataplane/map_factor_io.h"
#include "nlohmann/json.hpp"
#include "stages/quantize_stage.h"
#include "tools/tiny_model.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// A rendezvous store in a directory shared by the processes: one file per key, written to a
// temporary name and renamed; Add under flock.
class FileStore : public moec::comm::RendezvousStore {
 public:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) { fs::create_directories(dir_); }
  absl::Status Set(const std::string& key, const std::string& value) override {
    const std::string path = Path(key), tmp = path + ".tmp" + std::to_string(getpid());
    std::ofstream(tmp, std::ios::binary) << value;
    fs::rename(tmp, path);
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    while (!fs::exists(Path(key))) {
      if (absl::Now() > deadline) return absl::DeadlineExceededError(key);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::ifstream in(Path(key), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  absl::StatusOr<int64_t> Add(const std::string& key, int64_t delta) override {
    const int fd = open((dir_ + "/.lock").c_str(), O_CREAT | O_RDWR, 0600);
    flock(fd, LOCK_EX);
    int64_t v = 0;
    if (fs::exists(Path(key))) v = std::stoll(*Get(key, absl::ZeroDuration()));
    v += delta;
    Set(key, std::to_string(v)).IgnoreError();
    flock(fd, LOCK_UN);
    close(fd);
    return v;
  }

 private:
  std::string Path(const std::string& key) const {
    std::string name;
    for (char c : key) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    return dir_ + "/" + name;
  }
  std::string dir_;
};

struct Options {
  int hidden = 512, ffn = 1408, windows = 32, seqlen = 128, threads = 1, repeats = 2;
};

// One rank: runs the gptq stage on layer 0 and writes {seconds, bytes} to dir/result-<rank>.
int Child(const std::string& dir, int rank, int size, int threads) {
  at::set_num_threads(threads);
  auto store = std::make_shared<FileStore>(dir + "/store");
  moec::comm::GlooOptions o;
  o.rank = rank;
  o.size = size;
  auto comm = moec::comm::NewGlooCommunicator(store, o);
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, comm.status().ToString().c_str());
    return 1;
  }
  const nlohmann::json recipe_json = {
      {"name", "bench"},
      {"model", dir + "/model"},
      {"output", dir + "/out"},
      {"workers", size},
      {"calibration",
       {{"path", dir + "/calib.txt"}, {"samples", std::atoi(std::getenv("BENCH_WINDOWS"))},
        {"seqlen", std::atoi(std::getenv("BENCH_SEQLEN"))}, {"seed", 0},
        {"sampling", "random_windows"}}},
      {"evaluation", nullptr},
      {"stages",
       {{{"id", "q"},
         {"kind", "gptq"},
         {"needs", nlohmann::json::array()},
         {"with", {{"bits", 3}, {"attn_bits", 4}, {"group_size", 128}, {"true_sequential", true}}}}}}};
  absl::StatusOr<moec::recipe::Recipe> recipe =
      moec::recipe::Recipe::FromCanonicalJson(recipe_json.dump());
  if (!recipe.ok()) {
    std::fprintf(stderr, "%s\n", recipe.status().ToString().c_str());
    return 1;
  }
  moec::v1::TaskRecord task;
  task.set_job_id("bench");
  task.set_stage_id("q");
  task.set_layer(0);
  task.set_task_id("bench/q/L0");
  std::map<std::string, moec::storage::Factor> factors;
  moec::dataplane::MapFactorIo io(&factors);
  io.SetTask("L0");
  moec::stages::StageContext ctx;
  ctx.task = &task;
  ctx.SetRecipe(std::make_shared<const moec::recipe::Recipe>(*std::move(recipe)), "q");
  ctx.rank = rank;
  ctx.group.resize(size);
  ctx.comm = comm->get();
  ctx.io = &io;
  if (!(*comm)->Barrier().ok()) return 1;
  const auto t0 = Clock::now();
  moec::stages::QuantizeStage stage(/*gptq=*/true);
  absl::Status s = stage.Run(ctx);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!s.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, s.ToString().c_str());
    return 1;
  }
  std::ofstream(absl::StrCat(dir, "/result-", rank)) << seconds << " " << (*comm)->bytes_sent();
  return 0;
}

// Runs a gang of `size` child processes; returns the slowest rank's seconds and rank 0's bytes.
std::pair<double, int64_t> Gang(const std::string& self, const std::string& dir, int size,
                                int threads) {
  fs::remove_all(dir + "/store");
  std::vector<pid_t> pids;
  for (int r = 0; r < size; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      // OpenBLAS (pthread build) keeps its own pool: size it like libtorch's.
      setenv("OPENBLAS_NUM_THREADS", std::to_string(threads).c_str(), 1);
      setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
      const std::string rs = std::to_string(r), ss = std::to_string(size),
                        ts = std::to_string(threads);
      execl(self.c_str(), self.c_str(), "--child", dir.c_str(), rs.c_str(), ss.c_str(), ts.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "a rank failed\n");
      std::exit(1);
    }
  }
  double worst = 0;
  int64_t bytes = 0;
  for (int r = 0; r < size; ++r) {
    double s = 0;
    int64_t b = 0;
    std::ifstream(absl::StrCat(dir, "/result-", r)) >> s >> b;
    worst = std::max(worst, s);
    if (r == 0) bytes = b;
  }
  return {worst, bytes};
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (f == "--hidden") o.hidden = v;
    if (f == "--ffn") o.ffn = v;
    if (f == "--windows") o.windows = v;
    if (f == "--seqlen") o.seqlen = v;
    if (f == "--threads") o.threads = v;
    if (f == "--repeats") o.repeats = v;
  }
  return o;
}

// The one-layer model and the calibration text in dir.
absl::Status WriteInputs(const Options& o, const std::string& dir) {
  moec::tools::TinyModelOptions m;
  m.num_layers = 1;
  m.hidden = o.hidden;
  m.heads = 8;
  m.kv_heads = 8;
  m.experts = 8;
  m.top_k = 2;
  m.moe_intermediate = o.ffn;
  m.max_parameters = int64_t{1} << 34;
  if (absl::Status s = moec::tools::WriteTinyModel(m, dir + "/model"); !s.ok()) return s;
  std::ofstream calib(dir + "/calib.txt");
  for (const char* f : {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"}) {
    std::ifstream in(f);
    calib << in.rdbuf() << "\n";
  }
  return absl::OkStatus();
}

// Best of the repeats: W = 1 and W = 2 with o.threads each, W = 1 with all `cores`.
struct Timings {
  double t1 = 1e30, t2 = 1e30, t1_all = 1e30;
  int64_t bytes2 = 0;  // sent by rank 0 at W = 2 (last repeat)
};

Timings RunGangs(const std::string& self, const std::string& dir, const Options& o, int cores) {
  Timings t;
  for (int r = 0; r < o.repeats; ++r) {
    t.t1 = std::min(t.t1, Gang(self, dir, 1, o.threads).first);
    auto [seconds, b] = Gang(self, dir, 2, o.threads);
    t.t2 = std::min(t.t2, seconds);
    t.bytes2 = b;
    t.t1_all = std::min(t.t1_all, Gang(self, dir, 1, cores).first);
  }
  return t;
}

void PrintReport(const Options& o, int cores, const Timings& t) {
  const double t1 = t.t1, t2 = t.t2, t1_all = t.t1_all;
  const int64_t bytes2 = t.bytes2;
  // Scaling model (docs/data_plane.md): 3 passes reach the MoE block (the gate/up and down
  // groups' and the output pass; the q/k/v and o groups' stop in the attention), each routed row
  // crossing ranks travels there and back with its hidden
  // vector (4 bytes/element) and 16 bytes of metadata; half the rows cross at W = 2 in
  // expectation (uniform routing). Broadcasts of quantized attention weights are not counted. Gram matrices of the 4 attention linears go to their owners: every round, a
  // rank sends the hidden^2 * 4 bytes of those it does not own (2 of 4 at W = 2).
  const int64_t tokens = int64_t{o.windows} * o.seqlen;
  const int64_t rounds = ((o.windows + 7) / 8 + 1) / 2;
  // Rank 0 holds T/2 tokens, i.e. T rows (top-2); T/2 go to rank 1 (hidden floats + 16 bytes
  // of expert and token index) and T/2 outputs come back from it.
  const double a2a = 3.0 * (tokens / 2.0) * (2.0 * o.hidden * 4 + 16);
  const double grams = 2.0 * rounds * o.hidden * o.hidden * 4;
  std::printf("expert-parallel gptq, one layer: hidden %d, 8 experts (ffn %d) top-2, %lld tokens\n",
              o.hidden, o.ffn, static_cast<long long>(tokens));
  std::printf("  W=1, %d thread(s):          %8.2f s\n", o.threads, t1);
  std::printf("  W=2, %d thread(s) per rank: %8.2f s   speedup %.2f (target >= 1.7)\n", o.threads,
              t2, t1 / t2);
  std::printf("  W=1, %d threads:            %8.2f s   (libtorch + OpenBLAS threads; %.2fx of W=2)\n",
              cores, t1_all, t1_all / t2);
  std::printf("  bytes sent by rank 0 at W=2: %.1f MiB; model: all_to_all %.1f MiB + Gram %.1f MiB "
              "= %.1f MiB\n",
              bytes2 / 1048576.0, a2a / 1048576.0, grams / 1048576.0, (a2a + grams) / 1048576.0);
}

}  // namespace

int main(int argc, char** argv) {
  moec::UsePassiveThreadWait(argv);  // as the moec binaries do
  if (argc == 6 && std::strcmp(argv[1], "--child") == 0) {
    return Child(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]));
  }
  const Options o = ParseOptions(argc, argv);
  const std::string dir = fs::temp_directory_path() / ("moec-ep-bench-" + std::to_string(getpid()));
  fs::create_directories(dir);
  if (absl::Status s = WriteInputs(o, dir); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  setenv("BENCH_WINDOWS", std::to_string(o.windows).c_str(), 1);
  setenv("BENCH_SEQLEN", std::to_string(o.seqlen).c_str(), 1);
  const std::string self = fs::read_symlink("/proc/self/exe");
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  PrintReport(o, cores, RunGangs(self, dir, o, cores));
  fs::remove_all(dir);
  return 0;
}
