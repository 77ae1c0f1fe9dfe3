#include "model/runtime/prefetch.h"

#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/task_profile.h"

namespace moec::model {
namespace {

void ForEachMlp(MlpWeights& m, const std::function<void(at::Tensor&)>& fn) {
  for (at::Tensor* t : {&m.gate, &m.up, &m.down}) {
    if (t->defined()) fn(*t);
  }
}

}  // namespace

void ForEachTensor(LayerWeights& w, const std::function<void(at::Tensor&)>& fn) {
  AttentionWeights& a = w.attention;
  for (at::Tensor* t : {&w.input_norm, &w.post_norm, &a.q, &a.k, &a.v, &a.o, &a.q_bias, &a.k_bias,
                        &a.v_bias, &a.o_bias, &a.q_norm, &a.k_norm}) {
    if (t->defined()) fn(*t);
  }
  ForEachMlp(w.dense, fn);
  if (!w.moe.has_value()) return;
  MoeWeights& m = *w.moe;
  for (at::Tensor* t : {&m.router, &m.shared_expert_gate}) {
    if (t->defined()) fn(*t);
  }
  for (MlpWeights& e : m.experts) ForEachMlp(e, fn);
  ForEachMlp(m.shared, fn);
}

LayerPrefetcher::LayerPrefetcher(LoadFn load, int count, at::Device device, bool ahead)
    : load_(std::move(load)), count_(count), device_(device), ahead_(ahead) {
  if (ahead_ && count_ > 0) pending_ = Start(0);
}

LayerPrefetcher::~LayerPrefetcher() {
  if (pending_.valid()) pending_.wait();  // the load holds references to the caller's runner
}

std::future<absl::StatusOr<LayerWeights>> LayerPrefetcher::Start(int layer) {
  const at::Device device = device_;
  // The consumer's stream, taken on its thread: loaded tensors are recorded on it.
  std::optional<c10::Stream> consumer;
  if (!device.is_cpu()) consumer = c10::impl::VirtualGuardImpl(device.type()).getStream(device);
  return std::async(std::launch::async, [this, layer, device, consumer]() {
    if (device.is_cpu()) return load_(layer);
    c10::impl::VirtualGuardImpl impl(device.type());
    const c10::Stream side = impl.getStreamFromGlobalPool(device, /*isHighPriority=*/false);
    absl::StatusOr<LayerWeights> w;
    {
      c10::StreamGuard guard(side);
      w = load_(layer);
    }
    side.synchronize();  // the copies are complete before the layer is handed out
    if (w.ok()) ForEachTensor(*w, [&](at::Tensor& t) { t.record_stream(*consumer); });
    return w;
  });
}

absl::StatusOr<LayerWeights> LayerPrefetcher::Next() {
  if (next_ >= count_) {
    return absl::OutOfRangeError(absl::StrCat("layer ", next_, " of ", count_));
  }
  const int layer = next_++;
  // The wait for the layer (or its load, without prefetching) is the task's load phase.
  profile::ScopedPhase phase(profile::Phase::kLoad);
  if (!ahead_) return load_(layer);
  absl::StatusOr<LayerWeights> w = pending_.get();
  if (w.ok() && next_ < count_) pending_ = Start(next_);
  return w;
}

}  // namespace moec::model
