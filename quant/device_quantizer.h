// The min-max quantizer of quant/quantizer.h as tensor operations over all rows at once, on the
// device of its inputs: what GPTQ's ATen solve (gptq_aten.cc) and round-to-nearest of tensors on
// a GPU use. The same fp32 operations, in the same order, as FitRow / QuantizeValue /
// DequantizeValue per row (their test oracle); the range search's pow and the 1-bit sign
// scale's double sum may round differently in the last bit.
#ifndef MOEC_QUANT_DEVICE_QUANTIZER_H_
#define MOEC_QUANT_DEVICE_QUANTIZER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "quant/quantizer.h"

namespace moec::quant::internal {

// Codes (as fp32) of w under parameters s, z that broadcast against it; as QuantizeValue.
at::Tensor QuantizeOnDevice(const at::Tensor& w, const at::Tensor& s, const at::Tensor& z,
                            const QuantizerOptions& o);

// Per-row (scale, zero), each [rows] fp32, of x [rows, n] fp32, as FitRow fits each row.
std::pair<at::Tensor, at::Tensor> FitRowsOnDevice(const at::Tensor& x, const QuantizerOptions& o);

// QuantizeGroups (options and shapes checked) on w's device.
QuantizedWeight QuantizeGroupsOnDevice(const at::Tensor& w, int64_t group_size,
                                       const QuantizerOptions& o);

}  // namespace moec::quant::internal

#endif  // MOEC_QUANT_DEVICE_QUANTIZER_H_
