// The independent Python reference forward (tests/oracle/hf_reference.py, run by the project's
// .venv python with its torch: MOEC_ORACLE_PYTHON, set by CMake from MOEC_PYTHON) as a test oracle: logits (and the residual stream) of a checkpoint directory.
// Needs MOEC_SOURCE_DIR defined by the test target; includes ATen.
#ifndef MOEC_TESTS_TESTING_ORACLE_H_
#define MOEC_TESTS_TESTING_ORACLE_H_

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"
#include "tests/testing/temp_dir.h"

namespace moec::testing {

inline constexpr char kOraclePython[] = MOEC_ORACLE_PYTHON;

inline std::string OracleScript() {
  return std::string(MOEC_SOURCE_DIR) + "/tests/oracle/hf_reference.py";
}

// Whether the oracle python imports torch and numpy (tests skip without them).
inline bool PythonTorchAvailable() {
  static const bool ok = std::system((std::string(kOraclePython) +
                                      " -c 'import torch, numpy' >/dev/null 2>&1")
                                         .c_str()) == 0;
  return ok;
}

// The oracle's logits [B, S, vocab] for `tokens` [B, S] (int64) of checkpoint `model`, and its
// residual stream (flat, [layers + 1, B, S, hidden]) in `hidden` when given. An undefined tensor
// (after a failed expectation) when the oracle fails.
inline at::Tensor OracleLogits(const std::string& model, const at::Tensor& tokens,
                               const TempDir& tmp, at::Tensor* hidden = nullptr) {
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t b = 0; b < tokens.size(0); ++b) {
    nlohmann::json row = nlohmann::json::array();
    for (int64_t s = 0; s < tokens.size(1); ++s) row.push_back(tokens[b][s].item<int64_t>());
    rows.push_back(row);
  }
  const std::string tokens_path = tmp.WriteFile("tokens.json", rows.dump());
  const std::string out = tmp.Join("logits.bin"), hid = tmp.Join("hidden.bin");
  const std::string cmd = std::string(kOraclePython) + " " + OracleScript() + " --model " + model +
                          " --tokens " + tokens_path + " --out " + out + " --hidden-out " + hid;
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << cmd;
  if (rc != 0) return {};
  auto read = [](const std::string& path) {
    std::string bytes = *storage::ReadFileToString(path, 1ull << 30);
    at::Tensor t = at::empty({static_cast<int64_t>(bytes.size() / 4)}, at::kFloat);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t;
  };
  if (hidden != nullptr) *hidden = read(hid);
  return read(out).view({tokens.size(0), tokens.size(1), -1});
}

}  // namespace moec::testing

#endif  // MOEC_TESTS_TESTING_ORACLE_H_
