#include "stages/stored_codes.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/kernels.h"

namespace moec::stages {

absl::StatusOr<at::Tensor> PackStoredCodes(const at::Tensor& q, int bits) {
  if (!q.defined() || q.dim() != 2) return absl::InvalidArgumentError("codes must be [out, in]");
  if (bits < 1 || bits > 8) return absl::InvalidArgumentError(absl::StrCat(bits, "-bit codes"));
  const at::Tensor values = q.to(at::kCPU).to(at::kByte).t().contiguous();  // [in, out]
  const int64_t rows = values.size(0), cols = values.size(1);
  at::Tensor packed = at::empty({kernels::PackedWordsPerColumn(rows, bits), cols}, at::kInt);
  // Blocks of 32 rows start on a word boundary at any width: the threads pack blocks of them.
  const int64_t blocks = (rows + 31) / 32;
  std::vector<absl::Status> status(blocks);
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = 32 * b0, r1 = std::min(rows, 32 * b1);
    status[b0] = kernels::PackRows(
        values.data_ptr<uint8_t>() + r0 * cols, r1 - r0, cols, bits,
        reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>()) + r0 * bits / 32 * cols);
  });
  for (const absl::Status& st : status) MOEC_RETURN_IF_ERROR(st);
  return packed;
}

absl::StatusOr<at::Tensor> UnpackStoredCodes(const at::Tensor& packed, int64_t in, int bits) {
  if (bits < 1 || bits > 8 || in < 0 || !packed.defined() || packed.dim() != 2 ||
      packed.scalar_type() != at::kInt ||
      packed.size(0) != kernels::PackedWordsPerColumn(in, bits)) {
    return absl::DataLossError(absl::StrCat(
        "stored codes ", packed.defined() ? c10::str(packed.sizes(), " ", packed.scalar_type()) : "",
        " do not hold ", in, " input columns of ", bits, " bits"));
  }
  const at::Tensor words = packed.to(at::kCPU).contiguous();
  at::Tensor values = at::empty({in, words.size(1)}, at::kByte);  // [in, out]
  MOEC_RETURN_IF_ERROR(kernels::UnpackRows(kernels::Device::kCpu,
                                           reinterpret_cast<const uint32_t*>(words.data_ptr<int32_t>()),
                                           in, words.size(1), bits, values.data_ptr<uint8_t>()));
  return values.t().contiguous();
}

}  // namespace moec::stages
