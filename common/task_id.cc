#include "common/task_id.h"

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace moec {

std::string TaskId::ToString() const {
  return layer < 0 ? absl::StrCat(job, "/", stage) : absl::StrCat(job, "/", stage, "/L", layer);
}

absl::StatusOr<TaskId> TaskId::Parse(absl::string_view id) {
  const std::vector<absl::string_view> parts = absl::StrSplit(id, '/');
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "task id '", id, "' is not <job>/<stage> or <job>/<stage>/L<layer>"));
  };
  if (parts.size() < 2 || parts.size() > 3 || parts[0].empty() || parts[1].empty()) return bad();
  TaskId t{std::string(parts[0]), std::string(parts[1]), -1};
  if (parts.size() == 3) {
    if (parts[2].size() < 2 || parts[2][0] != 'L' || !absl::SimpleAtoi(parts[2].substr(1), &t.layer) ||
        t.layer < 0 || absl::StrCat("L", t.layer) != parts[2]) {
      return bad();
    }
  }
  return t;
}

absl::string_view TaskId::JobOf(absl::string_view id) { return id.substr(0, id.find('/')); }

absl::StatusOr<FactorKey> FactorKey::Parse(absl::string_view key) {
  const size_t slash = key.find('/');
  if (slash == absl::string_view::npos || slash == 0 || slash + 1 == key.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("factor key '", key, "' is not <fingerprint>/<name>"));
  }
  return FactorKey{std::string(key.substr(0, slash)), std::string(key.substr(slash + 1))};
}

}  // namespace moec
