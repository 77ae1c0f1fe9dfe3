// A FactorIo over a std::map, keyed "<fingerprint>/<name>" as the real factor store does, for
// running stages without a coordinator (tests and benchmarks).
#ifndef MOEC_DATAPLANE_MAP_FACTOR_IO_H_
#define MOEC_DATAPLANE_MAP_FACTOR_IO_H_

#include <map>
#include <string>
#include <utility>

#include "dataplane/task_context.h"

namespace moec::dataplane {

class MapFactorIo : public FactorIo {
 public:
  explicit MapFactorIo(std::map<std::string, storage::Factor>* store) : store_(store) {}
  // Outputs written from now on belong to the task with this fingerprint.
  void SetTask(const std::string& fingerprint) { fingerprint_ = fingerprint; }
  absl::StatusOr<std::string> PutOutput(absl::string_view name, storage::DType dtype,
                                        absl::Span<const int64_t> shape,
                                        absl::string_view data) override {
    const std::string key = fingerprint_ + "/" + std::string(name);
    storage::Factor f;
    f.info.dtype = dtype;
    f.info.shape.assign(shape.begin(), shape.end());
    f.info.byte_size = data.size();
    f.data = std::string(data);
    (*store_)[key] = std::move(f);
    return key;
  }
  absl::StatusOr<storage::Factor> Get(absl::string_view key) override {
    auto it = store_->find(std::string(key));
    if (it == store_->end()) return absl::NotFoundError(std::string(key));
    return it->second;
  }

 private:
  std::map<std::string, storage::Factor>* store_;
  std::string fingerprint_;
};

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_MAP_FACTOR_IO_H_
