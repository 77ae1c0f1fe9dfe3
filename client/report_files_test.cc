// Report files of real jobs run by an embedded cluster (coordinator + worker processes) on a tiny
// random Mixtral: the figures' cells carry the values the stages stored (read back independently
// from the factor store), every SVG parses as XML (python3's xml.etree), report.json round-trips,
// and jobs lacking stages (no allocate_bits; no gptq and no evaluate) still render.
#include "report/report_files.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <memory>
#include <regex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client.h"
#include "client/embedded.h"
#include "report/report.h"
#include "report/svg.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::client {
namespace {

namespace fs = std::filesystem;
using report::BuildReportFiles;
using report::HeatColor;
using report::JobReport;
using report::WriteReportFiles;

constexpr int kLayers = 2, kExperts = 4;

struct Cell {
  int row, col;
  std::string fill, value;
};

// The heat map's cells in drawing order.
std::vector<Cell> Cells(const std::string& svg) {
  static const std::regex re(
      "<rect class=\"cell\"[^>]* fill=\"(#[0-9a-f]{6})\" stroke=\"white\"><title>[a-z]+ (\\d+), "
      "[a-z]+ (\\d+): ([^<]*)</title></rect>");
  std::vector<Cell> out;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it) {
    out.push_back({std::stoi((*it)[2]), std::stoi((*it)[3]), (*it)[1], (*it)[4]});
  }
  return out;
}

std::vector<int64_t> Int64s(const std::string& bytes) {
  std::vector<int64_t> out(bytes.size() / sizeof(int64_t));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(int64_t));
  return out;
}

class ReportFilesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    const std::string d = dir_->path();
    tools::TinyModelOptions o;
    o.num_layers = kLayers;
    o.experts = kExperts;
    ASSERT_TRUE(tools::WriteTinyModel(o, d + "/model").ok());
    {
      std::ofstream text(d + "/text.txt");
      std::ifstream in("/usr/share/common-licenses/GPL-3");
      text << in.rdbuf();
    }
    EmbeddedOptions eo;
    eo.data_dir = d + "/data";
    eo.workers = 1;
    auto cluster = EmbeddedCluster::Start(eo);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    ClientOptions co;
    co.address = cluster_->address();
    co.token = cluster_->token();
    auto client = MoecClient::Create(co);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = client->release();
  }
  static void TearDownTestSuite() {
    delete client_;
    delete cluster_;
    delete dir_;
  }

  // Submits a job of `stages` (YAML list items) and waits for it to succeed.
  static std::string RunJob(const std::string& name, const std::string& stages) {
    const std::string d = dir_->path();
    const std::string recipe = absl::StrCat(
        "name: ", name, "\nmodel: ", d, "/model\noutput: ", d, "/out-", name, "\n",
        "calibration: {path: ", d, "/text.txt, samples: 8, seqlen: 64, seed: 0}\n",
        "evaluation: {path: ", d, "/text.txt, seqlen: 64}\nworkers: 1\nstages:\n", stages);
    auto submitted = client_->Submit(recipe, d + "/" + name + ".yaml", {});
    EXPECT_TRUE(submitted.ok()) << submitted.status();
    if (!submitted.ok()) return "";
    const std::string job = submitted->job().job_id();
    for (int i = 0; i < 6000; ++i) {
      auto r = client_->GetJob(job, /*include_tasks=*/false);
      if (!r.ok()) break;
      if (r->job().state() == v1::JOB_SUCCEEDED) return job;
      if (r->job().state() == v1::JOB_FAILED) {
        ADD_FAILURE() << "job " << name << " failed: " << r->job().error();
        return "";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "job " << name << " did not finish";
    return "";
  }

  // The committed factor `name` of the job's DONE task of `kind` at `layer`.
  static std::string Factor(const std::string& job, const std::string& kind, int layer,
                            const std::string& name) {
    auto r = client_->GetJob(job, /*include_tasks=*/true);
    EXPECT_TRUE(r.ok());
    if (!r.ok()) return "";
    for (const v1::TaskRecord& t : r->tasks()) {
      if (t.kind() != kind || t.layer() != layer || t.state() != v1::TASK_DONE) continue;
      auto bytes = client_->GetFactorBytes(t.fingerprint() + "/" + name, 64 << 20);
      EXPECT_TRUE(bytes.ok()) << bytes.status();
      return bytes.ok() ? *bytes : "";
    }
    ADD_FAILURE() << "no " << kind << " task at layer " << layer;
    return "";
  }

  // Writes the files under a fresh folder and parses every SVG with python3's xml.etree.
  static void ExpectSvgsParse(const std::map<std::string, std::string>& files) {
    const std::string out = dir_->path() + "/parse" + std::to_string(++parses_);
    fs::create_directories(out);
    std::string args;
    for (const auto& [name, content] : files) {
      std::ofstream(out + "/" + name, std::ios::binary) << content;
      if (name.size() > 4 && name.substr(name.size() - 4) == ".svg") args += " " + out + "/" + name;
    }
    const std::string cmd = absl::StrCat(
        "/usr/bin/python3 -c 'import sys, xml.etree.ElementTree as E\n"
        "for f in sys.argv[1:]:\n"
        "  assert E.parse(f).getroot().tag == \"{http://www.w3.org/2000/svg}svg\", f' ",
        args);
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  // The quant job's files: the figures it has and lacks, and report.json round-trips.
  static void ExpectQuantFiles(const std::string& quant,
                               const std::map<std::string, std::string>& files) {
    for (const char* f : {"report.md", "report.json", "expert_usage.svg", "gptq_error.svg",
                          "ppl_vs_size.svg"}) {
      EXPECT_EQ(files.count(f), 1u) << f;
    }
    for (const char* f : {"bit_allocation.svg", "kept_experts.svg", "similarity.svg"}) {
      EXPECT_EQ(files.count(f), 0u) << f;
      EXPECT_EQ(files.at("report.md").find(f), std::string::npos) << f;
    }
    EXPECT_NE(files.at("report.md").find("](gptq_error.svg)"), std::string::npos);
    ExpectSvgsParse(files);

    // report.json round-trips to the report the client builds.
    const nlohmann::json json = nlohmann::json::parse(files.at("report.json"));
    auto report = JobReport(*client_, quant);
    ASSERT_TRUE(report.ok());
    EXPECT_EQ(json, *report);
    EXPECT_EQ(json.dump(2) + "\n", files.at("report.json"));
    ASSERT_EQ(json["evaluations"].size(), 1u);
    ExpectTimeBreakdown(json, files);
  }

  // Where the time went: every stage ran and recorded its phases; the forward-heavy ones
  // counted FLOPs against the worker's GEMM rate; the figure and the table are there.
  static void ExpectTimeBreakdown(const nlohmann::json& json,
                                  const std::map<std::string, std::string>& files) {
    EXPECT_EQ(files.count("time.svg"), 1u);
    EXPECT_NE(files.at("report.md").find("](time.svg)"), std::string::npos);
    EXPECT_NE(files.at("report.md").find("## Where the time went"), std::string::npos);
    std::map<std::string, nlohmann::json> by_stage;
    for (const nlohmann::json& s : json["time"]["stages"]) by_stage[s["stage"]] = s;
    for (const char* stage : {"stats", "q", "out", "eval"}) {
      ASSERT_EQ(by_stage.count(stage), 1u) << stage;
      const nlohmann::json& s = by_stage[stage];
      EXPECT_GT(s["seconds"].get<double>(), 0) << stage;
      double phases = 0;
      for (const auto& [name, seconds] : s["phases"].items()) {
        if (name != "commit") phases += seconds.get<double>();
      }
      EXPECT_NEAR(phases, s["seconds"].get<double>(), 1e-6) << stage;
      EXPECT_GT(s["gemm_gflops"].get<double>(), 0) << stage;
    }
    for (const char* stage : {"stats", "q", "eval"}) {
      const nlohmann::json& s = by_stage[stage];
      EXPECT_GT(s["phase_gflop"]["forward"].get<double>(), 0) << stage;
      EXPECT_GT(s["fraction_of_gemm"].get<double>(), 0) << stage;
      EXPECT_LT(s["fraction_of_gemm"].get<double>(), 1.5) << stage;
    }
    EXPECT_GT(by_stage["q"]["phase_gflop"]["solve"].get<double>(), 0);
    EXPECT_GT(by_stage["q"]["phase_gflop"]["statistics"].get<double>(), 0);  // the Hessians
  }

  // Calibration coverage: every routed expert of each layer with the tokens its Hessians saw;
  // each token goes to top-k experts, so a layer's counts add up to what calibrate routed there.
  static void ExpectCoverage(const std::string& quant, const nlohmann::json& coverage,
                             const std::map<std::string, std::string>& files) {
    ASSERT_EQ(coverage["stages"].size(), 1u) << coverage.dump();
    const nlohmann::json& s = coverage["stages"][0];
    EXPECT_EQ(s["stage"], "q");
    EXPECT_EQ(s["min_tokens"], 1);
    EXPECT_EQ(s["experts"], kLayers * kExperts);
    EXPECT_EQ(s["fallbacks"], 0);
    EXPECT_EQ(coverage["fallbacks"], nlohmann::json::array());
    ASSERT_EQ(s["tokens"].size(), static_cast<size_t>(kLayers));
    int64_t fewest = INT64_MAX;
    for (int l = 0; l < kLayers; ++l) {
      int64_t routed = 0, seen = 0;
      for (int64_t t : Int64s(Factor(quant, "calibrate", l, "expert_tokens"))) routed += t;
      ASSERT_EQ(s["tokens"][l].size(), static_cast<size_t>(kExperts));
      for (const auto& t : s["tokens"][l]) seen += t.get<int64_t>(), fewest = std::min(fewest, t.get<int64_t>());
      EXPECT_EQ(seen, routed) << "layer " << l;
    }
    EXPECT_EQ(s["fewest_tokens"], fewest);
    EXPECT_EQ(Cells(files.at("expert_tokens.svg")).size(), static_cast<size_t>(kLayers * kExperts));
    EXPECT_NE(files.at("report.md").find("none was quantized without its Hessian"), std::string::npos);
  }

  // Expert usage: one cell per layer x expert, coloured by the share of that layer's routed tokens
  // on the scale of all shares.
  static void ExpectUsageCells(const std::string& quant, const std::string& svg) {
    std::vector<std::vector<double>> share(kLayers);
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (int l = 0; l < kLayers; ++l) {
      std::vector<int64_t> tokens = Int64s(Factor(quant, "calibrate", l, "expert_tokens"));
      ASSERT_EQ(tokens.size(), static_cast<size_t>(kExperts));
      int64_t total = 0;
      for (int64_t t : tokens) total += t;
      for (int64_t t : tokens) share[l].push_back(static_cast<double>(t) / total);
      for (double s : share[l]) lo = std::min(lo, s), hi = std::max(hi, s);
    }
    std::vector<Cell> cells = Cells(svg);
    ASSERT_EQ(cells.size(), static_cast<size_t>(kLayers * kExperts));
    for (int i = 0; i < kLayers * kExperts; ++i) {
      const int l = i / kExperts, e = i % kExperts;
      EXPECT_EQ(cells[i].row, l);
      EXPECT_EQ(cells[i].col, e);
      EXPECT_EQ(cells[i].fill, HeatColor(share[l][e], lo, hi)) << "layer " << l << " expert " << e;
      EXPECT_NEAR(std::stod(cells[i].value), share[l][e], 1e-3 * share[l][e] + 1e-9);
    }
  }

  // GPTQ error: per expert, the mean of its three linears' errors in the layer's summary.
  static void ExpectErrorCells(const std::string& quant, const std::string& svg) {
    std::vector<Cell> cells = Cells(svg);
    ASSERT_EQ(cells.size(), static_cast<size_t>(kLayers * kExperts));
    for (int l = 0; l < kLayers; ++l) {
      const nlohmann::json summary = nlohmann::json::parse(Factor(quant, "gptq", l, "summary"));
      for (int e = 0; e < kExperts; ++e) {
        double sum = 0;
        for (const char* w : {"w1", "w2", "w3"}) {
          const std::string name =
              absl::StrFormat("model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l, e, w);
          ASSERT_TRUE(summary.contains(name)) << name;
          sum += summary[name]["error"].get<double>();
        }
        EXPECT_NEAR(std::stod(cells[l * kExperts + e].value), sum / 3, 1e-3 * sum / 3);
      }
    }
  }

  // The alloc job's files: bit allocation and usage, no GPTQ error, no evaluation; the earlier
  // job's point is in the scatter, not highlighted.
  static void ExpectAllocFiles(const std::map<std::string, std::string>& files) {
    EXPECT_EQ(files.count("bit_allocation.svg"), 1u);
    EXPECT_EQ(files.count("expert_usage.svg"), 1u);
    EXPECT_EQ(files.count("gptq_error.svg"), 0u);
    EXPECT_NE(files.at("report.md").find("No evaluation finished"), std::string::npos);
    EXPECT_NE(files.at("report.md").find("](bit_allocation.svg)"), std::string::npos);
    EXPECT_NE(files.at("ppl_vs_size.svg").find("<title>quant: "), std::string::npos);
    EXPECT_EQ(files.at("ppl_vs_size.svg").find("#c0392b"), std::string::npos);
    EXPECT_EQ(nlohmann::json::parse(files.at("report.json"))["evaluations"].size(), 0u);
    ExpectSvgsParse(files);
  }

  // Widths: the cell of layer l, expert e shows expert_bits[l * experts + e].
  static void ExpectBitCells(const std::string& alloc, const std::string& svg) {
    std::vector<int64_t> widths;
    {
      auto r = client_->GetJob(alloc, /*include_tasks=*/true);
      ASSERT_TRUE(r.ok());
      for (const v1::TaskRecord& t : r->tasks()) {
        if (t.kind() != "allocate_bits") continue;
        auto bytes = client_->GetFactorBytes(t.fingerprint() + "/expert_bits", 1 << 20);
        ASSERT_TRUE(bytes.ok()) << bytes.status();
        widths = Int64s(*bytes);
      }
    }
    ASSERT_EQ(widths.size(), static_cast<size_t>(kLayers * kExperts));
    std::vector<Cell> cells = Cells(svg);
    ASSERT_EQ(cells.size(), widths.size());
    int64_t wlo = widths[0], whi = widths[0];
    for (int64_t w : widths) wlo = std::min(wlo, w), whi = std::max(whi, w);
    for (size_t i = 0; i < widths.size(); ++i) {
      EXPECT_EQ(cells[i].value, std::to_string(widths[i])) << i;
      EXPECT_EQ(cells[i].fill, HeatColor(widths[i], wlo, whi == wlo ? wlo + 1 : whi)) << i;
    }
  }

  // The coordinator's GetJobReport builds the same files, which WriteReportFiles writes.
  static void ExpectWrittenFiles(const std::string& job,
                                 const std::map<std::string, std::string>& files) {
    absl::StatusOr<v1::GetJobReportResponse> resp = client_->GetJobReport(job, true);
    ASSERT_TRUE(resp.ok()) << resp.status();
    std::map<std::string, std::string> served(resp->files().begin(), resp->files().end());
    EXPECT_EQ(served, files);
    EXPECT_EQ(resp->report_json(), served["report.json"]);
    EXPECT_FALSE(WriteReportFiles({{"../escape", "x"}}, dir_->path() + "/bad").ok());
    const std::string out = dir_->path() + "/written";
    ASSERT_TRUE(WriteReportFiles(served, out).ok());
    for (const auto& [name, content] : files) {
      std::ifstream in(out + "/" + name, std::ios::binary);
      EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), content) << name;
    }
  }

  static testing::TempDir* dir_;
  static EmbeddedCluster* cluster_;
  static MoecClient* client_;
  static int parses_;
};

testing::TempDir* ReportFilesTest::dir_ = nullptr;
EmbeddedCluster* ReportFilesTest::cluster_ = nullptr;
MoecClient* ReportFilesTest::client_ = nullptr;
int ReportFilesTest::parses_ = 0;

// Experts with fewer routed tokens than min_tokens are quantized by round-to-nearest: the report
// lists every one of them, never silently.
TEST_F(ReportFilesTest, ExpertsBelowMinTokensAreListedWithTheirFallback) {
  const std::string starved = RunJob(
      "starved", "  - {id: stats, kind: calibrate}\n"
                 "  - {id: q, kind: gptq, needs: [stats], with: {bits: 3, min_tokens: 100000}}\n");
  ASSERT_FALSE(starved.empty());
  auto files = BuildReportFiles(*client_, starved);
  ASSERT_TRUE(files.ok()) << files.status();
  const nlohmann::json coverage = nlohmann::json::parse(files->at("report.json"))["coverage"];
  ASSERT_EQ(coverage["stages"].size(), 1u);
  EXPECT_EQ(coverage["stages"][0]["min_tokens"], 100000);
  EXPECT_EQ(coverage["stages"][0]["fallbacks"], kLayers * kExperts);
  ASSERT_EQ(coverage["fallbacks"].size(), static_cast<size_t>(kLayers * kExperts));
  std::set<std::pair<int, int>> listed;
  for (const auto& f : coverage["fallbacks"]) {
    EXPECT_EQ(f["stage"], "q");
    EXPECT_LT(f["tokens"].get<int64_t>(), 100000);
    listed.insert({f["layer"].get<int>(), f["expert"].get<int>()});
  }
  EXPECT_EQ(listed.size(), static_cast<size_t>(kLayers * kExperts));
  const std::string& md = files->at("report.md");
  EXPECT_NE(md.find("8 had fewer than min_tokens and were quantized by round-to-nearest"),
            std::string::npos) << md;
  EXPECT_NE(md.find("| stage | layer | expert | tokens |"), std::string::npos) << md;
  EXPECT_NE(md.find("](expert_tokens.svg)"), std::string::npos);
}

TEST_F(ReportFilesTest, GptqJobWithoutAllocationAndAnAllocationJobWithoutEvaluation) {
  const std::string quant = RunJob(
      "quant", "  - {id: stats, kind: calibrate}\n"
               "  - {id: q, kind: gptq, needs: [stats], with: {bits: 3, attn_bits: 4}}\n"
               "  - {id: out, kind: export, needs: [q], with: {format: gptq}}\n"
               "  - {id: eval, kind: evaluate, needs: [out], with: {max_windows: 2}}\n");
  ASSERT_FALSE(quant.empty());
  auto files = BuildReportFiles(*client_, quant);
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_NO_FATAL_FAILURE(ExpectQuantFiles(quant, *files));
  ASSERT_NO_FATAL_FAILURE(ExpectUsageCells(quant, files->at("expert_usage.svg")));
  ASSERT_NO_FATAL_FAILURE(ExpectErrorCells(quant, files->at("gptq_error.svg")));
  ASSERT_NO_FATAL_FAILURE(
      ExpectCoverage(quant, nlohmann::json::parse(files->at("report.json"))["coverage"], *files));

  // Perplexity against size: the original and this job, this one highlighted.
  const std::string& scatter = files->at("ppl_vs_size.svg");
  EXPECT_NE(scatter.find("<title>original: "), std::string::npos);
  EXPECT_NE(scatter.find("fill=\"#c0392b\"><title>quant: "), std::string::npos);

  // A job without gptq and without evaluate.
  const std::string alloc = RunJob(
      "alloc", "  - {id: stats, kind: calibrate}\n"
               "  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3]}}\n"
               "  - {id: bits, kind: allocate_bits, needs: [stats, loss], "
               "with: {bits: [2, 3], average_bits: 2.5}}\n");
  ASSERT_FALSE(alloc.empty());
  files = BuildReportFiles(*client_, alloc);
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_NO_FATAL_FAILURE(ExpectAllocFiles(*files));
  ASSERT_NO_FATAL_FAILURE(ExpectBitCells(alloc, files->at("bit_allocation.svg")));
  ASSERT_NO_FATAL_FAILURE(ExpectWrittenFiles(alloc, *files));
}

}  // namespace
}  // namespace moec::client
