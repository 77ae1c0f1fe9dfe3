#include "stages/stage.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moec::stages {

absl::StatusOr<std::unique_ptr<Stage>> StageRegistry::Create(const std::string& kind) const {
  auto it = factories_.find(kind);
  if (it == factories_.end()) {
    return absl::UnimplementedError(absl::StrCat("stage kind '", kind,
                                                 "' is not implemented by this worker (has: ",
                                                 absl::StrJoin(Kinds(), ", "), ")"));
  }
  return it->second();
}

std::vector<std::string> StageRegistry::Kinds() const {
  std::vector<std::string> kinds;
  for (const auto& [k, f] : factories_) kinds.push_back(k);
  return kinds;
}


}  // namespace moec::stages
