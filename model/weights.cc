#include "model/weights.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "storage/file_util.h"

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

}  // namespace moec::model
