// Internal: checked readers over one JSON object of a config.json, shared by config.cc and
// config_overrides.cc. Every mismatch becomes InvalidArgument naming the file and the field,
// e.g. `config file /m/config.json: field 'moec.skip_beta[3]': expected a number in [0, 1]`.
#ifndef MOEC_MODEL_CONFIG_CONFIG_JSON_H_
#define MOEC_MODEL_CONFIG_CONFIG_JSON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/config/config.h"
#include "nlohmann/json.hpp"

namespace moec::model::internal {

class ConfigObject {
 public:
  // `obj` must outlive this reader. `prefix` is the field path of `obj` ("" for the root).
  ConfigObject(const nlohmann::json& obj, absl::string_view source, std::string prefix)
      : obj_(obj), source_(source), prefix_(std::move(prefix)) {}

  // "prefix.key" (or "key" at the root).
  std::string Path(absl::string_view key) const;
  absl::Status Error(absl::string_view path, absl::string_view what) const;

  // The value of `key`, or nullptr when it is absent or JSON null.
  const nlohmann::json* Find(absl::string_view key) const;
  // True when `key` is present, even with a null value.
  bool Has(absl::string_view key) const { return obj_.contains(std::string(key)); }

  absl::StatusOr<int64_t> RequiredInt(absl::string_view key, int64_t min, int64_t max) const;
  absl::StatusOr<int64_t> OptionalInt(absl::string_view key, int64_t fallback, int64_t min,
                                      int64_t max) const;
  // A finite number > 0 (absent or null: `fallback`).
  absl::StatusOr<double> OptionalPositive(absl::string_view key, double fallback) const;
  absl::StatusOr<bool> OptionalBool(absl::string_view key, bool fallback) const;
  absl::StatusOr<std::string> OptionalString(absl::string_view key) const;
  // A list of distinct integers in [min, max], returned ascending (absent or null: empty).
  absl::StatusOr<std::vector<int>> OptionalIndexSet(absl::string_view key, int min, int max) const;

  // Checks `v` (found at `path`) is an integer in [min, max].
  absl::StatusOr<int64_t> AsInt(const nlohmann::json& v, absl::string_view path, int64_t min,
                                int64_t max) const;
  // Checks `v` (found at `path`) is a finite number in [min, max].
  absl::StatusOr<double> AsNumber(const nlohmann::json& v, absl::string_view path, double min,
                                  double max) const;

  absl::string_view source() const { return source_; }
  const nlohmann::json& object() const { return obj_; }

 private:
  const nlohmann::json& obj_;
  absl::string_view source_;
  std::string prefix_;
};

// Parses the "moec" object `moec` of `config` into config->moec and validates it against the
// architecture fields already set in `config`.
absl::Status ParseMoecOverrides(const nlohmann::json& moec, ModelConfig* config);

}  // namespace moec::model::internal

#endif  // MOEC_MODEL_CONFIG_CONFIG_JSON_H_
