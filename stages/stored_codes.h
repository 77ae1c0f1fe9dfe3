// How quantizing stages (gptq, rtn) store a linear's integer codes in the factor store: packed
// along the input axis as GPTQ's qweight is (kernels::PackRows of q^T: int32
// [PackedWordsPerColumn(in, bits), out]), so a 4-bit linear takes half a byte per weight, the
// gptq export writes the stored tensor as it is, and the other exports unpack it once.
// Includes ATen: keep it out of widely included headers.
#ifndef MOEC_STAGES_STORED_CODES_H_
#define MOEC_STAGES_STORED_CODES_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace moec::stages {

// Name suffix of the stored codes of a linear (after its weight's name).
inline constexpr char kStoredCodesSuffix[] = ".qweight";

// Codes q (integers in [0, 2^bits), [out, in], any device and integer or float dtype) packed
// on the host. InvalidArgument for bits outside 1..8 or a code out of range.
absl::StatusOr<at::Tensor> PackStoredCodes(const at::Tensor& q, int bits);

// The codes [out, in] (uint8, host) of `packed` as PackStoredCodes wrote it. DataLoss when its
// shape does not hold `in` codes of `bits` bits per column.
absl::StatusOr<at::Tensor> UnpackStoredCodes(const at::Tensor& packed, int64_t in, int bits);

}  // namespace moec::stages

#endif  // MOEC_STAGES_STORED_CODES_H_
