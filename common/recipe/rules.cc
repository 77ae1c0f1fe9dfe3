#include "common/recipe/rules.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/recipe/stage_catalog.h"
#include "common/status_macros.h"

namespace moec::recipe {
namespace {

absl::Status Refuse(const Recipe& r, const StageSpec& s, absl::string_view what) {
  const std::string where = s.line > 0 ? absl::StrCat(r.source, ":", s.line) : r.source;
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": stage '", s.id, "' (", s.kind, "): ", what));
}

std::string Quoted(const std::vector<const StageSpec*>& stages) {
  std::vector<std::string> ids;
  for (const StageSpec* s : stages) ids.push_back(absl::StrCat("'", s->id, "' (", s->kind, ")"));
  return absl::StrJoin(ids, " and ");
}

// Rule 1.
absl::Status CheckNeeds(const Recipe& r, const StageSpec& s) {
  for (const NeedSpec& need : s.spec().needs) {
    if (!need.when.Holds(s.params)) continue;
    auto of_kind = [&](const StageKindSpec& k) {
      return std::find(need.kinds.begin(), need.kinds.end(), k.kind) != need.kinds.end();
    };
    if (!r.NeedsWhere(s, of_kind).empty()) continue;
    std::vector<std::string> candidates;
    for (const StageSpec& other : r.stages) {
      if (&other != &s && of_kind(other.spec())) candidates.push_back(other.id);
    }
    std::string condition = need.when.Describe();
    return Refuse(r, s, absl::StrCat(
        "needs a stage of kind ", absl::StrJoin(need.kinds, " or "), " among its needs (",
        condition.empty() ? "" : absl::StrCat(condition, ", "), "for ", need.why, "); ",
        candidates.empty()
            ? absl::StrCat("add one to the recipe and to its needs")
            : absl::StrCat("add '", absl::StrJoin(candidates, "' or '"), "' to its needs")));
  }
  return absl::OkStatus();
}

// Rule 2.
absl::Status CheckData(const Recipe& r, const StageSpec& s) {
  if (s.spec().reads_calibration && !r.calibration) {
    return Refuse(r, s, "reads calibration windows; the recipe has no 'calibration'");
  }
  if (s.spec().reads_evaluation && !r.evaluation) {
    return Refuse(r, s, "reads evaluation text; the recipe has no 'evaluation'");
  }
  return absl::OkStatus();
}

// Rules 3 and 4, over the whole recipe.
absl::Status CheckViewsAndOutput(const Recipe& r) {
  const std::map<std::string, std::string> views = ResolveModelViews(r.stages);
  const StageSpec* restructure = nullptr;
  const StageSpec* writer = nullptr;
  for (const StageSpec& s : r.stages) {
    if (s.spec().restructure) {
      if (restructure != nullptr) {
        return Refuse(r, s, absl::StrCat("a recipe has at most one restructure stage (already '",
                                         restructure->id, "')"));
      }
      restructure = &s;
    }
    if (s.spec().is_structural() && views.count(s.id) > 0) {
      const std::string& v = views.at(s.id);
      return Refuse(r, s, absl::StrCat("comes after restructure stage '", v,
                                       "': structural stages decide on the recipe's model; put "
                                       "it before '", v, "'"));
    }
    if (s.spec().writes_output) {
      if (writer != nullptr) {
        return Refuse(r, s, absl::StrCat("stage '", writer->id, "' already writes the job's "
                                         "output; a recipe has one stage that writes it"));
      }
      writer = &s;
    }
  }
  return absl::OkStatus();
}

// Rule 5.
absl::Status CheckEdits(const Recipe& r, const StageSpec& s,
                        const std::map<std::string, std::string>& views) {
  const StageKindSpec& k = s.spec();
  if (!k.writes_output && !k.restructure) return absl::OkStatus();
  std::vector<const StageSpec*> experts = r.NeedsWhere(
      s, [](const StageKindSpec& n) { return n.structural == StructuralEdit::kExperts; });
  if (experts.size() > 1) {
    return Refuse(r, s, absl::StrCat("stages ", Quoted(experts),
                                     " both choose experts; keep one of them"));
  }
  std::vector<const StageSpec*> structural =
      r.NeedsWhere(s, [](const StageKindSpec& n) { return n.is_structural(); });
  if (!k.writes_output || structural.empty()) return absl::OkStatus();
  if (auto v = views.find(s.id); v != views.end()) {
    return Refuse(r, s, absl::StrCat("needs structural stages directly (", Quoted(structural),
                                     ") and through restructure stage '", v->second,
                                     "', which already applies them; remove them from its "
                                     "needs"));
  }
  std::vector<const StageSpec*> quantizers =
      r.NeedsWhere(s, [](const StageKindSpec& n) { return n.quantizes(); });
  if (!quantizers.empty()) {
    return Refuse(r, s, absl::StrCat(
        "the quantizing stage '", quantizers.front()->id, "' runs on the unedited model; to "
        "quantize the model the structural stages decided, put a restructure stage between "
        "them (structural stages -> restructure -> ", quantizers.front()->id,
        " -> export; docs/recipes.md)"));
  }
  return absl::OkStatus();
}

