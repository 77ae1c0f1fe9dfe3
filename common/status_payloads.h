// Structured facts a Status carries across modules (and, re-attached by the RPC layers, across
// processes), so that callers act on them without parsing messages.
#ifndef MOEC_COMMON_STATUS_PAYLOADS_H_
#define MOEC_COMMON_STATUS_PAYLOADS_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace moec {

// The factor key ("<fingerprint>/<name>") a DataLoss error found corrupt or incomplete. The
// coordinator re-runs the task that produced it (coordinator/corruption_recovery.h).
inline constexpr char kFactorKeyPayload[] = "type.moec.dev/factor_key";

// `s` with the factor key attached (an OK status stays OK).
absl::Status WithFactorKey(absl::Status s, absl::string_view key);
// The factor key attached to `s`, if any.
std::optional<std::string> FactorKeyOf(const absl::Status& s);

}  // namespace moec

#endif  // MOEC_COMMON_STATUS_PAYLOADS_H_
