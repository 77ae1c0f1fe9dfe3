#include "common/status_payloads.h"

#include "absl/strings/cord.h"

namespace moec {

absl::Status WithFactorKey(absl::Status s, absl::string_view key) {
  if (!s.ok()) s.SetPayload(kFactorKeyPayload, absl::Cord(key));
  return s;
}

std::optional<std::string> FactorKeyOf(const absl::Status& s) {
  absl::optional<absl::Cord> p = s.GetPayload(kFactorKeyPayload);
  if (!p.has_value()) return std::nullopt;
  return std::string(*p);
}

}  // namespace moec
