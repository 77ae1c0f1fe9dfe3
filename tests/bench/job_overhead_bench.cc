// Orchestration overhead of a whole job: the MC-MoE recipe (calibrate -> quant_loss ->
// allocate_bits -> gptq -> export -> evaluate) run by an embedded cluster of real processes
// (coordinator + `--workers` workers over loopback gRPC, Gloo for the gangs). Prints the job's
// wall time (submit to end, as the coordinator records it) divided by the sum of its tasks'
// compute time (each stage's Run on rank 0, as the workers measure it). Target <= 1.10.
//
// Usage: job_overhead_bench [--model DIR] [--workers N] [--samples N]
//   --model: an HF directory (default: models/tiny-mixtral when present — the trained tiny
//   model — else a random tiny Mixtral of the same shape written to a temporary directory).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/embedded.h"
#include "common/process_tuning.h"
#include "tools/tiny_model.h"

namespace fs = std::filesystem;

namespace {

struct Args {
  std::string model;
  int workers = 2, samples = 64;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  a.model = fs::exists("models/tiny-mixtral/config.json") ? "models/tiny-mixtral" : "";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--model") == 0) a.model = argv[i + 1];
    if (std::strcmp(argv[i], "--workers") == 0) a.workers = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--samples") == 0) a.samples = std::atoi(argv[i + 1]);
  }
  return a;
}

// A random tiny Mixtral of the trained model's shape.
absl::Status WriteRandomModel(const std::string& model) {
  moec::tools::TinyModelOptions o;
  o.num_layers = 4;
  o.hidden = 128;
  o.experts = 8;
  o.moe_intermediate = 256;
  o.vocab = 512;
  return moec::tools::WriteTinyModel(o, model);
}

void WriteText(const std::string& path) {
  std::ofstream text(path);
  for (const char* f : {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"}) {
    std::ifstream in(f);
    text << in.rdbuf() << "\n";
  }
}

std::string Recipe(const Args& a, const std::string& dir) {
  return absl::StrCat(
      "name: overhead\nmodel: ", a.model, "\noutput: ", dir, "/out\n",
      "calibration: {path: ", dir, "/text.txt, samples: ", a.samples, ", seqlen: 128, seed: 0}\n",
      "evaluation: {path: ", dir, "/text.txt, seqlen: 128}\nworkers: ", a.workers, "\nstages:\n",
      "  - {id: stats, kind: calibrate}\n",
      "  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3]}}\n",
      "  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {bits: [2, 3], average_bits: 2.5}}\n",
      "  - {id: quant, kind: gptq, needs: [bits], with: {attn_bits: 4}}\n",
      "  - {id: out, kind: export, needs: [quant], with: {format: gptq}}\n",
      "  - {id: eval, kind: evaluate, needs: [out], with: {max_windows: 16}}\n");
}

// Once the workers have registered, submits the recipe and waits for the job to end; *done: its
// final state with its tasks. False (with a message for a failed submission or job) otherwise.
bool RunJob(moec::client::MoecClient& client, int workers, const std::string& recipe,
            const std::string& dir, moec::v1::GetJobResponse* done) {
  for (int i = 0; i < 200; ++i) {  // the workers register
    auto w = client.ListWorkers();
    if (w.ok() && static_cast<int>(w->size()) == workers) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto submitted = client.Submit(recipe, dir + "/recipe.yaml", {});
  if (!submitted.ok()) {
    std::fprintf(stderr, "%s\n", submitted.status().ToString().c_str());
    return false;
  }
  const std::string job = submitted->job().job_id();
  while (true) {
    auto r = client.GetJob(job, /*include_tasks=*/true);
    if (!r.ok()) return false;
    const auto state = r->job().state();
    if (state == moec::v1::JOB_SUCCEEDED || state == moec::v1::JOB_FAILED) {
      *done = *r;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (done->job().state() != moec::v1::JOB_SUCCEEDED) {
    std::fprintf(stderr, "job failed: %s\n", done->job().error().c_str());
    return false;
  }
  return true;
}

void PrintReport(const Args& a, const moec::v1::GetJobResponse& done) {
  int64_t compute = 0;
  std::map<std::string, int64_t> by_stage;
  for (const auto& t : done.tasks()) {
    compute += t.compute_ms();
    by_stage[t.kind()] += t.compute_ms();
  }
  const int64_t wall = done.job().end_time_ms() - done.job().submit_time_ms();
  std::printf("MC-MoE job on %s, %d workers, %d calibration windows, %d tasks\n", a.model.c_str(),
              a.workers, a.samples, done.tasks_size());
  for (const auto& [kind, ms] : by_stage) std::printf("  %-14s %8.2f s\n", kind.c_str(), ms / 1e3);
  std::printf("  job wall %.2f s / task compute %.2f s = %.3f (target <= 1.10)\n", wall / 1e3,
              compute / 1e3, static_cast<double>(wall) / std::max<int64_t>(1, compute));
}

}  // namespace

int main(int argc, char** argv) {
  moec::TuneMallocForLargeBuffers();
  Args args = ParseArgs(argc, argv);
  const std::string dir = fs::temp_directory_path() / ("moec-overhead-" + std::to_string(getpid()));
  fs::create_directories(dir);
  if (args.model.empty()) {
    args.model = dir + "/model";
    if (absl::Status s = WriteRandomModel(args.model); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
  }
  args.model = fs::absolute(args.model).string();
  WriteText(dir + "/text.txt");
  const std::string recipe = Recipe(args, dir);
  // The daemons are built in ../../coordinator and ../../worker of this binary.
  const fs::path build = fs::read_symlink("/proc/self/exe").parent_path() / "../..";
  setenv("PATH", absl::StrCat((build / "coordinator").string(), ":", (build / "worker").string(), ":",
                              std::getenv("PATH") ? std::getenv("PATH") : "").c_str(), 1);
  moec::client::EmbeddedOptions eo;
  eo.data_dir = dir + "/data";
  eo.workers = args.workers;
  auto cluster = moec::client::EmbeddedCluster::Start(eo);
  if (!cluster.ok()) {
    std::fprintf(stderr, "%s\n", cluster.status().ToString().c_str());
    return 1;
  }
  moec::client::ClientOptions co;
  co.address = (*cluster)->address();
  co.token = (*cluster)->token();
  auto client = moec::client::MoecClient::Create(co);
  if (!client.ok()) return 1;
  moec::v1::GetJobResponse done;
  if (!RunJob(**client, args.workers, recipe, dir, &done)) return 1;
  PrintReport(args, done);
  cluster->reset();
  fs::remove_all(dir);
  return 0;
}
