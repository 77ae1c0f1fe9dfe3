#include "model/weights.h"

#include <utility>

#include "absl/container/flat_hash_map.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "storage/file_util.h"
#include "storage/safetensors_writer.h"

namespace moec::model {

absl::StatusOr<ComputeDtype> ParseComputeDtype(absl::string_view name) {
  if (name == "fp32" || name == "float32" || name == "f32") return ComputeDtype::kF32;
  if (name == "bf16" || name == "bfloat16") return ComputeDtype::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown compute dtype '", name, "'; supported: fp32, bf16"));
}

absl::string_view ComputeDtypeName(ComputeDtype dtype) {
  return dtype == ComputeDtype::kBF16 ? "bf16" : "fp32";
}

at::ScalarType ToScalarType(ComputeDtype dtype) {
  return dtype == ComputeDtype::kBF16 ? at::kBFloat16 : at::kFloat;
}

absl::StatusOr<at::Tensor> TensorFromView(const storage::TensorView& view, at::ScalarType dtype) {
  at::ScalarType stored;
  switch (view.dtype) {
    case storage::DType::kF32:
      stored = at::kFloat;
      break;
    case storage::DType::kF16:
      stored = at::kHalf;
      break;
    case storage::DType::kBF16:
      stored = at::kBFloat16;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", view.name, "' has dtype ", storage::DTypeName(view.dtype),
                       "; the forward reads F32, F16 and BF16 weights"));
  }
  std::vector<int64_t> shape(view.shape.begin(), view.shape.end());
  // from_blob does not copy; the mapping is read-only, so never write through `source`.
  at::Tensor source = at::from_blob(const_cast<uint8_t*>(view.data), shape,
                                    at::TensorOptions().dtype(stored));
  at::Tensor owned = at::empty(shape, at::TensorOptions().dtype(dtype));
  owned.copy_(source);
  return owned;
}

absl::StatusOr<std::unique_ptr<WeightLoader>> WeightLoader::Open(const std::string& model_dir,
                                                                 at::ScalarType dtype) {
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<storage::SafetensorsCheckpoint> checkpoint,
                        storage::SafetensorsCheckpoint::Open(model_dir));
  return std::unique_ptr<WeightLoader>(new WeightLoader(std::move(checkpoint), dtype));
}

absl::StatusOr<at::Tensor> WeightLoader::Load(const TensorSpec& spec) const {
  MOEC_ASSIGN_OR_RETURN(storage::TensorView view, checkpoint_->Get(spec.name));
  if (!std::equal(view.shape.begin(), view.shape.end(), spec.shape.begin(), spec.shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", checkpoint_->path(), ": tensor '", spec.name, "' has shape [",
        absl::StrJoin(view.shape, ", "), "], config.json implies [",
        absl::StrJoin(spec.shape, ", "), "]"));
  }
  absl::StatusOr<at::Tensor> tensor = TensorFromView(view, dtype_);
  storage::ReleaseMappedPages(view.data, view.size);
  if (!tensor.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", checkpoint_->path(), ": ", tensor.status().message()));
  }
  return tensor;
}

absl::Status WriteCheckpointTensors(const std::string& dir, const std::vector<NamedTensor>& tensors,
                                    storage::DType dtype, uint64_t max_shard_bytes) {
  at::ScalarType target;
  switch (dtype) {
    case storage::DType::kF32:
      target = at::kFloat;
      break;
    case storage::DType::kF16:
      target = at::kHalf;
      break;
    case storage::DType::kBF16:
      target = at::kBFloat16;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoints are written in F32, F16 or BF16, not ", storage::DTypeName(dtype)));
  }
  std::vector<storage::TensorSpec> specs;
  absl::flat_hash_map<std::string, const at::Tensor*> by_name;
  for (const NamedTensor& t : tensors) {
    if (!by_name.emplace(t.name, &t.tensor).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' given twice"));
    }
    specs.push_back({t.name, dtype, t.tensor.sizes().vec()});
  }
  storage::ShardingOptions sharding;
  sharding.max_shard_bytes = max_shard_bytes;
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<storage::ShardedSafetensorsWriter> writer,
                        storage::ShardedSafetensorsWriter::Create(dir, specs, {}, sharding));
  for (const storage::TensorSpec& spec : writer->order()) {
    at::Tensor data = by_name.at(spec.name)->detach().to(at::kCPU).to(target).contiguous();
    MOEC_RETURN_IF_ERROR(writer->Write(
        spec.name, absl::string_view(static_cast<const char*>(data.data_ptr()), data.nbytes())));
  }
  return writer->Finish();
}

}  // namespace moec::model
