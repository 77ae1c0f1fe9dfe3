#include "proto/event_kind.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"

namespace moec {

std::string EventKindName(v1::EventKind kind) {
  if (kind == v1::EVENT_KIND_UNSPECIFIED || !v1::EventKind_IsValid(kind)) return "unspecified";
  absl::string_view name = v1::EventKind_Name(kind);
  absl::ConsumePrefix(&name, "EVENT_");
  return absl::AsciiStrToLower(name);
}

v1::EventKind EventKindFromName(absl::string_view name) {
  v1::EventKind kind = v1::EVENT_KIND_UNSPECIFIED;
  if (!v1::EventKind_Parse(absl::StrCat("EVENT_", absl::AsciiStrToUpper(name)), &kind)) {
    return v1::EVENT_KIND_UNSPECIFIED;
  }
  return kind;
}

v1::EventKind KindOf(const v1::JobEvent& event) {
  if (event.kind() != v1::EVENT_KIND_UNSPECIFIED) return event.kind();
  return EventKindFromName(event.legacy_kind());
}

}  // namespace moec
