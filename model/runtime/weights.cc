#include "model/runtime/weights.h"

#include <utility>

#include <c10/util/Exception.h>

#include "absl/container/flat_hash_map.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "kernels/hqq.h"
#include "kernels/kernels.h"
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

absl::Status DeviceOutOfMemory(absl::string_view what, int64_t bytes, const std::exception& e) {
  const std::string msg = e.what();
  return absl::ResourceExhaustedError(absl::StrCat(
      "out of device memory for ", what, " (", bytes, " bytes): ", msg.substr(0, msg.find('\n')),
      "; retry with smaller chunks (activation_budget, calibration windows) or a larger GPU"));
}

absl::StatusOr<at::Tensor> ToDevice(const at::Tensor& t, at::Device device,
                                    absl::string_view what) {
  if (device.is_cpu() || t.device() == device) return t;
  try {
    at::Tensor host = t.is_pinned() || !t.is_cpu() ? t : t.pin_memory();
    return host.to(device, /*non_blocking=*/true);
  } catch (const c10::OutOfMemoryError& e) {
    return DeviceOutOfMemory(what, static_cast<int64_t>(t.nbytes()), e);
  }
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

absl::StatusOr<std::unique_ptr<WeightLoader>> WeightLoader::Open(
    const std::string& model_dir, at::ScalarType dtype,
    std::optional<QuantizationConfig> quantization) {
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<storage::SafetensorsCheckpoint> checkpoint,
                        storage::SafetensorsCheckpoint::Open(model_dir));
  return std::unique_ptr<WeightLoader>(
      new WeightLoader(std::move(checkpoint), dtype, std::move(quantization)));
}

namespace {

// Builds the InvalidArgument errors about the tensors of one quantized module: `context`, which
// names the checkpoint and the module, followed by what is wrong.
struct ModuleError {
  std::string context;
  absl::Status operator()(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(context, what));
  }
};

// The shapes of a GPTQ module's tensors, once checked.
struct GptqShape {
  int64_t in;
  int64_t out;
  int bits;
  int64_t stored_groups;  // rows of scales and qzeros
  int64_t zero_words;     // words of qzeros per group
};

// The bit width of a GPTQ qweight with `words` words per column for `in` input features: the
// width quantization_config gives the module (`configured`: `bits`, or a `dynamic` override);
// when the shapes say otherwise (a checkpoint without overrides for its mixed widths), the one
// width the shapes allow.
absl::StatusOr<int> GptqBits(int configured, int64_t in, int64_t words, const ModuleError& bad) {
  int bits = configured;
  if (kernels::PackedWordsPerColumn(in, bits) != words) {
    bits = 0;
    for (int b = 1; b <= 8; ++b) {
      if (kernels::PackedWordsPerColumn(in, b) == words) {
        if (bits != 0) return bad("the bit width is ambiguous for so few input features");
        bits = b;
      }
    }
  }
  if (bits == 0) {
    return bad(absl::StrCat("qweight has ", words, " words per column, which fits no ",
                            "bit width from 1 to 8 for ", in, " input features"));
  }
  return bits;
}

// The group of every input column (int64 [in]): the checkpoint's g_idx when it has one, else
// consecutive groups of `group_size`.
absl::StatusOr<at::Tensor> GptqGroupIndex(const storage::SafetensorsCheckpoint& checkpoint,
                                          const std::string& prefix, int64_t in,
                                          int64_t group_size, int64_t stored_groups,
                                          const ModuleError& bad) {
  const int64_t groups = (in + group_size - 1) / group_size;
  at::Tensor group_of;
  if (checkpoint.Contains(prefix + "g_idx")) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView g_idx, checkpoint.Get(prefix + "g_idx"));
    if (g_idx.dtype != storage::DType::kI32 || g_idx.shape.size() != 1 || g_idx.shape[0] != in) {
      return bad("g_idx must be I32 [in_features]");
    }
    group_of = at::from_blob(const_cast<uint8_t*>(g_idx.data), {in}, at::kInt).to(at::kLong);
  } else {
    if (stored_groups != groups) {
      return bad(absl::StrCat("scales have ", stored_groups, " groups, group_size ", group_size,
                              " implies ", groups));
    }
    group_of = at::arange(in, at::kLong).div(group_size, "floor");
  }
  if (in > 0 && (group_of.min().item<int64_t>() < 0 ||
                 group_of.max().item<int64_t>() >= stored_groups)) {
    return bad("g_idx names a group outside the scales");
  }
  return group_of;
}

