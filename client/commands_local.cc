// The local commands of `moec`, which need no coordinator: plan, inspect, eval and
// make-tiny-model (docs/cli.md).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "client/inspect.h"
#include "client/progress_bar.h"
#include "plan/job_plan.h"
#include "common/recipe/recipe.h"
#include "nlohmann/json.hpp"
#include "tools/tiny_model.h"

namespace moec::client::cli {
namespace {

// 1234567 -> "1,234,567".
std::string Grouped(int64_t n) {
  std::string digits = absl::StrCat(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  for (; v >= 1024 && u < 4; ++u) v /= 1024;
  return u == 0 ? absl::StrCat(b, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

nlohmann::ordered_json InspectionJson(const ModelInspection& m) {
  const model::ParameterCounts& p = m.parameters;
  nlohmann::ordered_json overrides = nlohmann::ordered_json::array();
  for (const LayerOverride& o : m.layer_overrides) {
    nlohmann::ordered_json j = {{"layer", o.layer}};
    if (o.experts) j["experts"] = *o.experts;
    if (o.kept_experts) j["kept_experts"] = *o.kept_experts;
    if (o.moe_dropped) j["moe_dropped"] = true;
    if (o.skip_beta) j["skip_beta"] = *o.skip_beta;
    if (o.odp_beta) j["odp_beta"] = *o.odp_beta;
    overrides.push_back(std::move(j));
  }
  nlohmann::ordered_json j = {
      {"model_dir", m.model_dir}, {"model_type", m.model_type},
      {"architectures", m.architectures}, {"num_layers", m.num_layers},
      {"moe_layers", m.num_moe_layers}, {"dense_layers", m.num_dense_layers},
      {"dropped_moe_layers", m.num_dropped_moe_layers}, {"num_experts", m.num_experts},
      {"top_k", m.top_k}, {"routed_experts_per_layer", m.routed_experts_per_layer},
      {"shared_experts", m.shared_experts},
      {"shared_expert_intermediate_size", m.shared_expert_intermediate_size},
      {"hidden_size", m.hidden_size}, {"intermediate_size", m.intermediate_size},
      {"moe_intermediate_size", m.moe_intermediate_size},
      {"num_attention_heads", m.num_attention_heads},
      {"num_key_value_heads", m.num_key_value_heads}, {"head_dim", m.head_dim},
      {"vocab_size", m.vocab_size}, {"tie_word_embeddings", m.tie_word_embeddings},
      {"torch_dtype", m.torch_dtype},
      {"parameters", {{"total", p.total}, {"activated", p.activated}, {"embedding", p.embedding},
                      {"lm_head", p.lm_head}, {"norms", p.norms}, {"attention", p.attention},
                      {"routers", p.routers}, {"routed_experts", p.routed_experts},
                      {"shared_experts", p.shared_experts}, {"dense_mlp", p.dense_mlp}}},
      {"has_weights", m.has_weights}, {"tensors_by_dtype", m.tensors_by_dtype},
      {"num_tensors", m.num_tensors}, {"tensor_bytes", m.tensor_bytes},
      {"num_shards", m.num_shards}, {"size_on_disk", m.size_on_disk},
      {"missing_tensors", m.missing_tensors}, {"unexpected_tensors", m.unexpected_tensors},
      {"mismatched_shapes", m.mismatched_shapes}, {"has_moec_overrides", m.has_moec_overrides},
      {"layer_overrides", overrides}};
  if (m.odp) {
    j["odp"] = {{"enabled_layers", m.odp->enabled_layers}, {"tau_low", m.odp->tau_low},
                {"tau_high", m.odp->tau_high}, {"positional_prior", m.odp->positional_prior}};
  }
  return j;
}

// The architecture lines of `moec inspect`: model, layers, experts, sizes, parameters.
void PrintArchitecture(const ModelInspection& m) {
  std::printf("model          %s\n", m.model_dir.c_str());
  std::printf("architecture   %s%s\n", m.model_type.c_str(),
              m.architectures.empty() ? "" : absl::StrCat(" (", absl::StrJoin(m.architectures, ", "), ")").c_str());
  std::printf("layers         %d (%d MoE, %d dense%s)\n", m.num_layers, m.num_moe_layers, m.num_dense_layers,
              m.num_dropped_moe_layers ? absl::StrCat(", ", m.num_dropped_moe_layers, " MoE dropped").c_str() : "");
  std::printf("experts        %d routed per MoE layer (width %lld), top-%d\n", m.num_experts,
              static_cast<long long>(m.moe_intermediate_size), m.top_k);
  std::printf("shared experts %d%s\n", m.shared_experts,
              m.shared_experts ? absl::StrCat(" (width ", m.shared_expert_intermediate_size, ")").c_str() : "");
  std::printf("hidden size    %lld%s\n", static_cast<long long>(m.hidden_size),
              m.num_dense_layers > 0
                  ? absl::StrCat(" (dense MLP ", m.intermediate_size, ")").c_str()
                  : "");
  std::printf("heads          %d (kv %d, head_dim %lld)\n", m.num_attention_heads, m.num_key_value_heads,
              static_cast<long long>(m.head_dim));
  std::printf("vocab          %lld%s\n", static_cast<long long>(m.vocab_size), m.tie_word_embeddings ? " (tied)" : "");
  std::printf("parameters     %s total, %s activated per token\n", Grouped(m.parameters.total).c_str(),
              Grouped(m.parameters.activated).c_str());
}

// The checkpoint lines of `moec inspect`: dtypes, shards, tensors that do not match the config.
void PrintWeights(const ModelInspection& m) {
  if (!m.has_weights) {
    std::printf("weights        none (no model.safetensors or index)\n");
  } else {
    std::vector<std::string> dtypes;
    for (const auto& [d, n] : m.tensors_by_dtype) dtypes.push_back(absl::StrCat(d, " (", n, " tensors)"));
    std::printf("dtypes         %s; config torch_dtype %s\n", absl::StrJoin(dtypes, ", ").c_str(),
                m.torch_dtype.empty() ? "-" : m.torch_dtype.c_str());
    std::printf("shards         %d file%s, %s on disk (%llu bytes; tensor data %s)\n", m.num_shards,
                m.num_shards == 1 ? "" : "s",
                HumanBytes(m.size_on_disk).c_str(), static_cast<unsigned long long>(m.size_on_disk),
                HumanBytes(m.tensor_bytes).c_str());
    for (const auto& [what, names] : {std::pair{"missing from the checkpoint", &m.missing_tensors},
                                      std::pair{"not expected by config.json", &m.unexpected_tensors},
                                      std::pair{"with a wrong shape", &m.mismatched_shapes}}) {
      if (names->empty()) continue;
      std::printf("warning        %zu tensors %s, e.g. %s\n", names->size(), what, names->front().c_str());
    }
  }
}

// The moec overrides of config.json (per layer, ODP), when it has any.
void PrintOverrides(const ModelInspection& m) {
  if (!m.has_moec_overrides) return;
  std::printf("moec overrides%s\n", m.layer_overrides.empty() && !m.odp ? " (none per layer)" : ":");
  for (const LayerOverride& o : m.layer_overrides) {
    std::vector<std::string> parts;
    if (o.experts) parts.push_back(absl::StrCat("experts ", *o.experts));
    if (o.kept_experts) parts.push_back(absl::StrCat("kept [", absl::StrJoin(*o.kept_experts, ","), "]"));
    if (o.moe_dropped) parts.push_back("MoE dropped");
    if (o.skip_beta) parts.push_back(absl::StrCat("skip_beta ", *o.skip_beta));
    if (o.odp_beta) parts.push_back(absl::StrCat("odp_beta ", *o.odp_beta));
    std::printf("  layer %-4d   %s\n", o.layer, absl::StrJoin(parts, ", ").c_str());
  }
  if (m.odp) std::printf("  odp          tau_low %g, tau_high %g\n", m.odp->tau_low, m.odp->tau_high);
}

void PrintInspection(const ModelInspection& m) {
  PrintArchitecture(m);
  PrintWeights(m);
  PrintOverrides(m);
}

// Parses --flag as an integer in [lo, hi] into *out when given.
absl::Status IntFlag(const Args& args, const std::string& flag, int64_t lo, int64_t hi, int64_t* out) {
  const std::string v = args.Get(flag);
  if (v.empty()) return absl::OkStatus();
  if (!absl::SimpleAtoi(v, out) || *out < lo || *out > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("make-tiny-model: --", flag, " must be an integer in [", lo, ", ", hi, "], got '", v, "'"));
  }
  return absl::OkStatus();
}

absl::Status ParseTinyModelFlags(const Args& args, TinyModelFlags* f) {
  for (absl::Status s : {IntFlag(args, "layers", 1, 4096, &f->layers),
                         IntFlag(args, "experts", 1, 4096, &f->experts),
                         IntFlag(args, "steps", 1, 1000000, &f->steps),
                         IntFlag(args, "hidden", 1, 65536, &f->hidden),
                         IntFlag(args, "heads", 1, 1024, &f->heads),
                         IntFlag(args, "kv-heads", 1, 1024, &f->kv_heads),
                         IntFlag(args, "expert-width", 1, 262144, &f->expert_width),
                         IntFlag(args, "top-k", 1, 4096, &f->top_k)}) {
    if (!s.ok()) return s;
  }
  if (const std::string v = args.Get("seed"); !v.empty() && !absl::SimpleAtoi(v, &f->seed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "make-tiny-model: --seed must be an unsigned 64-bit integer, got '", v, "'"));
  }
  return absl::OkStatus();
}

// make-tiny-model without --trained: a random checkpoint in `dir`.
int MakeRandomTinyModel(const Args& args, const std::string& dir, const TinyModelFlags& f) {
  tools::TinyModelOptions o;
  o.model_type = args.Get("arch");
  o.dtype = args.Get("dtype", o.dtype);
  if (f.layers > 0) o.num_layers = static_cast<int>(f.layers);
  if (f.experts > 0) o.experts = static_cast<int>(f.experts);
  o.top_k = f.top_k > 0 ? static_cast<int>(f.top_k) : std::min(o.top_k, o.experts);
  for (auto [flag, out] : {std::pair<int64_t, int*>{f.hidden, &o.hidden}, {f.heads, &o.heads},
                           {f.kv_heads, &o.kv_heads}, {f.expert_width, &o.moe_intermediate}}) {
    if (flag > 0) *out = static_cast<int>(flag);
  }
  if (f.expert_width > 0) o.intermediate = static_cast<int>(f.expert_width);  // dense layers too
  o.seed = f.seed;
  if (absl::Status s = o.Validate(); !s.ok()) return Error(kUsage, s);
  if (absl::Status s = tools::WriteTinyModel(o, dir); !s.ok()) {
    return Error(absl::IsFailedPrecondition(s) ? kUsage : kJobFailed, s);
  }
  std::printf("wrote a random %s model (%d layers, hidden %d, %d experts of width %d, top-%d, %s, "
              "seed %llu) to %s\n",
              o.model_type.c_str(), o.num_layers, o.hidden, o.experts, o.moe_intermediate, o.top_k,
              o.dtype.c_str(), static_cast<unsigned long long>(o.seed), dir.c_str());
  return kOk;
}

}  // namespace

int CmdPlan(const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError("moec plan RECIPE"));
  std::vector<std::string> overrides = args.All("set");
  if (!args.Get("workers").empty()) overrides.push_back("workers=" + args.Get("workers"));
  absl::StatusOr<recipe::Recipe> r = recipe::LoadRecipeFile(args.positional[0], overrides);
  if (!r.ok()) return Error(kUsage, r.status());
  absl::StatusOr<plan::JobPlan> plan = plan::PlanRecipe(*r);
  if (!plan.ok()) return Error(kUsage, plan.status());
  if (args.Has("json")) {
    std::printf("%s\n", plan::PlanJson(*plan).dump().c_str());
  } else {
    std::fputs(plan::PlanText(*plan).c_str(), stdout);
  }
  return kOk;
}

int CmdInspect(const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError("moec inspect MODEL"));
  absl::StatusOr<ModelInspection> m = InspectModel(args.positional[0]);
  if (!m.ok()) return Error(kUsage, m.status());
  if (args.Has("json")) {
    std::printf("%s\n", InspectionJson(*m).dump().c_str());
  } else {
    PrintInspection(*m);
  }
  return kOk;
}

int CmdMakeTinyModel(const Args& args) {
  if (args.positional.size() != 1 || args.Get("arch").empty()) {
    return Error(kUsage, absl::InvalidArgumentError(
                             "usage: moec make-tiny-model DIR --arch ARCH [--layers N] [--experts E] "
                             "[--hidden H] [--heads N] [--kv-heads N] [--expert-width F] [--top-k K] "
                             "[--dtype F32|BF16|F16] [--seed S] [--trained [--steps N] [--corpus FILE]...]"));
  }
  const std::string& dir = args.positional[0];
  TinyModelFlags flags;
  if (absl::Status s = ParseTinyModelFlags(args, &flags); !s.ok()) return Error(kUsage, s);
  if (args.Has("trained")) return MakeTrainedTinyModel(args, dir, flags);
  return MakeRandomTinyModel(args, dir, flags);
}

}  // namespace moec::client::cli
