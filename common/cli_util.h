// Helpers for the main() of moec binaries: dash-spelled flags, secret files.
#ifndef MOEC_COMMON_CLI_UTIL_H_
#define MOEC_COMMON_CLI_UTIL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moec {

// absl flags are identifiers; returns argv with "--data-dir=x" rewritten as "--data_dir=x" (the
// strings live in *storage, which must outlive the result).
std::vector<char*> NormalizeDashedFlags(int argc, char** argv, std::vector<std::string>* storage);

// Reads a small secret or PEM file, trimmed. Errors: NotFound, InvalidArgument when empty,
// ResourceExhausted over 1 MiB.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, const char* what);

}  // namespace moec

#endif  // MOEC_COMMON_CLI_UTIL_H_
