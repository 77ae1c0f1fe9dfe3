#include "storage/safetensors_writer.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moec::storage {
namespace {

// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
void AppendJsonString(absl::string_view s, std::string* out) {
  out->push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\b': out->append("\\b"); break;
      case '\f': out->append("\\f"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

}  // namespace

std::vector<TensorSpec> HuggingFaceOrder(std::vector<TensorSpec> tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorSpec& a, const TensorSpec& b) {
    if (a.dtype != b.dtype) return a.dtype > b.dtype;
    return a.name < b.name;
  });
  return tensors;
}

absl::StatusOr<std::string> SerializeSafetensorsHeader(
    const std::vector<TensorSpec>& ordered, const std::map<std::string, std::string>& metadata) {
  std::string json = "{";
  bool first = true;
  if (!metadata.empty()) {
    json.append("\"__metadata__\":{");
    bool first_meta = true;
    for (const auto& [k, v] : metadata) {
      if (!first_meta) json.push_back(',');
      first_meta = false;
      AppendJsonString(k, &json);
      json.push_back(':');
      AppendJsonString(v, &json);
    }
    json.push_back('}');
    first = false;
  }
  std::set<absl::string_view> names;
  uint64_t offset = 0;
  for (const TensorSpec& t : ordered) {
    if (t.name.empty() || t.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat("invalid tensor name '", t.name, "'"));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
    absl::StatusOr<uint64_t> bytes = TensorByteSize(t.dtype, t.shape);
    if (!bytes.ok()) return Annotate(bytes.status(), absl::StrCat("tensor '", t.name, "'"));
    if (!first) json.push_back(',');
    first = false;
    AppendJsonString(t.name, &json);
    absl::StrAppend(&json, ":{\"dtype\":\"", DTypeName(t.dtype), "\",\"shape\":[");
    for (size_t i = 0; i < t.shape.size(); ++i) {
      absl::StrAppend(&json, i ? "," : "", t.shape[i]);
    }
    absl::StrAppend(&json, "],\"data_offsets\":[", offset, ",", offset + *bytes, "]}");
    offset += *bytes;
  }
  json.push_back('}');
  json.resize((json.size() + 7) / 8 * 8, ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out.append(json);
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<TensorSpec> tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> order = HuggingFaceOrder(std::move(tensors));
  MOEC_ASSIGN_OR_RETURN(std::string header, SerializeSafetensorsHeader(order, metadata));
  std::vector<uint64_t> sizes;
  for (const TensorSpec& t : order) sizes.push_back(*TensorByteSize(t.dtype, t.shape));
  MOEC_ASSIGN_OR_RETURN(auto file, WritableFile::Create(TempPathFor(path)));
  auto writer = std::unique_ptr<SafetensorsWriter>(
      new SafetensorsWriter(path, std::move(order), std::move(sizes), std::move(file)));
  MOEC_RETURN_IF_ERROR(writer->file_->Append(header));
  MOEC_RETURN_IF_ERROR(writer->AdvancePastEmpty());
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (file_ != nullptr) {
    std::string tmp = file_->path();
    file_->Close().IgnoreError();  // abandoned: the temp file is removed below
    ::unlink(tmp.c_str());
  }
}

absl::Status SafetensorsWriter::AdvancePastEmpty() {
  while (current_ < order_.size() && written_in_current_ == sizes_[current_]) {
    ++current_;
    written_in_current_ = 0;
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Write(absl::string_view name, absl::string_view bytes) {
  if (file_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("write to finished file ", path_));
  }
  if (current_ >= order_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": tensor '", name, "' written after all tensors are complete"));
  }
  if (name != order_[current_].name) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": expected bytes of tensor '",
                                                      order_[current_].name, "', got '", name,
                                                      "'"));
  }
  if (bytes.size() > sizes_[current_] - written_in_current_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": tensor '", name, "' has ", sizes_[current_], " bytes; write of ",
                     bytes.size(), " at ", written_in_current_, " runs past it"));
  }
  MOEC_RETURN_IF_ERROR(file_->Append(bytes));
  written_in_current_ += bytes.size();
  return AdvancePastEmpty();
}

absl::Status SafetensorsWriter::Finish() {
  if (file_ == nullptr) return absl::FailedPreconditionError(absl::StrCat("finished twice: ", path_));
  if (current_ < order_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": tensor '", order_[current_].name, "' has ", written_in_current_,
                     " of ", sizes_[current_], " bytes"));
  }
  std::string tmp = file_->path();
  MOEC_RETURN_IF_ERROR(file_->Sync());
  MOEC_RETURN_IF_ERROR(file_->Close());
  file_.reset();
  absl::Status s = RenameDurably(tmp, path_);
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