// The dequantized fp32 weights [in, out] of checked GPTQ tensors; `zero_plus_one` for
// checkpoint_format "gptq", which stores zero points minus one.
absl::StatusOr<at::Tensor> DequantizeGptq(const storage::TensorView& qweight,
                                          const storage::TensorView& qzeros,
                                          const storage::TensorView& scales_view,
                                          const at::Tensor& group_of, const GptqShape& shape,
                                          bool zero_plus_one) {
  const int64_t in = shape.in, out = shape.out, stored_groups = shape.stored_groups;
  const int bits = shape.bits;
  // Weights: [in, out] values, packed along the input axis.
  at::Tensor values = at::empty({in, out}, at::kByte);
  MOEC_RETURN_IF_ERROR(kernels::UnpackRows(kernels::Device::kCpu,
                                           reinterpret_cast<const uint32_t*>(qweight.data), in,
                                           out, bits, values.data_ptr<uint8_t>()));
  // Zero points: [groups, out] packed along the output axis, i.e. zeros^T packed along rows.
  at::Tensor zeros_t = at::from_blob(const_cast<uint8_t*>(qzeros.data),
                                     {stored_groups, shape.zero_words}, at::kInt)
                           .t()
                           .contiguous();
  at::Tensor zeros = at::empty({out, stored_groups}, at::kByte);
  MOEC_RETURN_IF_ERROR(kernels::UnpackRows(
      kernels::Device::kCpu, reinterpret_cast<const uint32_t*>(zeros_t.data_ptr<int32_t>()), out,
      stored_groups, bits, zeros.data_ptr<uint8_t>()));
  at::Tensor zero = zeros.t().to(at::kFloat);  // [groups, out]
  if (zero_plus_one) zero = zero + 1;
  MOEC_ASSIGN_OR_RETURN(at::Tensor scales, TensorFromView(scales_view, at::kFloat));
  return (values.to(at::kFloat) - zero.index_select(0, group_of)) *
         scales.index_select(0, group_of);
}

// HQQ's W_q must hold `bits`-bit codes of [rows, g] (I32 words or U8 bytes, as HQQ packs that
// width) for weights [out, in]; scale and zero must be [rows, 1].
absl::Status CheckHqqShapes(const storage::TensorView& wq, const storage::TensorView& scale,
                            const storage::TensorView& zero, int64_t out, int64_t in, int64_t g,
                            int32_t bits, const ModuleError& bad) {
  const int64_t rows = out * in / g;
  const storage::DType packed = kernels::HqqPacksToInt32(bits) ? storage::DType::kI32 : storage::DType::kU8;
  if (wq.dtype != packed || wq.shape.size() != 2 || wq.shape[0] != kernels::HqqPackedRows(rows, bits) ||
      wq.shape[1] != g) {
    return bad(absl::StrCat("W_q has shape [", absl::StrJoin(wq.shape, ", "), "] ",
                            storage::DTypeName(wq.dtype), "; ", bits, " bits of [", out, ", ", in,
                            "] in groups of ", g, " need [", kernels::HqqPackedRows(rows, bits),
                            ", ", g, "] ", storage::DTypeName(packed)));
  }
  for (const storage::TensorView* v : {&scale, &zero}) {
    if (v->shape.size() != 2 || v->shape[0] != rows || v->shape[1] != 1) {
      return bad(absl::StrCat("scale and zero must be [", rows, ", 1]"));
    }
  }
  return absl::OkStatus();
}

