// Layer streaming with the next layer's load overlapping this layer's compute (docs/forward.md,
// "Devices"): while the caller runs layer l, a background thread reads layer l + 1 from the
// mapped checkpoint, converts it, and copies it to the device on a stream of its own, so that
// on a GPU the host-to-device copies overlap the kernels of layer l. Includes ATen: include it
// from .cc files only.
#ifndef MOEC_MODEL_RUNTIME_PREFETCH_H_
#define MOEC_MODEL_RUNTIME_PREFETCH_H_

#include <ATen/ATen.h>

#include <functional>
#include <future>

#include "absl/status/statusor.h"
#include "model/runtime/layers.h"

namespace moec::model {

// Calls `fn` on every defined tensor of `w`.
void ForEachTensor(LayerWeights& w, const std::function<void(at::Tensor&)>& fn);

// Yields layers 0, 1, ..., count - 1 of `load` in order, loading each one ahead on a background
// thread. On a device other than the CPU the loads run on a side stream: a layer is handed out
// once its copies are complete, and its tensors are recorded on the consumer's current stream so
// that the caching allocator does not hand their memory to a later load while kernels still read
// it. `load` must be safe to call from another thread (ModelRunner::LoadLayer is).
class LayerPrefetcher {
 public:
  using LoadFn = std::function<absl::StatusOr<LayerWeights>(int layer)>;
  // `ahead`: false loads each layer when it is asked for (the same order, no thread).
  LayerPrefetcher(LoadFn load, int count, at::Device device, bool ahead);
  ~LayerPrefetcher();
  LayerPrefetcher(const LayerPrefetcher&) = delete;
  LayerPrefetcher& operator=(const LayerPrefetcher&) = delete;

  // The next layer; OutOfRange past the last.
  absl::StatusOr<LayerWeights> Next();

 private:
  std::future<absl::StatusOr<LayerWeights>> Start(int layer);

  LoadFn load_;
  const int count_;
  const at::Device device_;
  const bool ahead_;
  int next_ = 0;
  std::future<absl::StatusOr<LayerWeights>> pending_;
};

}  // namespace moec::model

#endif  // MOEC_MODEL_RUNTIME_PREFETCH_H_