absl::StatusOr<std::unique_ptr<ShardedSafetensorsWriter>> ShardedSafetensorsWriter::Create(
    const std::string& dir, std::vector<TensorSpec> tensors,
    const std::map<std::string, std::string>& metadata, const ShardingOptions& options) {
  if (options.max_shard_bytes == 0) return absl::InvalidArgumentError("max_shard_bytes is 0");
  auto w = std::unique_ptr<ShardedSafetensorsWriter>(new ShardedSafetensorsWriter());
  w->dir_ = dir;
  w->metadata_ = metadata;
  w->stem_ = options.stem;
  // huggingface_hub's split: a tensor larger than the limit gets its own shard; otherwise a new
  // shard starts when the tensor would push the current one over the limit.
  std::vector<TensorSpec> current;
  uint64_t current_bytes = 0;
  for (TensorSpec& t : tensors) {
    absl::StatusOr<uint64_t> bytes = TensorByteSize(t.dtype, t.shape);
    if (!bytes.ok()) return Annotate(bytes.status(), absl::StrCat("tensor '", t.name, "'"));
    w->total_bytes_ += *bytes;
    if (*bytes > options.max_shard_bytes) {
      w->shards_.push_back({std::move(t)});
      continue;
    }
    if (!current.empty() && current_bytes + *bytes > options.max_shard_bytes) {
      w->shards_.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current_bytes += *bytes;
    current.push_back(std::move(t));
  }
  if (!current.empty() || w->shards_.empty()) w->shards_.push_back(std::move(current));
  size_t n = w->shards_.size();
  for (size_t i = 0; i < n; ++i) {
    w->shards_[i] = HuggingFaceOrder(std::move(w->shards_[i]));
    w->shard_files_.push_back(n == 1 ? absl::StrCat(options.stem, ".safetensors")
                                     : absl::StrFormat("%s-%05d-of-%05d.safetensors",
                                                       options.stem, i + 1, n));
    for (const TensorSpec& t : w->shards_[i]) {
      w->order_.push_back(t);
      w->shard_of_[t.name] = i;
    }
  }
  std::set<absl::string_view> names;
  for (const TensorSpec& t : w->order_) {
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
  }
  MOEC_RETURN_IF_ERROR(w->OpenShard(0));
  return w;
}

ShardedSafetensorsWriter::~ShardedSafetensorsWriter() = default;

absl::Status ShardedSafetensorsWriter::OpenShard(size_t i) {
  shard_ = i;
  std::string path = (std::filesystem::path(dir_) / shard_files_[i]).string();
  MOEC_ASSIGN_OR_RETURN(writer_, SafetensorsWriter::Create(path, shards_[i], metadata_));
  return absl::OkStatus();
}

absl::Status ShardedSafetensorsWriter::Write(absl::string_view name, absl::string_view bytes) {
  if (writer_ == nullptr) return absl::FailedPreconditionError("write after Finish");
  auto it = shard_of_.find(name);
  // Moving to a later shard publishes the current one, which must then be complete.
  while (it != shard_of_.end() && shard_ < it->second) {
    MOEC_RETURN_IF_ERROR(writer_->Finish());
    MOEC_RETURN_IF_ERROR(OpenShard(shard_ + 1));
  }
  return writer_->Write(name, bytes);
}

absl::Status ShardedSafetensorsWriter::Finish() {
  if (writer_ == nullptr) return absl::FailedPreconditionError("finished twice");
  MOEC_RETURN_IF_ERROR(writer_->Finish());
  while (shard_ + 1 < shards_.size()) {
    MOEC_RETURN_IF_ERROR(OpenShard(shard_ + 1));
    MOEC_RETURN_IF_ERROR(writer_->Finish());
  }
  writer_.reset();
  if (shards_.size() == 1) return absl::OkStatus();
  nlohmann::json index;
  index["metadata"]["total_size"] = total_bytes_;
  index["weight_map"] = nlohmann::json::object();
  for (size_t i = 0; i < shards_.size(); ++i) {
    for (const TensorSpec& t : shards_[i]) index["weight_map"][t.name] = shard_files_[i];
  }
  std::string text = index.dump(2, ' ', /*ensure_ascii=*/true) + "\n";
  return WriteFileAtomically(
      (std::filesystem::path(dir_) / absl::StrCat(stem_, ".safetensors.index.json")).string(),
      text);
}

}  // namespace moec::storage
