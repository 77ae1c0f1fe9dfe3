// The file extensions dataset files are read by (model/data/datasets.h): a file's format follows
// from its extension, so the recipe validator (common/recipe) refuses other names before any task
// runs, and the loader names the same list when it cannot read one.
#ifndef MOEC_COMMON_DATASET_FILES_H_
#define MOEC_COMMON_DATASET_FILES_H_

#include <algorithm>
#include <array>
#include <filesystem>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"

namespace moec {

inline constexpr std::array<absl::string_view, 4> kDatasetExtensions = {".jsonl", ".json", ".txt",
                                                                        ".raw"};
inline constexpr char kDatasetExtensionList[] = ".jsonl, .json, .txt, .raw";

// The extension of `path`, lower case (".jsonl"; "" when none).
inline std::string DatasetExtension(const std::string& path) {
  return absl::AsciiStrToLower(std::filesystem::path(path).extension().string());
}

inline bool HasDatasetExtension(const std::string& path) {
  const std::string ext = DatasetExtension(path);
  return std::find(kDatasetExtensions.begin(), kDatasetExtensions.end(), ext) !=
         kDatasetExtensions.end();
}

}  // namespace moec

#endif  // MOEC_COMMON_DATASET_FILES_H_
