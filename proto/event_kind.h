// Names of job event kinds (moec/v1/job.proto EventKind) as the CLI prints them and as events
// stored before the enum existed spell them: "task_done" for EVENT_TASK_DONE.
#ifndef MOEC_PROTO_EVENT_KIND_H_
#define MOEC_PROTO_EVENT_KIND_H_

#include <string>

#include "absl/strings/string_view.h"
#include "moec/v1/job.pb.h"

namespace moec {

// "task_done"; "unspecified" for EVENT_KIND_UNSPECIFIED and unknown values.
std::string EventKindName(v1::EventKind kind);
// The kind named `name`, or EVENT_KIND_UNSPECIFIED.
v1::EventKind EventKindFromName(absl::string_view name);
// The kind of a stored event (from legacy_kind for events stored before the enum).
v1::EventKind KindOf(const v1::JobEvent& event);

}  // namespace moec

#endif  // MOEC_PROTO_EVENT_KIND_H_
