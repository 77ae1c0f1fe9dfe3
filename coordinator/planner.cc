#include "coordinator/planner.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/fingerprint.h"
#include "common/recipe/stage_catalog.h"
#include "common/status_macros.h"
#include "common/task_id.h"
#include "nlohmann/json.hpp"

namespace moec::coordinator {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadSmallFile(const fs::path& p, uintmax_t max_bytes) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return absl::NotFoundError(absl::StrCat(p.string(), ": no such file"));
  if (fs::file_size(p, ec) > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(p.string(), " is larger than ", max_bytes, " bytes"));
  }
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Adds name, size, mtime and a content digest of `p` (the first `head` bytes, or all of it).
absl::Status AddFile(const fs::path& p, uintmax_t head, Sha256* h) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(p, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(p.string(), ": ", ec.message()));
  const auto mtime = fs::last_write_time(p, ec).time_since_epoch().count();
  h->AddField(p.filename().string());
  h->AddU64(size);
  h->AddU64(static_cast<uint64_t>(mtime));
  std::ifstream in(p, std::ios::binary);
  std::vector<char> buf(1 << 20);
  uintmax_t left = std::min(size, head);
  Sha256 content;
  while (left > 0 && in) {
    in.read(buf.data(), static_cast<std::streamsize>(std::min<uintmax_t>(left, buf.size())));
    std::streamsize got = in.gcount();
    if (got <= 0) break;
    content.Update(absl::string_view(buf.data(), static_cast<size_t>(got)));
    left -= static_cast<uintmax_t>(got);
  }
  h->AddField(content.FinishHex());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelShape> ReadModelShape(const std::string& model_dir) {
  fs::path p = fs::path(model_dir) / "config.json";
  MOEC_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(p, 4 << 20));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(p.string(), ": not a JSON object"));
  }
  auto it = j.find("num_hidden_layers");
  if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() <= 0 ||
      it->get<int64_t>() > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat(p.string(), ": num_hidden_layers must be a positive integer"));
  }
  return ModelShape{static_cast<int>(it->get<int64_t>())};
}

absl::StatusOr<std::string> FingerprintJobInputs(const recipe::Recipe& recipe) {
  Sha256 h;
  std::vector<fs::path> model_files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(recipe.model, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && (name == "config.json" || absl::EndsWith(name, ".safetensors") ||
                                absl::EndsWith(name, ".safetensors.index.json"))) {
      model_files.push_back(e.path());
    }
  }
  if (ec) return absl::NotFoundError(absl::StrCat("model ", recipe.model, ": ", ec.message()));
  std::sort(model_files.begin(), model_files.end());
  h.AddField("model");
  for (const auto& f : model_files) MOEC_RETURN_IF_ERROR(AddFile(f, 1 << 20, &h));
  for (const auto* data : {&recipe.calibration, &recipe.evaluation}) {
    h.AddField(data->has_value() ? "data" : "none");
    if (data->has_value()) MOEC_RETURN_IF_ERROR(AddFile((*data)->path, UINTMAX_MAX, &h));
  }
  return h.FinishHex();
}

std::string JobFingerprint(const recipe::Recipe& recipe, absl::string_view inputs_fingerprint) {
  Sha256 h;
  h.AddField(recipe.CanonicalJson());
  h.AddField(inputs_fingerprint);
  return h.FinishHex();
}

namespace {

// Job settings a task's outputs depend on besides its parameters and inputs (the files' contents
// are in the inputs fingerprint): every stage may read the calibration windows, so their sampling
// is part of every fingerprint; stages reading evaluation text get its settings; stages that
// write or read the job's output directory get its path; a fixed thread count (Recipe::threads)
// is part of every fingerprint. The gang size is not part of it: outputs do not depend on it
// (docs/data_plane.md).
struct JobSettings {
  std::string calibration, evaluation, output;
  int threads = 0;
};

JobSettings SettingsOf(const recipe::Recipe& recipe) {
  auto data = [](const std::optional<recipe::DataSpec>& d) {
    if (!d) return nlohmann::json();
    return nlohmann::json{{"samples", d->samples},   {"seqlen", d->seqlen},
                          {"seed", d->seed},         {"sampling", d->sampling},
                          {"chunk_tokens", d->chunk_tokens}};
  };
  return {data(recipe.calibration).dump(), data(recipe.evaluation).dump(), recipe.output,
          recipe.threads};
}

std::string TaskFingerprint(const recipe::StageSpec& stage, const v1::TaskRecord& t,
                            const JobSettings& settings, absl::string_view inputs_fingerprint,
                            const std::vector<const v1::TaskRecord*>& deps) {
  const recipe::StageKindSpec& kind = stage.spec();
  Sha256 fp;
  fp.AddField(stage.kind);
  fp.AddField(t.params_json());
  fp.AddField(kCodeVersion);
  fp.AddU64(static_cast<uint64_t>(kind.version));
  fp.AddField(inputs_fingerprint);
  fp.AddField(settings.calibration);
  if (kind.reads_evaluation) fp.AddField(settings.evaluation);
  if (kind.writes_output || kind.reads_output) fp.AddField(settings.output);
  fp.AddU64(static_cast<uint64_t>(t.layer() + 1));
  // Only when fixed: tasks of jobs that leave it to the workers keep their fingerprints.
  if (settings.threads > 0) fp.AddField(absl::StrCat("threads=", settings.threads));
  for (const v1::TaskRecord* d : deps) fp.AddField(d->fingerprint());
  return fp.FinishHex();
}

// The task of `stage` at `layer` (-1: the stage is global), `order`-th of the job, without its
// dependencies, fingerprint and state.
v1::TaskRecord NewTask(absl::string_view job_id, const recipe::StageSpec& stage, int layer,
                       int group_size, int64_t order) {
  v1::TaskRecord t;
  t.set_task_id(TaskId{std::string(job_id), stage.id, layer}.ToString());
  t.set_job_id(std::string(job_id));
  t.set_stage_id(stage.id);
  t.set_kind(stage.kind);
  t.set_layer(layer);
  t.set_params_json(stage.params.dump());
  t.set_group_size(group_size);
  t.set_order(order);
  return t;
}

// The sorted, distinct task ids the `l`-th of a stage's `layers` tasks waits for: layer l of a
// chained stage waits for its layer l-1; every task waits for the same layer of a per-layer need,
// else for the need's last task (which implies all of it). `stage_tasks`: per stage planned so
// far, its task ids by layer.
std::vector<std::string> TaskDeps(const recipe::StageSpec& stage, bool per_layer, bool chained,
                                  const std::vector<std::string>& needs, int l, int layers,
                                  std::map<std::string, std::vector<std::string>>* stage_tasks) {
  std::vector<std::string> deps;
  if (chained && l > 0) deps.push_back((*stage_tasks)[stage.id][l - 1]);
  for (const std::string& need : needs) {
    const std::vector<std::string>& prior = (*stage_tasks)[need];
    deps.push_back(per_layer && prior.size() == static_cast<size_t>(layers) ? prior[l]
                                                                            : prior.back());
  }
  std::sort(deps.begin(), deps.end());
  deps.erase(std::unique(deps.begin(), deps.end()), deps.end());
  return deps;
}

}  // namespace

