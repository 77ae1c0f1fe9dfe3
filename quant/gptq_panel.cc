// The GPTQ panel kernel: the per-column work of one block on a panel of kPanel rows
// (gptq_internal.h), cloned per ISA.
#include <algorithm>
#include <cstring>
#include <vector>

#include "quant/gptq_internal.h"
#include "quant/parallel.h"

namespace moec::quant::internal {
namespace {

// Panels (of kPanel rows) per thread chunk in the block loop.
constexpr int64_t kMinPanelsPerChunk = 2;

enum class LaneMode { kIntegerZero, kFloatZero, kSign };

// kPanel lanes as one GCC vector (one zmm register with AVX-512, two ymm with AVX2).
typedef float VecF __attribute__((vector_size(kPanel * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kPanel * sizeof(int32_t))));
typedef uint8_t VecB __attribute__((vector_size(kPanel)));

// The kernel's helpers are always inlined, so that every ISA clone of SolvePanelBlock compiles
// them for its own target.
#define MOEC_PANEL_INLINE inline __attribute__((always_inline))

MOEC_PANEL_INLINE VecF LoadV(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
MOEC_PANEL_INLINE void StoreV(float* p, VecF v) { std::memcpy(p, &v, sizeof(v)); }

// std::nearbyint (round half to even in the default rounding mode) of every lane: clamped to
// +-2^22 (beyond it the code clamps to 0 or maxq either way), then rounded by adding and
// subtracting 1.5 * 2^23, where the float spacing is 1.
MOEC_PANEL_INLINE VecF RoundHalfEven(VecF x) {
  const VecF lim = VecF{} + 4194304.0f;
  const VecF magic = VecF{} + 12582912.0f;
  x = x > lim ? lim : x;
  x = x < -lim ? -lim : x;
  return (x + magic) - magic;
}

// Quantizes one column of a panel (kPanel lanes with their own scale/zero), replaces the values
// by their dequantized values and writes codes, scaled errors (w - w_hat) / d and loss terms.
// Per lane the same operations as QuantizeValue / DequantizeValue and the reference's
// err = (w - q) / d, loss = (w - q)^2 / d^2 / 2.
template <LaneMode kMode>
MOEC_PANEL_INLINE void QuantizeLanes(float* col, const float* ps, const float* pz, float maxq,
                                     float d, uint8_t* q, float* e, float* loss) {
  const VecF wv = LoadV(col), s = LoadV(ps), z = LoadV(pz);
  const VecF zero = VecF{}, one = VecF{} + 1.0f, top = VecF{} + maxq;
  VecF qf;
  if (kMode == LaneMode::kSign) {
    qf = wv >= zero ? one : zero;
  } else {
    qf = kMode == LaneMode::kFloatZero ? RoundHalfEven(wv / s + z) : RoundHalfEven(wv / s) + z;
    qf = qf < zero ? zero : (qf > top ? top : qf);
  }
  const VecF dq = s * (qf - z);
  const VecB qb = __builtin_convertvector(__builtin_convertvector(qf, VecI), VecB);
  std::memcpy(q, &qb, sizeof(qb));
  StoreV(col, dq);
  const VecF diff = wv - dq;
  const VecF dv = VecF{} + d;
  StoreV(e, diff / dv);
  StoreV(loss, diff * diff / (dv * dv) / 2.0f);
}

// QuantizeLanes in the panel's mode.
MOEC_PANEL_INLINE void QuantizeColumn(LaneMode mode, float* col, const float* ps, const float* pz,
                                      float maxq, float d, uint8_t* q, float* e, float* loss) {
  switch (mode) {
    case LaneMode::kIntegerZero:
      QuantizeLanes<LaneMode::kIntegerZero>(col, ps, pz, maxq, d, q, e, loss);
      break;
    case LaneMode::kFloatZero:
      QuantizeLanes<LaneMode::kFloatZero>(col, ps, pz, maxq, d, q, e, loss);
      break;
    case LaneMode::kSign:
      QuantizeLanes<LaneMode::kSign>(col, ps, pz, maxq, d, q, e, loss);
      break;
  }
}

// Load (transpose) rows [r0, r0 + rows) of columns [i1, i1 + nb) into the panel t; padding
// lanes hold zeros. Row by row: contiguous reads, and the panel's writes stay in L1.
MOEC_PANEL_INLINE void LoadPanel(const SolveContext& c, int64_t r0, int rows, int64_t i1,
                                 int64_t nb, float* __restrict t) {
  if (rows < kPanel) std::fill(t, t + nb * kPanel, 0.0f);
  for (int l = 0; l < rows; ++l) {
    const float* __restrict wr = c.w + (r0 + l) * c.in + i1;
    for (int64_t k = 0; k < nb; ++k) t[k * kPanel + l] = wr[k];
  }
}

// Store (transpose back) values, codes and errors of the panel, row by row (contiguous writes).
MOEC_PANEL_INLINE void StorePanel(const SolveContext& c, int64_t r0, int rows, int64_t i1,
                                  int64_t nb, const PanelScratch& s, float* err) {
  const float* __restrict st = s.t.data();
  const uint8_t* __restrict sq = s.q.data();
  const float* __restrict se = s.e.data();
  for (int l = 0; l < rows; ++l) {
    float* __restrict wr = c.w + (r0 + l) * c.in + i1;
    uint8_t* __restrict qr = c.codes + (r0 + l) * c.in + i1;
    float* __restrict er = err + l * nb;  // err: the panel's first row
    for (int64_t k = 0; k < nb; ++k) wr[k] = st[k * kPanel + l];
    for (int64_t k = 0; k < nb; ++k) qr[k] = sq[k * kPanel + l];
    for (int64_t k = 0; k < nb; ++k) er[k] = se[k * kPanel + l];
  }
}

// s.loss[jj] += the sum, in lane order and in double, of column jj's loss terms (lt, [nb][kPanel]),
// four columns at a time so that their serial sums overlap.
MOEC_PANEL_INLINE void AddLoss(const float* __restrict lt, int rows, int64_t nb,
                               double* __restrict loss) {
  int64_t jj = 0;
  for (; jj + 4 <= nb; jj += 4) {
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    const float* p = lt + jj * kPanel;
    for (int l = 0; l < rows; ++l) {
      a0 += p[l];
      a1 += p[kPanel + l];
      a2 += p[2 * kPanel + l];
      a3 += p[3 * kPanel + l];
    }
    loss[jj] += a0;
    loss[jj + 1] += a1;
    loss[jj + 2] += a2;
    loss[jj + 3] += a3;
  }
  for (; jj < nb; ++jj) {
    double a = 0;
    for (int l = 0; l < rows; ++l) a += lt[jj * kPanel + l];
    loss[jj] += a;
  }
}

// ps[l], pz[l] = base[l * stride], base[l * stride + 1] for the panel's rows.
MOEC_PANEL_INLINE void LoadParams(const float* base, int64_t stride, int rows, float* ps,
                                  float* pz) {
  for (int l = 0; l < rows; ++l) {
    ps[l] = base[l * stride];
    pz[l] = base[l * stride + 1];
  }
}

// The parameters in effect at column i1, the block's first: unit parameters (also those of the
// padding lanes), the whole row's, or those of a dynamic group that started in an earlier block.
MOEC_PANEL_INLINE void InitialParams(const SolveContext& c, int64_t r0, int rows, int64_t i1,
                                     bool dynamic_groups, float* ps, float* pz) {
  for (int l = 0; l < kPanel; ++l) {
    ps[l] = 1.0f;
    pz[l] = 0.0f;
  }
  if (c.groupsize <= 0) {
    LoadParams(c.row_params + 2 * r0, 2, rows, ps, pz);
  } else if (dynamic_groups && i1 % c.groupsize != 0) {
    // The group of column i1 started in an earlier block; its parameters are stored.
    const int64_t gi = i1 / c.groupsize;
    for (int l = 0; l < rows; ++l) {
      ps[l] = c.scales[(r0 + l) * c.groups + gi];
      pz[l] = c.zeros[(r0 + l) * c.groups + gi];
    }
  }
}

// min(0, min x) and max(0, max x) of all lanes at once, over panel columns [k0, k1).
MOEC_PANEL_INLINE void PanelRange(const float* t, int64_t k0, int64_t k1, float* mn, float* mx) {
  for (int l = 0; l < kPanel; ++l) mn[l] = mx[l] = 0.0f;
  for (int64_t k = k0; k < k1; ++k) {
    const float* tk = t + k * kPanel;
    for (int l = 0; l < kPanel; ++l) {
      mn[l] = tk[l] < mn[l] ? tk[l] : mn[l];
      mx[l] = mx[l] < tk[l] ? tk[l] : mx[l];
    }
  }
}

// Copies the values of lane l's row (row r0 + l) in group columns [j, c1) into s.group, for a
// group fitted outside the panel: block columns from the panel (or, with reference_group_fit,
// its block-start snapshot), later columns from W.
MOEC_PANEL_INLINE void GatherGroup(const SolveContext& c, PanelScratch& s, int64_t r0, int l,
                                   int64_t i1, int64_t i2, int64_t j, int64_t c1) {
  const float* t = s.t.data();
  const float* ev = s.e.data();
  const float* wr = c.w + (r0 + l) * c.in;
  for (int64_t k = j; k < c1; ++k) {
    float v;
    if (k < i2) {
      v = (c.reference_group_fit ? s.snapshot.data() : t)[(k - i1) * kPanel + l];
    } else if (c.reference_group_fit) {
      v = wr[k];
    } else {
      // Past the block: apply this block's pending (lazy) updates of columns i1..j-1.
      v = wr[k];
      for (int64_t tt = i1; tt < j; ++tt) v -= ev[(tt - i1) * kPanel + l] * c.u[tt * c.in + k];
    }
    s.group[k - j] = v;
  }
}

// Fits the parameters of the dynamic group that starts at column j, per row of the panel, into
// ps / pz and the stored scales / zeros.
MOEC_PANEL_INLINE void FitDynamicGroup(const SolveContext& c, PanelScratch& s, LaneMode mode,
                                       int64_t r0, int rows, int64_t i1, int64_t i2, int64_t j,
                                       float* ps, float* pz) {
  const QuantizerOptions& qo = *c.qopt;
  const float* t = s.t.data();
  const int64_t jj = j - i1;
  const int64_t gi = j / c.groupsize;
  const int64_t c1 = std::min(c.in, j + c.groupsize);
  const bool in_block = !c.reference_group_fit && c1 <= i2;  // values in t, up to date
  float mn[kPanel], mx[kPanel];
  if (in_block && mode != LaneMode::kSign) PanelRange(t, jj, c1 - i1, mn, mx);
  for (int l = 0; l < rows; ++l) {
    RowParams p;
    if (in_block && mode != LaneMode::kSign) {
      p = FitRowFromRange(t + jj * kPanel + l, c1 - j, mn[l], mx[l], qo, kPanel);
    } else if (in_block) {
      p = FitRow(t + jj * kPanel + l, c1 - j, qo, kPanel);
    } else {
      GatherGroup(c, s, r0, l, i1, i2, j, c1);
      p = FitRow(s.group.data(), c1 - j, qo);
    }
    ps[l] = p.scale;
    pz[l] = p.zero;
    c.scales[(r0 + l) * c.groups + gi] = p.scale;
    c.zeros[(r0 + l) * c.groups + gi] = p.zero;
  }
}

// Columns per window of the block loop: a window's columns are quantized one after another with
// the updates among themselves, then their errors are applied to the rest of the block in one
// pass, each later column loaded and stored once per window instead of once per column. Every
// element still sees the same subtractions in the same column order as with rank-1 updates, so
// the bits do not change (and the ATen solve, gptq_aten.cc, keeps matching them).
constexpr int64_t kWindow = 8;

// Column j of the window starting at w0 receives the errors of the window's earlier columns:
// t[j] -= e[m] * U[m, j] for m in [w0, j), in order.
MOEC_PANEL_INLINE void UpdateWithinWindow(const SolveContext& c, float* t, const float* ev,
                                          int64_t i1, int64_t w0, int64_t j) {
  float* tj = t + (j - i1) * kPanel;
  VecF acc = LoadV(tj);
  for (int64_t m = w0; m < j; ++m) acc = acc - LoadV(ev + (m - i1) * kPanel) * c.u[m * c.in + j];
  StoreV(tj, acc);
}

// The rest of the block receives the window's errors: W[:, k] -= e[m] * U[m, k] for k in
// [w1, i2), m in [w0, w1) in order. A full window keeps its errors in registers.
MOEC_PANEL_INLINE void UpdateRestOfBlock(const SolveContext& c, float* t, const float* ev,
                                         int64_t i1, int64_t i2, int64_t w0, int64_t w1) {
  const int64_t in = c.in;
  if (w1 - w0 == kWindow) {
    VecF e[kWindow];
    for (int64_t m = 0; m < kWindow; ++m) e[m] = LoadV(ev + (w0 + m - i1) * kPanel);
    const float* u0 = c.u + w0 * in;
    for (int64_t k = w1; k < i2; ++k) {
      float* tk = t + (k - i1) * kPanel;
      VecF acc = LoadV(tk);
      for (int64_t m = 0; m < kWindow; ++m) acc = acc - e[m] * u0[m * in + k];
      StoreV(tk, acc);
    }
    return;
  }
  for (int64_t k = w1; k < i2; ++k) {
    float* tk = t + (k - i1) * kPanel;
    VecF acc = LoadV(tk);
    for (int64_t m = w0; m < w1; ++m) acc = acc - LoadV(ev + (m - i1) * kPanel) * c.u[m * in + k];
    StoreV(tk, acc);
  }
}

// The end of the window that starts at w0: kWindow columns, the block's end, or the next dynamic
// group's first column (whose fit must see every earlier column's update), whichever is first.
MOEC_PANEL_INLINE int64_t WindowEnd(const SolveContext& c, bool dynamic_groups, int64_t w0,
                                    int64_t i2) {
  int64_t w1 = std::min(i2, w0 + kWindow);
  if (dynamic_groups) w1 = std::min(w1, (w0 / c.groupsize + 1) * c.groupsize);
  return w1;
}

// Quantizes columns [i1, i2) of rows [r0, r0 + rows) (rows <= kPanel) and writes their scaled
// errors to err ([out, i2 - i1], row-major). Cloned per ISA (nearbyint becomes one instruction).
__attribute__((target_clones("avx512f", "avx2", "default"))) void SolvePanelBlock(
    const SolveContext& c, int64_t r0, int rows, int64_t i1, int64_t i2, float* err,
    PanelScratch& s) {
  const int64_t in = c.in, nb = i2 - i1;
  const QuantizerOptions& qo = *c.qopt;
  const bool dynamic_groups = c.groupsize > 0 && !c.static_groups;
  const LaneMode mode = (qo.bits == 1 && qo.one_bit == OneBitMode::kSign) ? LaneMode::kSign
                        : qo.mcmoe_float_zero                             ? LaneMode::kFloatZero
                                                                          : LaneMode::kIntegerZero;
  const float maxq = static_cast<float>(qo.maxq());
  float* t = s.t.data();
  float* ev = s.e.data();
  uint8_t* qv = s.q.data();
  // Load (transpose) the panel; padding lanes hold zeros with unit parameters (InitialParams).
  LoadPanel(c, r0, rows, i1, nb, t);
  if (dynamic_groups && c.reference_group_fit) std::copy(t, t + nb * kPanel, s.snapshot.begin());
  float ps[kPanel], pz[kPanel];
  float* lt = s.loss_terms.data();
  InitialParams(c, r0, rows, i1, dynamic_groups, ps, pz);
  int64_t static_group = -1;
  int64_t w0 = i1, w1 = i1;  // the current window [w0, w1)
  for (int64_t j = i1; j < i2; ++j) {
    const int64_t jj = j - i1;
    if (j == w1) {
      w0 = j;
      w1 = WindowEnd(c, dynamic_groups, w0, i2);
    } else if (c.feedback) {
      UpdateWithinWindow(c, t, ev, i1, w0, j);
    }
    if (dynamic_groups && j % c.groupsize == 0) {
      FitDynamicGroup(c, s, mode, r0, rows, i1, i2, j, ps, pz);
    } else if (c.static_groups && c.groupsize > 0 && c.perm[j] / c.groupsize != static_group) {
      static_group = c.perm[j] / c.groupsize;
      LoadParams(c.static_params + 2 * (r0 * c.groups + static_group), 2 * c.groups, rows, ps,
                 pz);
    }
    const float d = c.u[j * in + j];
    float* col = t + jj * kPanel;
    float* ecol = ev + jj * kPanel;
    QuantizeColumn(mode, col, ps, pz, maxq, d, qv + jj * kPanel, ecol, lt + jj * kPanel);
    if (c.feedback && j + 1 == w1) UpdateRestOfBlock(c, t, ev, i1, i2, w0, w1);
  }
  AddLoss(lt, rows, nb, s.loss.data());
  StorePanel(c, r0, rows, i1, nb, s, err);
}

#undef MOEC_PANEL_INLINE

}  // namespace

void SolveBlockPanels(const SolveContext& c, int64_t row_begin, int64_t row_end, int64_t i1,
                      int64_t i2, float* err, std::vector<PanelScratch>& scratch, int threads) {
  const int64_t panels = (row_end - row_begin + kPanel - 1) / kPanel;
  ParallelFor(panels, kMinPanelsPerChunk, threads, [&](int64_t b, int64_t e, int chunk) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t r0 = row_begin + p * kPanel;
      const int rows = static_cast<int>(std::min<int64_t>(kPanel, row_end - r0));
      SolvePanelBlock(c, r0, rows, i1, i2, err + (r0 - row_begin) * (i2 - i1), scratch[chunk]);
    }
  });
}

}  // namespace moec::quant::internal
