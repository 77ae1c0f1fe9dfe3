#include "common/cli_util.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace moec {

std::vector<char*> NormalizeDashedFlags(int argc, char** argv, std::vector<std::string>* storage) {
  storage->clear();
  storage->reserve(argc);
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (i > 0 && a.size() > 2 && a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      for (size_t k = 2; k < end; ++k) {
        if (a[k] == '-') a[k] = '_';
      }
    }
    storage->push_back(std::move(a));
  }
  std::vector<char*> out;
  for (auto& s : *storage) out.push_back(s.data());
  return out;
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(what, " ", path, ": no such file"));
  }
  if (std::filesystem::file_size(path, ec) > (1u << 20)) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " ", path, " is over 1 MiB"));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  std::string v(absl::StripAsciiWhitespace(s.str()));
  if (v.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is empty"));
  return v;
}

}  // namespace moec