// Rule 6.
absl::Status CheckWidths(const Recipe& r, const StageSpec& s) {
  const StageKindSpec& k = s.spec();
  if (k.formats.empty()) return absl::OkStatus();
  const FormatSpec* format = k.FindFormat(s.Str("format"));
  if (format == nullptr || !format->quantized) return absl::OkStatus();
  for (const StageSpec* q : r.NeedsWhere(s, [](const StageKindSpec& n) { return n.quantizes(); })) {
    for (int w : PossibleWidths(r, *q)) {
      if (std::find(format->widths.begin(), format->widths.end(), w) != format->widths.end()) {
        continue;
      }
      const std::vector<const StageSpec*> alloc =
          r.NeedsWhere(*q, [](const StageKindSpec& n) { return n.allocates(); });
      std::vector<std::string> holders;
      for (const FormatSpec& f : k.formats) {
        if (f.quantized && std::find(f.widths.begin(), f.widths.end(), w) != f.widths.end()) {
          holders.push_back(f.name);
        }
      }
      return Refuse(r, s, absl::StrCat(
          "format ", format->name, " holds widths ", absl::StrJoin(format->widths, ", "),
          " only, but stage '", q->id, "' (", q->kind, ") may produce ", w, "-bit weights",
          alloc.empty() ? "" : absl::StrCat(" (candidate widths of '", alloc.front()->id, "')"),
          "; export as ", absl::StrJoin(holders, " or "), ", or drop width ", w));
    }
  }
  return absl::OkStatus();
}

// Rule 7.
absl::Status CheckAllocationWidths(const Recipe& r, const StageSpec& s) {
  const StageKindSpec& k = s.spec();
  if (!k.allocates()) return absl::OkStatus();
  const std::vector<int64_t> candidates = s.IntList(k.allocation_widths_param);
  for (const StageSpec* m :
       r.NeedsWhere(s, [](const StageKindSpec& n) { return !n.measured_widths_param.empty(); })) {
    const std::vector<int64_t> measured = m->IntList(m->spec().measured_widths_param);
    if (measured == candidates) continue;
    return Refuse(r, s, absl::StrCat(
        "its candidate widths '", k.allocation_widths_param, "' [",
        absl::StrJoin(candidates, ", "), "] differ from the widths [",
        absl::StrJoin(measured, ", "), "] stage '", m->id, "' (", m->kind,
        ") measures; give both the same list"));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int> PossibleWidths(const Recipe& r, const StageSpec& q) {
  const StageKindSpec& k = q.spec();
  std::set<int> widths;
  std::vector<const StageSpec*> alloc =
      r.NeedsWhere(q, [](const StageKindSpec& n) { return n.allocates(); });
  for (const std::string& p : k.width_params) {
    if (p == k.expert_width_param && !alloc.empty()) {
      for (int64_t w : alloc.front()->IntList(alloc.front()->spec().allocation_widths_param)) {
        widths.insert(static_cast<int>(w));
      }
      if (p != k.shared_width_param) continue;  // rtn's `bits` is also its shared-expert width
    }
    const int64_t w = q.Int(p);
    if (w > 0) widths.insert(static_cast<int>(w));
  }
  return {widths.begin(), widths.end()};
}

absl::Status CheckStageRules(const Recipe& recipe) {
  MOEC_RETURN_IF_ERROR(CheckViewsAndOutput(recipe));
  const std::map<std::string, std::string> views = ResolveModelViews(recipe.stages);
  for (const StageSpec& s : recipe.stages) {
    MOEC_RETURN_IF_ERROR(CheckNeeds(recipe, s));
    MOEC_RETURN_IF_ERROR(CheckData(recipe, s));
    MOEC_RETURN_IF_ERROR(CheckEdits(recipe, s, views));
    MOEC_RETURN_IF_ERROR(CheckWidths(recipe, s));
    MOEC_RETURN_IF_ERROR(CheckAllocationWidths(recipe, s));
  }
  return absl::OkStatus();
}

}  // namespace moec::recipe
