#include "quant/gptq_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "quant/quantizer.h"
#include "quant/reference_quantizer_test_util.h"

namespace moec::quant::gptq_testing {
namespace {

using ::moec::quant::reference::RefFindParams;
using ::moec::quant::reference::RefParams;

using Matrix = std::vector<std::vector<double>>;

// The state of one NaiveGptq call.
struct NaiveState {
  NaiveState(const at::Tensor& w_in, const GptqOptions& o, const at::Tensor* tie_hint)
      : o(o),
        qo(o.quantizer),
        out(w_in.size(0)),
        in(w_in.size(1)),
        g(o.groupsize),
        groups(g > 0 ? (in + g - 1) / g : 1),
        static_groups(o.static_groups && g > 0),
        tie_hint(tie_hint) {}

  const GptqOptions& o;
  const QuantizerOptions& qo;
  const int64_t out, in, g, groups;
  const bool static_groups;
  const at::Tensor* tie_hint;
  std::vector<RefParams> static_params;
  std::vector<int64_t> perm;
  Matrix Wp, Hinv;  // quantization order
  std::vector<int> qp;
  std::vector<double> loss;
  NaiveResult res;
};

Matrix ToMatrix(const at::Tensor& t) {
  const int64_t rows = t.size(0), cols = t.size(1);
  Matrix m(rows, std::vector<double>(cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) m[r][c] = t[r][c].item<float>();
  return m;
}

// Columns [c0, c0 + n) of M [out, *] as an fp32 tensor.
at::Tensor AsTensor(int64_t c0, int64_t n, const Matrix& M) {
  const int64_t out = static_cast<int64_t>(M.size());
  at::Tensor t = at::empty({out, n});
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < n; ++c) t[r][c] = static_cast<float>(M[r][c0 + c]);
  return t;
}

// Dead columns (H_cc == 0): all dead with identity_fallback -> the identity H; else H_cc = 1 and
// the column of W zeroed.
void HandleDeadColumns(bool identity_fallback, Matrix& H, Matrix& W) {
  const int64_t in = static_cast<int64_t>(H.size()), out = static_cast<int64_t>(W.size());
  int64_t dead = 0;
  for (int64_t c = 0; c < in; ++c) dead += H[c][c] == 0;
  if (dead == in && identity_fallback) {
    for (int64_t a = 0; a < in; ++a)
      for (int64_t b = 0; b < in; ++b) H[a][b] = a == b;
  } else {
    for (int64_t c = 0; c < in; ++c) {
      if (H[c][c] == 0) {
        H[c][c] = 1;
        for (int64_t r = 0; r < out; ++r) W[r][c] = 0;
      }
    }
  }
}

std::vector<int64_t> QuantizationOrder(const Matrix& H, bool actorder) {
  const int64_t in = static_cast<int64_t>(H.size());
  std::vector<int64_t> perm(in);
  std::iota(perm.begin(), perm.end(), 0);
  if (actorder) {
    std::vector<float> d(in);
    for (int64_t c = 0; c < in; ++c) d[c] = static_cast<float>(H[c][c]);
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return d[a] > d[b]; });
  }
  return perm;
}

// The inverse of Hp + percdamp * mean(diag Hp) I.
Matrix DampedInverse(Matrix Hp, double percdamp) {
  const int64_t in = static_cast<int64_t>(Hp.size());
  double mean = 0;
  for (int64_t c = 0; c < in; ++c) mean += Hp[c][c];
  mean /= in;
  for (int64_t c = 0; c < in; ++c) Hp[c][c] += percdamp * mean;
  // Hinv by Gauss-Jordan elimination (H is SPD: no pivoting needed).
  Matrix A = Hp, Hinv(in, std::vector<double>(in, 0.0));
  for (int64_t c = 0; c < in; ++c) Hinv[c][c] = 1;
  for (int64_t c = 0; c < in; ++c) {
    const double piv = A[c][c];
    for (int64_t k = 0; k < in; ++k) {
      A[c][k] /= piv;
      Hinv[c][k] /= piv;
    }
    for (int64_t r = 0; r < in; ++r) {
      if (r == c) continue;
      const double f = A[r][c];
      if (f == 0) continue;
      for (int64_t k = 0; k < in; ++k) {
        A[r][k] -= f * A[c][k];
        Hinv[r][k] -= f * Hinv[c][k];
      }
    }
  }
  return Hinv;
}

