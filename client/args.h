// A small argument parser for `moec SUBCOMMAND [args]`: positionals, `--flag value`,
// `--flag=value`, repeatable flags, booleans; unknown flags are errors naming the subcommand.
#ifndef MOEC_CLIENT_ARGS_H_
#define MOEC_CLIENT_ARGS_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moec::client {

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> values;  // flag -> values, in order
  std::set<std::string> switches;                          // boolean flags given

  std::string Get(const std::string& flag, const std::string& def = "") const;
  const std::vector<std::string>& All(const std::string& flag) const;
  bool Has(const std::string& flag) const { return switches.count(flag) > 0; }
};

// `value_flags` take a value; `bool_flags` do not. Errors: InvalidArgument naming the flag.
absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv, const std::string& command,
                               const std::set<std::string>& value_flags,
                               const std::set<std::string>& bool_flags);

}  // namespace moec::client

#endif  // MOEC_CLIENT_ARGS_H_
