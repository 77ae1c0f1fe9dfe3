// Zero-copy safetensors reading: single files (SafetensorsFile) and Hugging Face checkpoints,
// single-file or sharded through model.safetensors.index.json (SafetensorsCheckpoint).
// Tensor bytes are views into read-only mmaps; nothing is copied or loaded up front.
#ifndef MOEC_STORAGE_SAFETENSORS_READER_H_
#define MOEC_STORAGE_SAFETENSORS_READER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "storage/dtype.h"
#include "storage/file_util.h"
#include "storage/safetensors_format.h"

namespace moec::storage {

// A view of one tensor inside a mapped file. Valid while its SafetensorsFile lives.
struct TensorView {
  absl::string_view name;
  DType dtype = DType::kF32;
  absl::Span<const int64_t> shape;
  const uint8_t* data = nullptr;  // little-endian, dense row-major
  uint64_t size = 0;              // bytes
  absl::string_view bytes() const {
    return absl::string_view(reinterpret_cast<const char*>(data), size);
  }
};

struct SafetensorsReadOptions {
  // Largest accepted JSON header, in bytes (Hugging Face uses the same 100 MB cap).
  uint64_t max_header_bytes = kMaxSafetensorsHeaderBytes;
  // Largest accepted model.safetensors.index.json, in bytes.
  uint64_t max_index_bytes = 256ull << 20;
};

// One mapped .safetensors file. Immutable after Open; thread-safe.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors: NotFound/PermissionDenied from the file system; DataLoss
  // for any malformed header (see ParseSafetensorsFile), naming the file and tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path, const SafetensorsReadOptions& options = {});

  const std::string& path() const { return file_->path(); }
  // Tensors in data order.
  const std::vector<SafetensorsTensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  bool Contains(absl::string_view name) const { return index_.contains(name); }

  // Returns a view of tensor `name`. Errors: NotFound naming the tensor and file.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;

 private:
  SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header);
  TensorView ViewOf(const SafetensorsTensorInfo& info) const;

  const std::unique_ptr<MappedFile> file_;
  const SafetensorsHeader header_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> position in header_.tensors
};

// A Hugging Face checkpoint: a directory holding model.safetensors or a sharded
// model.safetensors.index.json, or one of those files named directly. Shards are opened (mapped
// and validated) at Open. Immutable after Open; thread-safe.
class SafetensorsCheckpoint {
 public:
  // Errors: NotFound when the path holds no checkpoint or the index names a missing shard;
  // InvalidArgument when the index names a shard outside the checkpoint directory; DataLoss for
  // a malformed index or shard, or an index entry whose shard lacks the tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(
      const std::string& path, const SafetensorsReadOptions& options = {});

  // Tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  size_t num_tensors() const { return where_.size(); }
  bool Contains(absl::string_view name) const { return where_.contains(name); }
  // Returns a view of `name`. Errors: NotFound naming the tensor and the checkpoint.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  // Shard files in index order (one entry for a single-file checkpoint).
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }
  // Sum of the byte sizes of all tensors.
  uint64_t total_tensor_bytes() const;
  const std::string& path() const { return path_; }

 private:
  explicit SafetensorsCheckpoint(std::string path) : path_(std::move(path)) {}
  absl::Status AddShard(std::unique_ptr<SafetensorsFile> shard, bool index_all);

  const std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  absl::flat_hash_map<std::string, const SafetensorsFile*> where_;
};

}  // namespace moec::storage

#endif  // MOEC_STORAGE_SAFETENSORS_READER_H_
