// Status propagation macros. Debian's Abseil (20220623) has no status macros, so moec defines
// MOEC_RETURN_IF_ERROR and MOEC_ASSIGN_OR_RETURN here, with the shape of the later absl ones.
#ifndef MOEC_COMMON_STATUS_MACROS_H_
#define MOEC_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define MOEC_RETURN_IF_ERROR(expr)                               \
  do {                                                           \
    ::absl::Status moec_status_ = (expr);                        \
    if (ABSL_PREDICT_FALSE(!moec_status_.ok())) return moec_status_; \
  } while (0)

#define MOEC_STATUS_CONCAT_INNER_(a, b) a##b
#define MOEC_STATUS_CONCAT_(a, b) MOEC_STATUS_CONCAT_INNER_(a, b)

// MOEC_ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>); on error returns
// its status, otherwise assigns the value to `lhs` (which may be a declaration: `auto x`).
#define MOEC_ASSIGN_OR_RETURN(lhs, expr) \
  MOEC_ASSIGN_OR_RETURN_IMPL_(MOEC_STATUS_CONCAT_(moec_statusor_, __LINE__), lhs, expr)

#define MOEC_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)          \
  auto statusor = (expr);                                         \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) return statusor.status(); \
  lhs = std::move(statusor).value()

namespace moec {

// Returns `status` with `prefix: ` prepended to its message (code and payloads kept); OK stays OK.
// Used where an error crosses a layer, to add ids: `file model.safetensors tensor w: ...`.
inline absl::Status Annotate(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  absl::Status out(status.code(), absl::StrCat(prefix, ": ", status.message()));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace moec

#endif  // MOEC_COMMON_STATUS_MACROS_H_
