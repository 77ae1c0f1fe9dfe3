#include "common/recipe/overrides.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace moec::recipe {
namespace {

// Makes `found` the stage of `stages` (a sequence) whose id is `id`, the last one if several;
// false when there is none.
bool FindStage(YAML::Node stages, const std::string& id, YAML::Node& found) {
  bool have = false;
  for (auto e : stages) {
    if (e.IsMap() && e["id"] && e["id"].IsScalar() && e["id"].Scalar() == id) {
      found.reset(e);
      have = true;
    }
  }
  return have;
}

}  // namespace

absl::Status ApplyOverride(YAML::Node root, const std::string& source, const std::string& ov) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": --set '", ov, "': ", what));
  };
  size_t eq = ov.find('=');
  if (eq == std::string::npos || eq == 0) return bad("expected key.path=value");
  std::vector<std::string> path = absl::StrSplit(ov.substr(0, eq), '.');
  YAML::Node value;
  try {
    value = YAML::Load(ov.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    return bad(absl::StrCat("value is not valid YAML: ", e.msg));
  }
  YAML::Node cur;
  cur.reset(root);
  for (size_t i = 0; i < path.size(); ++i) {
    const std::string& seg = path[i];
    if (seg.empty()) return bad("empty path segment");
    const bool last = i + 1 == path.size();
    if (cur.IsSequence()) {
      YAML::Node found;  // note: a default Node is a defined null, hence the flag
      if (!FindStage(cur, seg, found)) return bad(absl::StrCat("no stage with id '", seg, "'"));
      if (last) return bad("cannot replace a whole stage");
      cur.reset(found);
      continue;
    }
    if (cur.IsDefined() && !cur.IsMap() && !cur.IsNull()) {
      return bad(absl::StrCat("'", seg, "' is inside a scalar"));
    }
    if (last) {
      cur[seg] = value;
    } else {
      if (!cur[seg]) cur[seg] = YAML::Node(YAML::NodeType::Map);  // e.g. a stage without `with`
      YAML::Node next = cur[seg];
      cur.reset(next);
    }
  }
  return absl::OkStatus();
}

}  // namespace moec::recipe