// HQQ's meta data, when stored (moec writes it; exports before it did not): must agree.
absl::Status CheckHqqMeta(const storage::SafetensorsCheckpoint& checkpoint,
                          const std::string& prefix, int64_t out, int64_t in, int64_t g,
                          const ModuleError& bad) {
  if (checkpoint.Contains(prefix + "shape")) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView sh, checkpoint.Get(prefix + "shape"));
    int32_t dims[2] = {0, 0};
    if (sh.dtype == storage::DType::kI32 && sh.size == sizeof(dims)) std::memcpy(dims, sh.data, sizeof(dims));
    if (dims[0] != out || dims[1] != in) {
      return bad(absl::StrCat("shape must be I32 [2] holding ", out, ", ", in, " (config.json)"));
    }
  }
  if (checkpoint.Contains(prefix + "group_size")) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView gs, checkpoint.Get(prefix + "group_size"));
    int32_t group = 0;
    if (gs.dtype == storage::DType::kI32 && gs.size == 4) std::memcpy(&group, gs.data, 4);
    if (group != g) return bad(absl::StrCat("group_size must be I32 [1] equal to W_q's width ", g));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> WeightLoader::LoadGptq(const TensorSpec& spec,
                                                  const std::string& prefix) const {
  const QuantizationConfig& q = *quantization_;
  const ModuleError bad{
      absl::StrCat("checkpoint ", checkpoint_->path(), ": GPTQ tensors of '", spec.name, "': ")};
  if (spec.shape.size() != 2) return bad("only matrices can be quantized");
  const int64_t out = spec.shape[0], in = spec.shape[1];
  MOEC_ASSIGN_OR_RETURN(storage::TensorView qweight, checkpoint_->Get(prefix + "qweight"));
  MOEC_ASSIGN_OR_RETURN(storage::TensorView qzeros, checkpoint_->Get(prefix + "qzeros"));
  MOEC_ASSIGN_OR_RETURN(storage::TensorView scales_view, checkpoint_->Get(prefix + "scales"));
  if (qweight.dtype != storage::DType::kI32 || qzeros.dtype != storage::DType::kI32) {
    return bad("qweight and qzeros must be I32");
  }
  if (qweight.shape.size() != 2 || qweight.shape[1] != out) {
    return bad(absl::StrCat("qweight has shape [", absl::StrJoin(qweight.shape, ", "),
                            "], expected [words, ", out, "]"));
  }
  MOEC_ASSIGN_OR_RETURN(
      const int bits,
      GptqBits(q.BitsOf(spec.name.substr(0, spec.name.size() - std::string(".weight").size())),
               in, qweight.shape[0], bad));
  const int64_t group_size = q.group_size > 0 ? q.group_size : in;
  if (scales_view.shape.size() != 2 || scales_view.shape[1] != out) {
    return bad("scales must be [groups, out_features]");
  }
  const int64_t stored_groups = scales_view.shape[0];
  const int64_t zero_words = kernels::PackedWordsPerColumn(out, bits);
  if (qzeros.shape.size() != 2 || qzeros.shape[0] != stored_groups ||
      qzeros.shape[1] != zero_words) {
    return bad(absl::StrCat("qzeros has shape [", absl::StrJoin(qzeros.shape, ", "),
                            "], expected [", stored_groups, ", ", zero_words, "]"));
  }
  MOEC_ASSIGN_OR_RETURN(
      at::Tensor group_of,
      GptqGroupIndex(*checkpoint_, prefix, in, group_size, stored_groups, bad));
  MOEC_ASSIGN_OR_RETURN(at::Tensor w,
                        DequantizeGptq(qweight, qzeros, scales_view, group_of,
                                       GptqShape{in, out, bits, stored_groups, zero_words},
                                       q.checkpoint_format == "gptq"));
  for (const storage::TensorView& v : {qweight, qzeros, scales_view}) {
    storage::ReleaseMappedPages(v.data, v.size);
  }
  return w.t().contiguous().to(dtype_);
}

absl::StatusOr<at::Tensor> WeightLoader::LoadHqq(const TensorSpec& spec,
                                                 const std::string& prefix) const {
  const ModuleError bad{
      absl::StrCat("checkpoint ", checkpoint_->path(), ": hqq module ", prefix, ": ")};
  if (spec.shape.size() != 2) return bad("not a matrix");
  const int64_t out = spec.shape[0], in = spec.shape[1];
  MOEC_ASSIGN_OR_RETURN(storage::TensorView wq, checkpoint_->Get(prefix + "W_q"));
  // The group size is W_q's row width (groups of consecutive columns of one output row).
  const int64_t g = wq.shape.size() == 2 ? wq.shape[1] : 0;
  if (g < 1 || in % g != 0) return bad(absl::StrCat("W_q rows of ", g, " do not divide ", in, " columns"));
  const int64_t rows = out * in / g;
  MOEC_ASSIGN_OR_RETURN(storage::TensorView scale, checkpoint_->Get(prefix + "scale"));
  MOEC_ASSIGN_OR_RETURN(storage::TensorView zero, checkpoint_->Get(prefix + "zero"));
  MOEC_ASSIGN_OR_RETURN(storage::TensorView nbits, checkpoint_->Get(prefix + "nbits"));
  if (nbits.dtype != storage::DType::kI32 || nbits.size != 4) return bad("nbits must be I32 [1]");
  int32_t bits = 0;
  std::memcpy(&bits, nbits.data, 4);
  if (bits < 1 || bits > 8) return bad(absl::StrCat("nbits ", bits));
  MOEC_RETURN_IF_ERROR(CheckHqqShapes(wq, scale, zero, out, in, g, bits, bad));
  MOEC_RETURN_IF_ERROR(CheckHqqMeta(*checkpoint_, prefix, out, in, g, bad));
  at::Tensor codes = at::empty({rows, g}, at::kByte);
  MOEC_RETURN_IF_ERROR(kernels::HqqUnpack(wq.data, rows, g, bits, codes.data_ptr<uint8_t>()));
  MOEC_ASSIGN_OR_RETURN(at::Tensor s, TensorFromView(scale, at::kFloat));
  MOEC_ASSIGN_OR_RETURN(at::Tensor z, TensorFromView(zero, at::kFloat));
  at::Tensor w = ((codes.to(at::kFloat) - z) * s).reshape({out, in});
  for (const storage::TensorView& v : {wq, scale, zero}) storage::ReleaseMappedPages(v.data, v.size);
  return w.to(dtype_);
}

