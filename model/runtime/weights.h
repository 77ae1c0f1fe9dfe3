// Loading Hugging Face checkpoint tensors into libtorch tensors for the layer-streaming forward.
// This header includes ATen: include it only from files that compute with tensors (model runtime,
// stages), never from headers that the coordinator or the CLI's other files include.
#ifndef MOEC_MODEL_RUNTIME_WEIGHTS_H_
#define MOEC_MODEL_RUNTIME_WEIGHTS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/device.h"
#include "model/config/config.h"
#include "model/config/tensor_names.h"
#include "storage/safetensors_reader.h"
#include "storage/safetensors_writer.h"

namespace moec::model {

// The floating-point type activations and weights are computed in.
enum class ComputeDtype { kF32, kBF16 };

// "fp32" / "float32" / "f32" and "bf16" / "bfloat16". InvalidArgument naming the accepted ones.
absl::StatusOr<ComputeDtype> ParseComputeDtype(absl::string_view name);
absl::string_view ComputeDtypeName(ComputeDtype dtype);  // "fp32" or "bf16"
at::ScalarType ToScalarType(ComputeDtype dtype);

// Copies a safetensors tensor (F32, F16 or BF16) into a new, owned, contiguous CPU tensor of
// `dtype`. InvalidArgument for any other stored dtype, naming the tensor.
absl::StatusOr<at::Tensor> TensorFromView(const storage::TensorView& view, at::ScalarType dtype);

// The libtorch device of `device`.
inline at::Device AtDevice(const ComputeDevice& device) {
  return device.cuda ? at::Device(at::kCUDA, static_cast<at::DeviceIndex>(device.index))
                     : at::Device(at::kCPU);
}

// `t` on `device`: itself on the CPU; on a GPU a copy through pinned host memory, queued on the
// current stream (the host buffer is released when the copy has run). ResourceExhausted when
// the device is out of memory, naming `what`, its size and what the device has free.
absl::StatusOr<at::Tensor> ToDevice(const at::Tensor& t, at::Device device,
                                    absl::string_view what = "a tensor");

// The first line of a c10::OutOfMemoryError's message (it names the device's capacity and what is
// free) as ResourceExhausted about `what` of `bytes` bytes.
absl::Status DeviceOutOfMemory(absl::string_view what, int64_t bytes, const std::exception& e);

// Reads tensors of one checkpoint directory. Every Load copies the tensor into owned memory
// (converted to the compute dtype) and then drops the mapped source pages from the resident set,
// so that only the tensors a caller holds count against memory (layer streaming). Thread-safe.
class WeightLoader {
 public:
  // Opens the safetensors checkpoint in `model_dir`. `quantization` (config.json's
  // quantization_config) enables dequantization of GPTQ tensors on load.
  // Errors as SafetensorsCheckpoint::Open.
  static absl::StatusOr<std::unique_ptr<WeightLoader>> Open(
      const std::string& model_dir, at::ScalarType dtype,
      std::optional<QuantizationConfig> quantization = std::nullopt);

  // Loads `spec.name` and checks that its shape is `spec.shape`. In a GPTQ checkpoint a linear
  // weight "X.weight" stored as X.qweight / X.qzeros / X.scales [/ X.g_idx] is dequantized:
  // W[o, i] = scales[g(i), o] * (q[i, o] - z[g(i), o]) with g(i) = g_idx[i] (or i / group_size),
  // z = stored zero + 1 for checkpoint_format "gptq"; the bit width (1-8) comes from the shape of
  // qweight, so mixed-width checkpoints load.
  // Errors: NotFound (missing tensor, naming it and the checkpoint), InvalidArgument (shape or
  // dtype mismatch, naming the tensor, the expected and the stored shape).
  absl::StatusOr<at::Tensor> Load(const TensorSpec& spec) const;

  bool Contains(absl::string_view name) const { return checkpoint_->Contains(name); }
  at::ScalarType dtype() const { return dtype_; }
  const storage::SafetensorsCheckpoint& checkpoint() const { return *checkpoint_; }

 private:
  WeightLoader(std::unique_ptr<storage::SafetensorsCheckpoint> checkpoint, at::ScalarType dtype,
               std::optional<QuantizationConfig> quantization)
      : checkpoint_(std::move(checkpoint)), dtype_(dtype), quantization_(std::move(quantization)) {}

  absl::StatusOr<at::Tensor> LoadGptq(const TensorSpec& spec, const std::string& prefix) const;
  absl::StatusOr<at::Tensor> LoadHqq(const TensorSpec& spec, const std::string& prefix) const;

  const std::unique_ptr<storage::SafetensorsCheckpoint> checkpoint_;
  const at::ScalarType dtype_;
  const std::optional<QuantizationConfig> quantization_;
};

// A named tensor to be written into a checkpoint.
struct NamedTensor {
  std::string name;
  at::Tensor tensor;
  // Stored dtype; nullopt: the checkpoint's float dtype (int32 tensors are always stored I32).
  std::optional<storage::DType> dtype;
};

// Writes `tensors` as the safetensors files of a Hugging Face checkpoint in `dir` (which must
// exist), converting each float tensor to its own dtype or `dtype` (F32, F16 or BF16) and int32
// tensors to I32, streaming them one by one through ShardedSafetensorsWriter. Errors: InvalidArgument (other dtypes, duplicate names), the
// writer's errors.
absl::Status WriteCheckpointTensors(const std::string& dir, const std::vector<NamedTensor>& tensors,
                                    storage::DType dtype = storage::DType::kF32,
                                    uint64_t max_shard_bytes = 5ull << 30);

// Streaming variant: `specs` declare every tensor (name, stored dtype F32/F16/BF16/I32, shape);
// `produce` is called once per tensor, in the order the writer lays them out, and its result is
// converted to the declared dtype and written before the next one is produced, so only one
// tensor is in memory at a time. Errors: those of `produce` (naming nothing more), a produced
// shape that differs from the spec (InvalidArgument), the writer's errors.
absl::Status WriteCheckpointStreaming(
    const std::string& dir, const std::vector<storage::TensorSpec>& specs,
    const std::function<absl::StatusOr<at::Tensor>(const storage::TensorSpec&)>& produce,
    uint64_t max_shard_bytes = 5ull << 30);

}  // namespace moec::model

#endif  // MOEC_MODEL_RUNTIME_WEIGHTS_H_
