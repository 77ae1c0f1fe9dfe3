#include "dataplane/model_inputs.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "dataplane/expert_parallel.h"
#include "model/tokenizer/tokenizer.h"
#include "common/stage_outputs.h"

namespace moec::dataplane {
namespace {

absl::StatusOr<storage::DType> StoredType(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return storage::DType::kF32;
    case at::kBFloat16:
      return storage::DType::kBF16;
    case at::kHalf:
      return storage::DType::kF16;
    case at::kDouble:
      return storage::DType::kF64;
    case at::kLong:
      return storage::DType::kI64;
    case at::kInt:
      return storage::DType::kI32;
    case at::kByte:
      return storage::DType::kU8;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensors of type ", at::toString(t), " cannot be stored as factors"));
  }
}

absl::StatusOr<at::ScalarType> TorchType(storage::DType t) {
  switch (t) {
    case storage::DType::kF32:
      return at::kFloat;
    case storage::DType::kBF16:
      return at::kBFloat16;
    case storage::DType::kF16:
      return at::kHalf;
    case storage::DType::kF64:
      return at::kDouble;
    case storage::DType::kI64:
      return at::kLong;
    case storage::DType::kI32:
      return at::kInt;
    case storage::DType::kU8:
      return at::kByte;
    default:
      return absl::DataLossError(
          absl::StrCat("factor dtype ", storage::DTypeName(t), " is not a tensor type stages read"));
  }
}

}  // namespace

absl::StatusOr<model::TokenWindows> CalibrationWindows(const StageContext& ctx) {
  if (ctx.recipe == nullptr || !ctx.recipe->calibration.has_value()) {
    return absl::FailedPreconditionError(
        "this stage needs calibration data; the recipe has no 'calibration'");
  }
  const recipe::DataSpec& c = *ctx.recipe->calibration;
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer,
                        model::Tokenizer::Load(ctx.recipe->model));
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> texts, model::LoadTexts(c.path));
  if (c.sampling == "chunks") {
    model::ChunkOptions o;
    o.seqlen = c.seqlen;
    o.max_chunks = c.samples;
    return model::ConcatenateAndChunk(texts, *tokenizer, o);
  }
  model::RandomWindowOptions o;
  o.seqlen = c.seqlen;
  o.samples = c.samples;
  o.seed = static_cast<uint64_t>(c.seed);
  return model::SampleRandomWindows(texts, *tokenizer, o);
}

std::vector<const recipe::StageSpec*> NeededStagesWhere(
    const StageContext& ctx, const std::function<bool(const recipe::StageKindSpec&)>& pred) {
  if (ctx.recipe == nullptr || ctx.stage == nullptr) return {};
  return ctx.recipe->NeedsWhere(*ctx.stage, pred);
}

absl::StatusOr<std::string> NeededStage(const StageContext& ctx, absl::string_view kind) {
  const recipe::StageSpec* found = ctx.recipe != nullptr && ctx.stage != nullptr
                                       ? ctx.recipe->NeededOfKind(*ctx.stage, kind)
                                       : nullptr;
  if (found != nullptr) return found->id;
  return absl::FailedPreconditionError(absl::StrCat(
      "stage '", ctx.stage != nullptr ? ctx.stage->id : ctx.task->stage_id(),
      "' needs a stage of kind '", kind, "' (add it to its needs)"));
}

absl::StatusOr<at::Tensor> LayerInputFrom(const StageContext& ctx,
                                          const model::ModelRunner& runner,
                                          absl::string_view stage_id) {
  if (ctx.task->layer() == 0) return LayerInput(ctx, runner);
  // Whole, or in the chunks of an expert-parallel stage (expert_parallel.h).
  return ReadChunkedOutput(ctx, stage_id, ctx.task->layer() - 1, outputs::kHidden);
}

absl::StatusOr<at::Tensor> LayerInput(const StageContext& ctx, const model::ModelRunner& runner) {
  if (ctx.task->layer() == 0) {
    MOEC_ASSIGN_OR_RETURN(model::TokenWindows windows, CalibrationWindows(ctx));
    at::Tensor tokens = at::from_blob(windows.tokens.data(), {windows.count(), windows.seqlen},
                                      at::kInt)
                            .to(at::kLong);
    return runner.Embed(tokens);
  }
  return ReadChunkedOutput(ctx, ctx.task->stage_id(), ctx.task->layer() - 1, outputs::kHidden);
}

namespace {

// Stores `t` through `put` (FactorIo::PutOutput or PutBulk).
template <typename Put>
absl::Status StoreTensor(StageContext& ctx, absl::string_view name, const at::Tensor& t, Put put) {
  if (ctx.io == nullptr) return absl::FailedPreconditionError("no factor I/O for stage outputs");
  MOEC_ASSIGN_OR_RETURN(storage::DType dtype, StoredType(t.scalar_type()));
  // A stage's outputs are read by the host (and other workers): device tensors come back here.
  at::Tensor c = t.detach().to(at::kCPU).contiguous();
  std::vector<int64_t> shape = c.sizes().vec();
  return put(name, dtype, shape,
             absl::string_view(static_cast<const char*>(c.data_ptr()), c.nbytes()))
      .status();
}

}  // namespace

absl::Status PutTensor(StageContext& ctx, absl::string_view name, const at::Tensor& t) {
  return StoreTensor(ctx, name, t, [&](auto&&... a) { return ctx.io->PutOutput(a...); });
}

absl::Status PutBulk(StageContext& ctx, absl::string_view name, const at::Tensor& t) {
  return StoreTensor(ctx, name, t, [&](auto&&... a) { return ctx.io->PutBulk(a...); });
}

absl::StatusOr<at::Tensor> GetTensor(const StageContext& ctx, absl::string_view key) {
  if (ctx.io == nullptr) return absl::FailedPreconditionError("no factor I/O for stage inputs");
  MOEC_ASSIGN_OR_RETURN(storage::Factor f, ctx.io->Get(key));
  MOEC_ASSIGN_OR_RETURN(at::ScalarType type, TorchType(f.info.dtype));
  std::vector<int64_t> shape(f.info.shape.begin(), f.info.shape.end());
  at::Tensor t = at::empty(shape, type);
  if (static_cast<uint64_t>(t.nbytes()) != f.data.size()) {
    return absl::DataLossError(absl::StrCat("factor ", key, ": ", f.data.size(),
                                            " bytes for shape of ", t.nbytes()));
  }
  std::memcpy(t.data_ptr(), f.data.data(), f.data.size());
  return t;
}

}  // namespace moec::dataplane
