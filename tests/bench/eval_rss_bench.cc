// Peak resident memory of `moec eval` on a synthetic model with more than 4 GiB of F32 weights,
// divided by the bytes of its largest layer (issue #3: <= 3, i.e. the forward streams layers).
//
// Writes a Mixtral-layout model (hidden 2048, 8 experts of width 5632, 4 layers: ~1.16 GB per
// layer, ~4.7 GB in all) with the tiny-model generator, then runs `moec eval` on it as a child
// process (fp32, one window of 256 tokens) and reads the child's peak RSS from wait4's rusage.
// The model's page-cache pages are not the process's memory; mapped pages the forward touched
// count in RSS until it releases them, which is what this measures.
//
// Usage: eval_rss_bench [--moec PATH] [--keep DIR] [--hidden N] [--ffn N]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "model/config/config.h"
#include "model/config/parameter_count.h"
#include "model/config/tensor_names.h"
#include "tools/tiny_model.h"

namespace fs = std::filesystem;

namespace {

struct Args {
  std::string moec;
  int hidden = 2048, ffn = 5632;  // smaller with --hidden/--ffn (CTest runs it tiny once)
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  a.moec = (fs::canonical("/proc/self/exe").parent_path() / "../../client/moec").string();
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--moec") == 0) a.moec = argv[i + 1];
    if (std::strcmp(argv[i], "--hidden") == 0) a.hidden = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--ffn") == 0) a.ffn = std::atoi(argv[i + 1]);
  }
  return a;
}

absl::Status WriteModel(const Args& a, const std::string& dir) {
  moec::tools::TinyModelOptions o;
  o.model_type = "mixtral";
  o.num_layers = 4;
  o.hidden = a.hidden;
  o.heads = 16;
  o.kv_heads = 8;
  o.experts = 8;
  o.top_k = 2;
  o.moe_intermediate = a.ffn;
  o.vocab = 512;
  o.max_parameters = int64_t{4} << 30;
  return moec::tools::WriteTinyModel(o, dir);
}

// F32 bytes of the model's largest layer and of the whole model; false when its config does not
// load.
bool ModelBytes(const std::string& model_dir, int64_t* largest, int64_t* total) {
  auto config = moec::model::LoadModelConfig(model_dir);
  if (!config.ok()) return false;
  for (int l = 0; l < config->num_hidden_layers; ++l) {
    int64_t bytes = 0;
    for (const auto& spec : moec::model::LayerTensors(*config, l)) bytes += spec.NumElements() * 4;
    *largest = std::max(*largest, bytes);
  }
  for (const auto& spec : moec::model::ModelTensors(*config)) *total += spec.NumElements() * 4;
  return true;
}

// `moec eval` as a child process: its wait status, rusage and wall seconds.
struct EvalRun {
  int status = 0;
  struct rusage usage {};
  double seconds = 0;
};

EvalRun RunEval(const std::string& moec, const std::string& dir) {
  EvalRun run;
  const auto t1 = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid == 0) {
    const std::string model = dir + "/model", text = dir + "/text.txt";
    execl(moec.c_str(), moec.c_str(), "eval", model.c_str(), "--text", text.c_str(), "--seqlen",
          "256", "--max-windows", "1", "--json", static_cast<char*>(nullptr));
    std::perror("exec moec");
    _exit(127);
  }
  wait4(pid, &run.status, 0, &run.usage);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = ParseArgs(argc, argv);
  const std::string dir = (fs::temp_directory_path() / ("moec_rss_bench_" + std::to_string(getpid()))).string();
  const auto t0 = std::chrono::steady_clock::now();
  if (auto s = WriteModel(args, dir + "/model"); !s.ok()) {
    std::fprintf(stderr, "write model: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  const double write_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t largest = 0, total = 0;
  if (!ModelBytes(dir + "/model", &largest, &total)) return 1;
  {
    std::ofstream text(dir + "/text.txt");
    for (int i = 0; i < 200; ++i) text << "The quick brown fox jumps over the lazy dog. ";
  }
  std::printf("model: %.2f GiB of F32 weights, largest layer %.2f GiB (written in %.1f s)\n",
              total / 1073741824.0, largest / 1073741824.0, write_s);
  std::fflush(stdout);

  const EvalRun run = RunEval(args.moec, dir);
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!WIFEXITED(run.status) || WEXITSTATUS(run.status) != 0) {
    std::fprintf(stderr, "moec eval failed (status %d)\n", run.status);
    return 1;
  }
  const double peak = static_cast<double>(run.usage.ru_maxrss) * 1024.0;  // KiB on Linux
  std::printf("moec eval: %.1f s, peak RSS %.2f GiB\n", run.seconds, peak / 1073741824.0);
  std::printf("peak RSS / largest layer = %.2f (target <= 3); / whole model = %.2f\n",
              peak / largest, peak / total);
  return 0;
}
