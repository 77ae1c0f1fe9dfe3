#include "storage/safetensors_reader.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moec::storage {
namespace fs = std::filesystem;

constexpr absl::string_view kSingleFile = "model.safetensors";
constexpr absl::string_view kIndexFile = "model.safetensors.index.json";

SafetensorsFile::SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, const SafetensorsReadOptions& options) {
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  absl::string_view all(reinterpret_cast<const char*>(file->data()), file->size());
  MOEC_ASSIGN_OR_RETURN(SafetensorsHeader header,
                        ParseSafetensorsFile(all, file->size(), path, options.max_header_bytes));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

TensorView SafetensorsFile::ViewOf(const SafetensorsTensorInfo& info) const {
  TensorView v;
  v.name = info.name;
  v.dtype = info.dtype;
  v.shape = info.shape;
  v.size = info.size();
  v.data = file_->data() == nullptr ? nullptr : file_->data() + header_.data_offset + info.begin;
  return v;
}

absl::StatusOr<TensorView> SafetensorsFile::Get(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not in ", path()));
  }
  return ViewOf(header_.tensors[it->second]);
}

absl::Status SafetensorsCheckpoint::AddShard(std::unique_ptr<SafetensorsFile> shard,
                                             bool index_all) {
  if (index_all) {
    for (const auto& t : shard->tensors()) where_[t.name] = shard.get();
  }
  shards_.push_back(std::move(shard));
  return absl::OkStatus();
}

namespace {

absl::Status BadIndex(const std::string& index, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("checkpoint index ", index, ": ", what));
}

// A shard name must be a plain file name inside the checkpoint directory.
absl::Status CheckShardName(const std::string& index, const std::string& name) {
  if (name.empty() || name == "." || name == ".." || absl::StrContains(name, '/') ||
      absl::StrContains(name, '\0')) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint index ", index, ": shard '", name, "' is not a file name in its directory"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& path, const SafetensorsReadOptions& options) {
  std::string file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::string index = (fs::path(path) / std::string(kIndexFile)).string();
    std::string single = (fs::path(path) / std::string(kSingleFile)).string();
    if (fs::exists(index, ec)) {
      file = index;
    } else if (fs::exists(single, ec)) {
      file = single;
    } else {
      return absl::NotFoundError(absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in ", path));
    }
  }
  auto ckpt = std::unique_ptr<SafetensorsCheckpoint>(new SafetensorsCheckpoint(path));
  if (!absl::EndsWith(file, ".json")) {
    MOEC_ASSIGN_OR_RETURN(auto shard, SafetensorsFile::Open(file, options));
    MOEC_RETURN_IF_ERROR(ckpt->AddShard(std::move(shard), /*index_all=*/true));
    return ckpt;
  }

  MOEC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file, options.max_index_bytes));
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return BadIndex(file, "not a JSON object");
  auto wm = doc.find("weight_map");
  if (wm == doc.end() || !wm->is_object()) return BadIndex(file, "missing object 'weight_map'");
  std::string dir = fs::path(file).parent_path().string();
  absl::flat_hash_map<std::string, const SafetensorsFile*> opened;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return BadIndex(file, absl::StrCat("weight_map entry '", it.key(), "' is not a string"));
    }
    const std::string& shard_name = it.value().get_ref<const std::string&>();
    MOEC_RETURN_IF_ERROR(CheckShardName(file, shard_name));
    auto found = opened.find(shard_name);
    if (found == opened.end()) {
      std::string shard_path = (fs::path(dir) / shard_name).string();
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> shard =
          SafetensorsFile::Open(shard_path, options);
      if (!shard.ok()) {
        return Annotate(shard.status(), absl::StrCat("checkpoint index ", file, " shard ",
                                                     shard_name));
      }
      found = opened.emplace(shard_name, shard->get()).first;
      MOEC_RETURN_IF_ERROR(ckpt->AddShard(*std::move(shard), /*index_all=*/false));
    }
    if (!found->second->Contains(it.key())) {
      return BadIndex(file, absl::StrCat("maps tensor '", it.key(), "' to ", shard_name,
                                         ", which does not contain it"));
    }
    ckpt->where_[it.key()] = found->second;
  }
  return ckpt;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(where_.size());
  for (const auto& [name, shard] : where_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<TensorView> SafetensorsCheckpoint::Get(absl::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not in checkpoint ", path_));
  }
  return it->second->Get(name);
}

uint64_t SafetensorsCheckpoint::total_tensor_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, shard] : where_) total += shard->Get(name)->size;
  return total;
}

}  // namespace moec::storage
