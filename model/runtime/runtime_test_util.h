// A tiny random Mixtral opened for the runtime's tests (forward_test's profile and memo tests).
#ifndef MOEC_MODEL_RUNTIME_RUNTIME_TEST_UTIL_H_
#define MOEC_MODEL_RUNTIME_RUNTIME_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <utility>

#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::model {

// Hidden 32, 4 heads (2 KV), 4 experts of width 24, top-2, vocab 300, written under dir/m.
inline std::unique_ptr<ModelRunner> OpenTinyMixtral(const ::moec::testing::TempDir& dir,
                                                    int layers, uint64_t seed) {
  tools::TinyModelOptions o;
  o.model_type = "mixtral";
  o.num_layers = layers;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 4;
  o.top_k = 2;
  o.moe_intermediate = 24;
  o.vocab = 300;
  o.seed = seed;
  EXPECT_OK(tools::WriteTinyModel(o, dir.Join("m")));
  auto runner = ModelRunner::Open(dir.Join("m"), RunnerOptions{});
  EXPECT_OK(runner.status());
  return runner.ok() ? std::move(*runner) : nullptr;
}

}  // namespace moec::model

#endif  // MOEC_MODEL_RUNTIME_RUNTIME_TEST_UTIL_H_
