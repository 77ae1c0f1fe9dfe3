// Input checks of a bit allocation: AllocationOptions::Validate and the factors.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/bit_allocation.h"
#include "quant/bit_allocation_internal.h"

namespace moec::quant {
namespace internal {

bool FiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }

namespace {

// The checks of expert i of layer l; `where` names the layer.
absl::Status ValidateExpert(const LayerFactors& l, size_t i, size_t num_bits,
                            const std::string& where) {
  if (l.frequency[i] < 0 || !FiniteNonNegative(l.weight[i])) {
    return absl::InvalidArgumentError(absl::StrCat(where, "expert ", i, " has frequency ",
                                                   l.frequency[i], ", weight ", l.weight[i]));
  }
  if (l.loss[i].size() != num_bits) {
    return absl::InvalidArgumentError(absl::StrCat(where, "expert ", i, " has ",
                                                   l.loss[i].size(), " losses for ", num_bits,
                                                   " candidate widths"));
  }
  for (double q : l.loss[i]) {
    if (!FiniteNonNegative(q)) {
      return absl::InvalidArgumentError(absl::StrCat(where, "expert ", i, " loss ", q));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateFactors(absl::Span<const LayerFactors> layers, size_t num_bits) {
  if (layers.empty()) return absl::InvalidArgumentError("no MoE layers to allocate");
  for (const LayerFactors& l : layers) {
    const std::string where = absl::StrCat("layer ", l.layer, ": ");
    const size_t e = l.frequency.size();
    if (e == 0) return absl::InvalidArgumentError(where + "no experts");
    if (l.weight.size() != e || l.loss.size() != e) {
      return absl::InvalidArgumentError(absl::StrCat(where, e, " frequencies, ", l.weight.size(),
                                                     " weights, ", l.loss.size(), " losses"));
    }
    int64_t f_sum = 0;
    double a_sum = 0;
    for (size_t i = 0; i < e; ++i) {
      MOEC_RETURN_IF_ERROR(ValidateExpert(l, i, num_bits, where));
      if (l.frequency[i] > std::numeric_limits<int64_t>::max() - f_sum) {
        return absl::InvalidArgumentError(where + "frequency sum overflows");
      }
      f_sum += l.frequency[i];
      a_sum += l.weight[i];
    }
    if (f_sum == 0 || !(a_sum > 0) || !std::isfinite(a_sum)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "frequencies sum to ", f_sum, " and weights to ", a_sum, "; both must be > 0"));
    }
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status AllocationOptions::Validate() const {
  if (bits.empty()) return absl::InvalidArgumentError("bits: no candidate widths");
  for (size_t i = 0; i < bits.size(); ++i) {
    if (bits[i] < 1 || bits[i] > 32) {
      return absl::InvalidArgumentError(absl::StrCat("bits: width ", bits[i], " not in 1 .. 32"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (bits[j] == bits[i]) {
        return absl::InvalidArgumentError(absl::StrCat("bits: width ", bits[i], " repeated"));
      }
    }
  }
  if (average_bits.has_value() == layer_budget.has_value()) {
    return absl::InvalidArgumentError("exactly one of average_bits and layer_budget must be given");
  }
  const int b_min = *std::min_element(bits.begin(), bits.end());
  const int b_max = *std::max_element(bits.begin(), bits.end());
  if (average_bits && !(*average_bits >= b_min && *average_bits <= b_max)) {
    return absl::InvalidArgumentError(absl::StrCat("average_bits ", *average_bits,
                                                   " is outside the feasible range ", b_min, " .. ",
                                                   b_max, " of widths ", internal::BitsText(bits)));
  }
  for (auto [name, v] :
       {std::pair<const char*, double>{"alpha", alpha}, {"beta", beta}, {"gamma", gamma}}) {
    if (!internal::FiniteNonNegative(v)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " ", v, " must be finite and >= 0"));
    }
  }
  if (!(time_limit_s > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("time_limit_s ", time_limit_s, " must be > 0"));
  }
  return absl::OkStatus();
}

}  // namespace moec::quant
