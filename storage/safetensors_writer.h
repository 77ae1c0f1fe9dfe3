// Streaming, atomic safetensors writing, byte-compatible with the Hugging Face library:
// tensors sorted by dtype (descending, safetensors' Dtype order) then name, compact JSON header
// with `__metadata__` first, header padded with spaces to a multiple of 8, data in header order.
// Tensor bytes are streamed in (never all in memory); files appear only when complete
// (temp file + fsync + rename + directory fsync).
#ifndef MOEC_STORAGE_SAFETENSORS_WRITER_H_
#define MOEC_STORAGE_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/dtype.h"
#include "storage/file_util.h"

namespace moec::storage {

// Declares a tensor before its bytes are written.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

// Returns `tensors` in the order the Hugging Face writer lays them out.
std::vector<TensorSpec> HuggingFaceOrder(std::vector<TensorSpec> tensors);

// Returns the file prefix (8-byte length + padded JSON) for `ordered` tensors laid out
// back to back in the given order. Errors: InvalidArgument for an empty or duplicate name, the
// reserved name `__metadata__`, or a shape whose size overflows.
absl::StatusOr<std::string> SerializeSafetensorsHeader(
    const std::vector<TensorSpec>& ordered, const std::map<std::string, std::string>& metadata);

// Writes one .safetensors file. Used from one thread only.
//
// Usage: Create with every tensor's spec; then Write each tensor's bytes (in one or several calls)
// in the order of order(); then Finish. Destroying an unfinished writer removes its temp file and
// leaves any existing file at `path` untouched.
class SafetensorsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<TensorSpec> tensors,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Tensors in the order their bytes must be written.
  const std::vector<TensorSpec>& order() const { return order_; }

  // Appends bytes of tensor `name`. Errors: FailedPrecondition when `name` is not the tensor
  // being written (naming the expected one), or when the bytes run past the tensor's size.
  absl::Status Write(absl::string_view name, absl::string_view bytes);

  // Checks that every tensor is complete, syncs and publishes the file.
  absl::Status Finish();

  const std::string& path() const { return path_; }

 private:
  SafetensorsWriter(std::string path, std::vector<TensorSpec> order, std::vector<uint64_t> sizes,
                    std::unique_ptr<WritableFile> file)
      : path_(std::move(path)), order_(std::move(order)), sizes_(std::move(sizes)),
        file_(std::move(file)) {}
  absl::Status AdvancePastEmpty();

  const std::string path_;
  const std::vector<TensorSpec> order_;
  const std::vector<uint64_t> sizes_;  // bytes per tensor, parallel to order_
  std::unique_ptr<WritableFile> file_;  // the temp file; null once finished
  size_t current_ = 0;                  // index in order_ being written
  uint64_t written_in_current_ = 0;
};

struct ShardingOptions {
  // Largest shard, in bytes of tensor data (a single larger tensor gets a shard of its own).
  uint64_t max_shard_bytes = 5ull << 30;
  // File name stem: "<stem>.safetensors" or "<stem>-00001-of-00003.safetensors".
  std::string stem = "model";
};

// Writes a Hugging Face checkpoint into a directory: one "<stem>.safetensors" when everything fits
// one shard, else numbered shards plus "<stem>.safetensors.index.json" (indent 2, sorted keys,
// as transformers writes it). Tensors are assigned to shards in the given order the way
// huggingface_hub splits a state dict; within a shard they follow the Hugging Face order.
// Used from one thread only; shards are published one by one and the index last.
class ShardedSafetensorsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<ShardedSafetensorsWriter>> Create(
      const std::string& dir, std::vector<TensorSpec> tensors,
      const std::map<std::string, std::string>& metadata = {},
      const ShardingOptions& options = {});
  ~ShardedSafetensorsWriter();

  // All tensors in the order their bytes must be written (shard by shard).
  const std::vector<TensorSpec>& order() const { return order_; }
  size_t num_shards() const { return shard_files_.size(); }
  const std::vector<std::string>& shard_files() const { return shard_files_; }

  // As SafetensorsWriter::Write; moves on to the next shard when one is complete.
  absl::Status Write(absl::string_view name, absl::string_view bytes);
  absl::Status Finish();

 private:
  ShardedSafetensorsWriter() = default;
  absl::Status OpenShard(size_t i);

  std::string dir_;
  std::string stem_;
  absl::flat_hash_map<std::string, size_t> shard_of_;  // tensor name -> shard index
  std::map<std::string, std::string> metadata_;
  std::vector<std::vector<TensorSpec>> shards_;
  std::vector<std::string> shard_files_;
  std::vector<TensorSpec> order_;
  uint64_t total_bytes_ = 0;
  size_t shard_ = 0;
  std::unique_ptr<SafetensorsWriter> writer_;
};

}  // namespace moec::storage

#endif  // MOEC_STORAGE_SAFETENSORS_WRITER_H_