// Work in permuted order: Wp, and Hinv of the damped permuted H.
void Permute(const Matrix& W, const Matrix& H, NaiveState& st) {
  const int64_t out = st.out, in = st.in;
  const std::vector<int64_t>& perm = st.perm;
  Matrix Hp(in, std::vector<double>(in));
  st.Wp.assign(out, std::vector<double>(in));
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < in; ++j) st.Wp[r][j] = W[r][perm[j]];
  for (int64_t a = 0; a < in; ++a)
    for (int64_t b = 0; b < in; ++b) Hp[a][b] = H[perm[a]][perm[b]];
  st.Hinv = DampedInverse(std::move(Hp), st.o.percdamp);
}

// The parameters column j is quantized with; a dynamic group's are fitted (into cur and the
// result) at its first column.
RefParams ColumnParams(int64_t j, const Matrix& snapshot, RefParams& cur, NaiveState& st) {
  const int64_t g = st.g;
  if (g <= 0) return {st.res.scales.select(1, 0), st.res.zeros.select(1, 0)};
  if (st.static_groups) return st.static_params[st.perm[j] / g];
  if (j % g == 0) {
    const auto& src = st.o.reference_group_fit ? snapshot : st.Wp;
    cur = RefFindParams(AsTensor(j, std::min(g, st.in - j), src), st.qo);
    st.res.scales.select(1, j / g).copy_(cur.scale);
    st.res.zeros.select(1, j / g).copy_(cur.zero);
  }
  return cur;
}

// The reference quantizer's code of the fp32 value wf of row r, column j.
int NaiveCode(float wf, float s, float z, int64_t r, int64_t j, NaiveState& st) {
  const QuantizerOptions& qo = st.qo;
  if (qo.bits == 1 && qo.one_bit == OneBitMode::kSign) return wf >= 0 ? 1 : 0;
  const float t = qo.mcmoe_float_zero ? wf / s + z : wf / s;
  const float rt = std::nearbyint(t);
  int q = static_cast<int>(
      std::min<float>(qo.maxq(), std::max(0.0f, qo.mcmoe_float_zero ? rt : rt + z)));
  // A value within rounding noise of a boundary (e.g. the symmetric range's -xmax lands on
  // exactly -maxq/2 - 1/2): the two implementations may legitimately round either way, so
  // follow the tested implementation there (counted; it must be a neighbouring code).
  const float frac = t - std::floor(t);
  if (st.tie_hint != nullptr && std::fabs(frac - 0.5f) < 1e-4f * std::max(1.0f, std::fabs(t))) {
    const int hq = (*st.tie_hint)[r][st.perm[j]].item<int>();
    if (std::abs(hq - q) == 1) {
      q = hq;
      ++st.res.ties_followed;
    }
  }
  return q;
}

// Quantizes W[r, j] and propagates its error to columns k0.. of row r.
void QuantizeEntry(const RefParams& p, int64_t r, int64_t j, double d, int64_t k0,
                   NaiveState& st) {
  // The reference quantizer on the fp32 value.
  const float wf = static_cast<float>(st.Wp[r][j]);
  const float s = p.scale[r].item<float>(), z = p.zero[r].item<float>();
  const int q = NaiveCode(wf, s, z, r, j, st);
  st.qp[r * st.in + j] = q;
  const double wq = s * (static_cast<float>(q) - z);
  const double diff = st.Wp[r][j] - wq;
  st.loss[j] += diff * diff / d / 2;
  const double e = diff / d;
  st.Wp[r][j] = wq;
  for (int64_t k = k0; k < st.in; ++k) st.Wp[r][k] -= e * st.Hinv[j][k];
}

void SolveColumns(NaiveState& st) {
  const int64_t out = st.out, in = st.in;
  st.qp.assign(out * in, 0);
  st.loss.assign(in, 0.0);
  RefParams cur;
  Matrix snapshot = st.Wp;
  const int64_t bs = st.o.blocksize;
  const bool feedback = !(st.o.mcmoe_blockwise_feedback && st.qo.bits <= 3);
  Matrix& Hinv = st.Hinv;
  for (int64_t j = 0; j < in; ++j) {
    if (j % bs == 0) snapshot = st.Wp;
    const RefParams p = ColumnParams(j, snapshot, cur, st);
    const double d = Hinv[j][j];
    const int64_t block_end = std::min(in, (j / bs + 1) * bs);
    for (int64_t r = 0; r < out; ++r) QuantizeEntry(p, r, j, d, feedback ? j + 1 : block_end, st);
    // OBQ: remove column j from the inverse (Schur complement downdate).
    for (int64_t a = j + 1; a < in; ++a)
      for (int64_t b = j + 1; b < in; ++b) Hinv[a][b] -= Hinv[a][j] * Hinv[j][b] / d;
  }
}

