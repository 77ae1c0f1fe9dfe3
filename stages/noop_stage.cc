#include "stages/noop_stage.h"

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "common/stage_outputs.h"

namespace moec::stages {

absl::Status NoopStage::Run(StageContext& ctx) {
  const int64_t sleep_ms = ctx.stage->Int("sleep_ms");
  const absl::Time end = absl::Now() + absl::Milliseconds(sleep_ms);
  while (absl::Now() < end) {
    if (ctx.IsCancelled()) return absl::CancelledError("noop cancelled");
    absl::SleepFor(std::min(absl::Milliseconds(10), end - absl::Now()));
  }
  // Optionally reads the `noop` outputs of its inputs (the factor store checks their CRCs): the
  // e2e test of corrupt-factor recovery reads through it.
  if (ctx.stage->Bool("read_inputs") && ctx.rank == 0) {
    if (ctx.io == nullptr) return absl::FailedPreconditionError("noop: no factor I/O to read inputs");
    for (const auto& [task_id, fingerprint] : ctx.inputs) {
      if (task_id == ctx.task->task_id()) continue;
      absl::StatusOr<storage::Factor> f = ctx.io->Get(fingerprint + "/noop");
      if (!f.ok() && !absl::IsNotFound(f.status())) return f.status();
    }
  }
  // Optionally writes an output, so tests can follow bytes through the factor path. In a gang
  // only rank 0 writes it: output names are per task, so ranks must not write the same one.
  const int64_t bytes = ctx.stage->Int("output_bytes");
  if (bytes > 0 && ctx.rank == 0) {
    if (ctx.io == nullptr) return absl::FailedPreconditionError("noop: no factor I/O for its output");
    std::string data(static_cast<size_t>(bytes), '\0');
    for (int64_t i = 0; i < bytes; ++i) data[i] = static_cast<char>('a' + (i + ctx.task->layer()) % 26);
    absl::StatusOr<std::string> key =
        ctx.io->PutOutput(outputs::kNoop, storage::DType::kU8, {bytes}, data);
    if (!key.ok()) return key.status();
  }
  ctx.progress(1.0, "done");
  return absl::OkStatus();
}

}  // namespace moec::stages
