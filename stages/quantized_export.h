// The weights of a quantized `export` (export_stage.h): the codes of the quantizing stage it needs
// written as the GPTQ format (qweight / qzeros / scales / g_idx), the HQQ / MC-MoE format
// (kernels/hqq.h, docs/formats/hqq.md) or dequantized floats (fake_quant).
#ifndef MOEC_STAGES_QUANTIZED_EXPORT_H_
#define MOEC_STAGES_QUANTIZED_EXPORT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "dataplane/structural_edits.h"
#include "model/config/config.h"
#include "nlohmann/json.hpp"
#include "stages/stage.h"

namespace moec::stages {

// Writes the tensors of a quantized export (`format` gptq, hqq or fake_quant, the codes of stage
// `quant_stage` with parameters `quant_params`) into `tmp` and returns the quantization_config
// to put into config.json (null for fake_quant). The tensors come from the checkpoint at `src`
// (of config `source`) through `edits`; `config` is the exported model's.
absl::StatusOr<nlohmann::json> WriteQuantized(StageContext& ctx, const std::string& format,
                                              const std::string& quant_stage,
                                              const nlohmann::json& quant_params,
                                              const std::string& src,
                                              const model::ModelConfig& source,
                                              const model::ModelConfig& config,
                                              const dataplane::StructuralEdits& edits,
                                              const std::string& tmp, uint64_t max_shard_bytes);

}  // namespace moec::stages

#endif  // MOEC_STAGES_QUANTIZED_EXPORT_H_
