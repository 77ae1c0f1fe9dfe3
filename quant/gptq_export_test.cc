// GPTQ checkpoint round trip: pack the codes with kernels::PackRows, write qweight / qzeros /
// scales / g_idx, load through model::WeightLoader (the moec loader) and compare.
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "model/config/config.h"
#include "model/config/tensor_names.h"
#include "model/runtime/weights.h"
#include "quant/gptq.h"
#include "quant/gptq_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::quant {
namespace {

using gptq_testing::CorrelatedInputs;
using gptq_testing::HessianOf;

at::Tensor PackAlongRows(const at::Tensor& values /* uint8 [rows, cols] */, int bits) {
  const int64_t rows = values.size(0), cols = values.size(1);
  at::Tensor packed =
      at::empty({kernels::PackedWordsPerColumn(rows, bits), cols}, at::kInt);
  absl::Status s = kernels::PackRows(values.contiguous().data_ptr<uint8_t>(), rows, cols, bits,
                                     reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>()));
  EXPECT_OK(s);
  return packed;
}

void ExpectLoaderRoundTrip(const GptqResult& r, int bits, int64_t groupsize, bool act,
                           const std::string& format) {
  const int64_t out = r.q.size(0), in = r.q.size(1);
  testing::TempDir dir;
  at::Tensor zeros = r.zeros.round().to(at::kByte);  // [out, groups]
  if (format == "gptq") zeros = zeros - 1;           // v1 stores zero - 1
  std::vector<model::NamedTensor> tensors = {
      {"l.qweight", PackAlongRows(r.q.t().contiguous(), bits), std::nullopt},
      {"l.qzeros", PackAlongRows(zeros, bits).t().contiguous(), std::nullopt},
      {"l.scales", r.scales.t().contiguous(), storage::DType::kF32},
      {"l.g_idx", r.g_idx, std::nullopt},
  };
  ASSERT_OK(model::WriteCheckpointTensors(dir.path(), tensors, storage::DType::kF32));
  model::QuantizationConfig qc;
  qc.quant_method = "gptq";
  qc.bits = bits;
  qc.group_size = groupsize;
  qc.desc_act = act;
  qc.checkpoint_format = format;
  ASSERT_OK_AND_ASSIGN(auto loader, model::WeightLoader::Open(dir.path(), at::kFloat, qc));
  model::TensorSpec spec;
  spec.name = "l.weight";
  spec.shape = {out, in};
  ASSERT_OK_AND_ASSIGN(at::Tensor loaded, loader->Load(spec));
  EXPECT_TRUE(at::equal(loaded, r.weight)) << (loaded - r.weight).abs().max().item<float>();
}

TEST(GptqExportTest, PackedCodesLoadBackExactly) {
  const int64_t out = 32, in = 128;
  at::Tensor x = CorrelatedInputs(256, in, 40);
  at::manual_seed(41);
  at::Tensor w = at::randn({out, in});
  at::Tensor h = HessianOf(x) / 256.0;
  for (int bits : {2, 3, 4, 8}) {
    for (bool act : {false, true}) {
      for (bool sym : {false, true}) {
        SCOPED_TRACE(::testing::Message() << bits << " bits, act " << act << ", sym " << sym);
        GptqOptions o;
        o.quantizer.bits = bits;
        o.quantizer.sym = sym;
        o.groupsize = 32;
        o.actorder = act;
        ASSERT_OK_AND_ASSIGN(GptqResult r, GptqQuantize(w, h, o));
        ExpectLoaderRoundTrip(r, bits, 32, act, "gptq_v2");
        // v1 ("zero - 1") cannot store a zero point of 0; symmetric zeros are >= 1.
        if (sym || r.zeros.min().item<float>() >= 1) {
          ExpectLoaderRoundTrip(r, bits, 32, act, "gptq");
        }
      }
    }
  }
}

}  // namespace
}  // namespace moec::quant
