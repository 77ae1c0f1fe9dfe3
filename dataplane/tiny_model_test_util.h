// The small MoE checkpoints stage tests write (model/tiny_model.h): hidden 32, 4 heads over 2 KV
// heads, routed experts of width 24, dense MLPs of width 40.
#ifndef MOEC_DATAPLANE_TINY_MODEL_TEST_UTIL_H_
#define MOEC_DATAPLANE_TINY_MODEL_TEST_UTIL_H_

#include <string>

#include "tools/tiny_model.h"

namespace moec::dataplane {

inline tools::TinyModelOptions SmallStageTestModel(const std::string& model_type, int layers,
                                                   int experts) {
  tools::TinyModelOptions o;
  o.model_type = model_type;
  o.num_layers = layers;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = experts;
  o.moe_intermediate = 24;
  o.intermediate = 40;
  return o;
}

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_TINY_MODEL_TEST_UTIL_H_