absl::StatusOr<at::Tensor> WeightLoader::Load(const TensorSpec& spec) const {
  if (quantization_.has_value() && !checkpoint_->Contains(spec.name) &&
      absl::EndsWith(spec.name, ".weight")) {
    const std::string prefix = spec.name.substr(0, spec.name.size() - 6);
    if (checkpoint_->Contains(prefix + "qweight")) return LoadGptq(spec, prefix);
    if (checkpoint_->Contains(prefix + "W_q")) return LoadHqq(spec, prefix);
  }
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

absl::Status WriteCheckpointStreaming(
    const std::string& dir, const std::vector<storage::TensorSpec>& specs,
    const std::function<absl::StatusOr<at::Tensor>(const storage::TensorSpec&)>& produce,
    uint64_t max_shard_bytes) {
  storage::ShardingOptions sharding;
  sharding.max_shard_bytes = max_shard_bytes;
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<storage::ShardedSafetensorsWriter> writer,
                        storage::ShardedSafetensorsWriter::Create(dir, specs, {}, sharding));
  for (const storage::TensorSpec& spec : writer->order()) {
    at::ScalarType type;
    switch (spec.dtype) {
      case storage::DType::kI32:
        type = at::kInt;
        break;
      case storage::DType::kU8:
        type = at::kByte;
        break;
      case storage::DType::kF16:
        type = at::kHalf;
        break;
      case storage::DType::kBF16:
        type = at::kBFloat16;
        break;
      case storage::DType::kF32:
        type = at::kFloat;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name, "': dtype ",
                                                       storage::DTypeName(spec.dtype),
                                                       " cannot be written"));
    }
    MOEC_ASSIGN_OR_RETURN(at::Tensor t, produce(spec));
    if (t.sizes().vec() != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name, "' was produced with shape [",
                                                     absl::StrJoin(t.sizes().vec(), ", "),
                                                     "], declared [", absl::StrJoin(spec.shape, ", "), "]"));
    }
    at::Tensor data = t.detach().to(at::kCPU).to(type).contiguous();
    MOEC_RETURN_IF_ERROR(writer->Write(
        spec.name, absl::string_view(static_cast<const char*>(data.data_ptr()), data.nbytes())));
  }
  return writer->Finish();
}

absl::Status WriteCheckpointTensors(const std::string& dir, const std::vector<NamedTensor>& tensors,
                                    storage::DType dtype, uint64_t max_shard_bytes) {
  switch (dtype) {
    case storage::DType::kF32:
    case storage::DType::kF16:
    case storage::DType::kBF16:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoints are written in F32, F16 or BF16, not ", storage::DTypeName(dtype)));
  }
  std::vector<storage::TensorSpec> specs;
  absl::flat_hash_map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : tensors) {
    if (!by_name.emplace(t.name, &t).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' given twice"));
    }
    storage::DType stored = t.dtype.value_or(dtype);
    if (t.tensor.scalar_type() == at::kInt) stored = storage::DType::kI32;
    specs.push_back({t.name, stored, t.tensor.sizes().vec()});
  }
  return WriteCheckpointStreaming(
      dir, specs,
      [&](const storage::TensorSpec& spec) -> absl::StatusOr<at::Tensor> {
        return by_name.at(spec.name)->tensor;
      },
      max_shard_bytes);
}

}  // namespace moec::model