// The result in the original column order.
NaiveResult Finish(NaiveState& st) {
  const int64_t out = st.out, in = st.in, g = st.g;
  NaiveResult& res = st.res;
  if (st.static_groups) {
    for (int64_t gi = 0; gi < st.groups; ++gi) {
      res.scales.select(1, gi).copy_(st.static_params[gi].scale);
      res.zeros.select(1, gi).copy_(st.static_params[gi].zero);
    }
  }
  res.weight = at::empty({out, in});
  res.q = at::empty({out, in}, at::kByte);
  res.column_loss = at::empty({in});
  res.g_idx = at::empty({in}, at::kInt);
  for (int64_t j = 0; j < in; ++j) {
    const int64_t c = st.perm[j];
    for (int64_t r = 0; r < out; ++r) {
      res.weight[r][c] = static_cast<float>(st.Wp[r][j]);
      res.q[r][c] = st.qp[r * in + j];
    }
    res.column_loss[c] = static_cast<float>(st.loss[j]);
    res.total_loss += st.loss[j];
    res.g_idx[c] = g <= 0 ? 0 : (st.o.actorder && !st.static_groups ? j / g : c / g);
  }
  return res;
}

}  // namespace

NaiveResult NaiveGptq(const at::Tensor& w_in, const at::Tensor& h_in, const GptqOptions& o,
                      const at::Tensor* tie_hint) {
  NaiveState st(w_in, o, tie_hint);
  Matrix W = ToMatrix(w_in);
  Matrix H = ToMatrix(h_in);
  st.res.scales = at::empty({st.out, st.groups});
  st.res.zeros = at::empty({st.out, st.groups});
  if (st.g <= 0) {
    RefParams p = RefFindParams(AsTensor(0, st.in, W), st.qo);
    st.res.scales.select(1, 0).copy_(p.scale);
    st.res.zeros.select(1, 0).copy_(p.zero);
  }
  HandleDeadColumns(o.identity_fallback, H, W);
  if (st.static_groups) {
    for (int64_t c0 = 0; c0 < st.in; c0 += st.g) {
      st.static_params.push_back(RefFindParams(AsTensor(c0, std::min(st.g, st.in - c0), W), st.qo));
    }
  }
  st.perm = QuantizationOrder(H, o.actorder);
  Permute(W, H, st);
  SolveColumns(st);
  return Finish(st);
}

at::Tensor CorrelatedInputs(int64_t tokens, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor mix = at::randn({in, in}) * 0.3 + at::eye(in);
  at::Tensor scale = at::exp(at::randn({in}) * 0.7);  // uneven channel magnitudes (act-order)
  return at::matmul(at::randn({tokens, in}), mix) * scale;
}

at::Tensor HessianOf(const at::Tensor& x) { return 2.0 * at::matmul(x.t(), x); }

void ExpectMatchesNaive(const GptqResult& got, const at::Tensor& w, const at::Tensor& h,
                        const GptqOptions& o) {
  const NaiveResult want = NaiveGptq(w, h, o, &got.q);
  EXPECT_TRUE(at::equal(got.g_idx, want.g_idx));
  EXPECT_LE(want.ties_followed, 4) << "suspiciously many rounding ties";
  const int64_t flips = got.q.ne(want.q).sum().item<int64_t>();
  EXPECT_EQ(flips, 0) << "codes differ in " << flips << " places";
  EXPECT_TRUE(at::allclose(got.weight, want.weight, 1e-4, 1e-5))
      << (got.weight - want.weight).abs().max().item<float>();
  EXPECT_TRUE(at::allclose(got.scales, want.scales, 1e-4, 1e-6));
  EXPECT_TRUE(at::allclose(got.zeros, want.zeros, 1e-4, 1e-4));
  EXPECT_NEAR(got.total_loss, want.total_loss, 1e-3 * std::max(1e-6, want.total_loss));
  EXPECT_TRUE(at::allclose(got.column_loss, want.column_loss, 1e-3, 1e-6));
  // Self-consistency: the codes, g_idx, scales and zeros give the returned weight bit for bit.
  EXPECT_TRUE(at::equal(DequantizeGroups(got.q, got.scales, got.zeros, got.g_idx), got.weight));
  EXPECT_LE(got.q.max().item<int>(), o.quantizer.maxq());
}

}  // namespace moec::quant::gptq_testing
