// The rendezvous store of gangs: small key-value namespaces, one per attempt of a gang task, that
// the gang's workers use to form their communicator (comm/ over the GroupStore RPCs). In memory:
// a coordinator restart breaks running gangs anyway (they retry). Bounded in keys, bytes and
// namespaces; idle namespaces are dropped. Thread-safe; Get waits without holding other locks.
#ifndef MOEC_COORDINATOR_GROUP_STORE_H_
#define MOEC_COORDINATOR_GROUP_STORE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moec::coordinator {

class GroupStore {
 public:
  struct Limits {
    size_t max_key_bytes = 256;
    size_t max_value_bytes = 64 << 10;
    size_t max_keys = 4096;       // per namespace
    size_t max_namespaces = 4096;
    absl::Duration idle = absl::Minutes(10);  // namespaces untouched this long are dropped
    absl::Duration max_wait = absl::Seconds(2);
  };
  GroupStore() : GroupStore(Limits{}) {}
  explicit GroupStore(Limits limits) : limits_(limits) {}

  // Errors: InvalidArgument for oversized keys or values; ResourceExhausted past the limits.
  absl::Status Set(const std::string& ns, const std::string& key, std::string value);
  // The value, or nullopt when the key did not appear within min(wait, max_wait).
  absl::StatusOr<std::optional<std::string>> Get(const std::string& ns, const std::string& key,
                                                 absl::Duration wait);
  // Adds delta to the decimal integer at key (0 when absent); returns the new value.
  // Errors: FailedPrecondition when the value is not an integer.
  absl::StatusOr<int64_t> Add(const std::string& ns, const std::string& key, int64_t delta);
  size_t namespaces() const;

 private:
  struct Namespace {
    std::map<std::string, std::string> values;
    absl::Time last_used;
  };
  absl::StatusOr<Namespace*> OpenLocked(const std::string& ns, const std::string& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Limits limits_;
  mutable absl::Mutex mu_;
  std::map<std::string, Namespace> namespaces_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_GROUP_STORE_H_
