#include "stages/noop_stage.h"

#include "absl/time/clock.h"

namespace moec::stages {

absl::Status NoopStage::Run(StageContext& ctx) {
  const int64_t sleep_ms = ctx.params.value("sleep_ms", 0);
  const absl::Time end = absl::Now() + absl::Milliseconds(sleep_ms);
  while (absl::Now() < end) {
    if (ctx.IsCancelled()) return absl::CancelledError("noop cancelled");
    absl::SleepFor(std::min(absl::Milliseconds(10), end - absl::Now()));
  }
  ctx.progress(1.0, "done");
  return absl::OkStatus();
}

}  // namespace moec::stages