absl::StatusOr<std::vector<v1::TaskRecord>> PlanJob(const recipe::Recipe& recipe,
                                                    const ModelShape& shape,
                                                    absl::string_view job_id,
                                                    absl::string_view inputs_fingerprint) {
  std::vector<v1::TaskRecord> tasks;
  std::map<std::string, size_t> index;  // task id -> position
  const JobSettings settings = SettingsOf(recipe);
  // Per stage: its task ids by layer (global stages: one entry for layer -1).
  std::map<std::string, std::vector<std::string>> stage_tasks;
  // The restructure stage each stage runs after (its task becomes a dependency, so that the
  // stage's tasks read the model view).
  const std::map<std::string, std::string> views = recipe::ResolveModelViews(recipe.stages);
  for (const recipe::StageSpec& stage : recipe.stages) {
    const bool per_layer = stage.spec().per_layer();
    if (per_layer && shape.num_layers <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage '", stage.id, "' runs per layer but the model has no layers"));
    }
    const bool chained = per_layer && stage.spec().chained.Holds(stage.params);
    std::vector<std::string> needs = stage.needs;
    if (auto v = views.find(stage.id); v != views.end()) needs.push_back(v->second);
    const int layers = per_layer ? shape.num_layers : 1;
    for (int l = 0; l < layers; ++l) {
      v1::TaskRecord t = NewTask(job_id, stage, per_layer ? l : -1, per_layer ? recipe.workers : 1,
                                 static_cast<int64_t>(tasks.size()));
      const std::vector<std::string> deps =
          TaskDeps(stage, per_layer, chained, needs, l, layers, &stage_tasks);
      std::vector<const v1::TaskRecord*> dep_tasks;
      for (const std::string& d : deps) {
        dep_tasks.push_back(&tasks[index[d]]);
        t.add_deps(d);
      }
      t.set_fingerprint(TaskFingerprint(stage, t, settings, inputs_fingerprint, dep_tasks));
      t.set_state(deps.empty() ? v1::TASK_READY : v1::TASK_BLOCKED);
      index[t.task_id()] = tasks.size();
      stage_tasks[stage.id].push_back(t.task_id());
      tasks.push_back(std::move(t));
    }
  }
  AssignInputs(&tasks);
  return tasks;
}

void AssignInputs(std::vector<v1::TaskRecord>* tasks) {
  std::map<std::string, const v1::TaskRecord*> by_id;
  std::map<std::string, std::vector<const v1::TaskRecord*>> by_stage;  // in layer order
  for (const v1::TaskRecord& t : *tasks) {
    by_id[t.task_id()] = &t;
    by_stage[t.stage_id()].push_back(&t);
  }
  std::vector<std::vector<std::string>> inputs(tasks->size());
  for (size_t i = 0; i < tasks->size(); ++i) {
    const v1::TaskRecord& t = (*tasks)[i];
    std::set<std::string> stages;
    for (const std::string& d : t.deps()) {
      if (auto it = by_id.find(d); it != by_id.end()) stages.insert(it->second->stage_id());
    }
    std::set<std::string> ids;
    for (const std::string& s : stages) {
      for (const v1::TaskRecord* other : by_stage[s]) {
        const bool both_per_layer = t.layer() >= 0 && other->layer() >= 0;
        if (!both_per_layer || other->layer() == t.layer() || other->layer() == t.layer() - 1) {
          ids.insert(other->task_id());
        }
      }
    }
    inputs[i].assign(ids.begin(), ids.end());
  }
  for (size_t i = 0; i < tasks->size(); ++i) {
    (*tasks)[i].clear_inputs();
    for (std::string& id : inputs[i]) (*tasks)[i].add_inputs(std::move(id));
  }
}

}  // namespace moec::coordinator
