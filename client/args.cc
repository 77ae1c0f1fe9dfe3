#include "client/args.h"

#include "absl/strings/str_cat.h"

namespace moec::client {

std::string Args::Get(const std::string& flag, const std::string& def) const {
  auto it = values.find(flag);
  return it == values.end() || it->second.empty() ? def : it->second.back();
}

const std::vector<std::string>& Args::All(const std::string& flag) const {
  static const std::vector<std::string> kNone;
  auto it = values.find(flag);
  return it == values.end() ? kNone : it->second;
}

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv, const std::string& command,
                               const std::set<std::string>& value_flags,
                               const std::set<std::string>& bool_flags) {
  Args out;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() < 3 || a.rfind("--", 0) != 0) {
      out.positional.push_back(a);
      continue;
    }
    std::string name = a.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (bool_flags.count(name)) {
      if (has_value) return absl::InvalidArgumentError(absl::StrCat("moec ", command, ": --", name, " takes no value"));
      out.switches.insert(name);
    } else if (value_flags.count(name)) {
      if (!has_value) {
        if (i + 1 >= argv.size()) {
          return absl::InvalidArgumentError(absl::StrCat("moec ", command, ": --", name, " needs a value"));
        }
        value = argv[++i];
      }
      out.values[name].push_back(value);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("moec ", command, ": unknown flag --", name, " (see moec ", command, " --help)"));
    }
  }
  return out;
}

}  // namespace moec::client
