#include "common/device.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moec {

absl::StatusOr<ComputeDevice> ComputeDevice::Parse(absl::string_view text) {
  if (text == "cpu") return Cpu();
  int n = -1;
  if (absl::StartsWith(text, "cuda:") && absl::SimpleAtoi(text.substr(5), &n) && n >= 0 &&
      n < 1024) {
    return Cuda(n);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device must be cpu or cuda:N (N a GPU ordinal), not '", text, "'"));
}

std::string ComputeDevice::ToString() const {
  return cuda ? absl::StrCat("cuda:", index) : std::string("cpu");
}

}  // namespace moec
