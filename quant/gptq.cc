#include "quant/gptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quant/parallel.h"

namespace moec::quant {
namespace {

// Rows per thread chunk in the per-row parameter fits; panels (of kPanel rows) per chunk in the
// block loop.
constexpr int64_t kMinRowsPerChunk = 16;
constexpr int64_t kMinPanelsPerChunk = 2;

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// out[i, j] = h[idx[i], idx[j]] for a contiguous fp32 [n, n] matrix, with out[i, i] = 1 where
// unit_diag[idx[i]] (may be null); one row-parallel pass that also checks every value is finite.
absl::StatusOr<at::Tensor> GatherSquare(const at::Tensor& h, const std::vector<int64_t>& idx,
                                        const bool* unit_diag, int threads) {
  const int64_t n = h.size(0);
  at::Tensor out = at::empty({n, n}, at::kFloat);
  const float* hp = h.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<char> bad(std::max(threads, 1), 0);
  internal::ParallelFor(n, 64, threads, [&](int64_t b, int64_t e, int chunk) {
    bool ok = true;
    for (int64_t i = b; i < e; ++i) {
      const float* src = hp + idx[i] * n;
      float* dst = op + i * n;
      for (int64_t j = 0; j < n; ++j) {
        const float v = src[idx[j]];
        ok &= std::isfinite(v);
        dst[j] = v;
      }
      if (unit_diag != nullptr && unit_diag[idx[i]]) dst[i] = 1.0f;
    }
    if (!ok) bad[chunk] = 1;
  });
  for (char x : bad) {
    if (x) return absl::InvalidArgumentError("Hessian has non-finite values");
  }
  return out;
}


// Rows solved together: the per-column work of one row is a serial latency chain (quantize,
// divide, then update the rest of the block), so the kernel works on a panel of rows, transposed
// so that the kPanel rows of one column are contiguous and every step is a vector operation
// across rows. Each row's arithmetic is exactly the scalar sequence of the reference (no FMA
// contraction under -std=c++17), so the result does not depend on the panel width or the ISA.
constexpr int kPanel = 16;

// Everything the panel kernel reads.
struct SolveContext {
  const QuantizerOptions* qopt;
  int64_t in, groupsize, groups;  // groupsize = -1 or g
  bool static_groups, feedback, reference_group_fit;
  const float* u;              // [in, in] upper factor (row-major)
  const int64_t* perm;         // [in]
  const float* row_params;     // [out, 2] (scale, zero) of the whole row (groupsize == -1)
  const float* static_params;  // [out, groups, 2] static group params (original order)
  float* w;                    // [out, in] quantization order, updated in place; done columns
                               // hold w_hat
  uint8_t* codes;              // [out, in] quantization order
  float* scales;               // [out, groups]
  float* zeros;                // [out, groups]
};

// Scratch of one worker; panels are [block column][kPanel].
struct PanelScratch {
  explicit PanelScratch(int64_t bs, int64_t g)
      : t(bs * kPanel), snapshot(bs * kPanel), e(bs * kPanel), q(bs * kPanel),
        group(std::max<int64_t>(g, 1)), loss(bs) {}
  std::vector<float> t;         // the block's values (updated in place)
  std::vector<float> snapshot;  // block-start values (reference_group_fit)
  std::vector<float> e;         // scaled errors
  std::vector<uint8_t> q;       // codes
  std::vector<float> group;     // values a group is fitted on
  std::vector<double> loss;     // per column of the block, summed over the worker's rows
};

enum class LaneMode { kIntegerZero, kFloatZero, kSign };

// kPanel lanes as one GCC vector (one zmm register with AVX-512, two ymm with AVX2).
typedef float VecF __attribute__((vector_size(kPanel * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kPanel * sizeof(int32_t))));
typedef uint8_t VecB __attribute__((vector_size(kPanel)));

inline VecF LoadV(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void StoreV(float* p, VecF v) { std::memcpy(p, &v, sizeof(v)); }

// std::nearbyint (round half to even in the default rounding mode) of every lane: clamped to
// +-2^22 (beyond it the code clamps to 0 or maxq either way), then rounded by adding and
// subtracting 1.5 * 2^23, where the float spacing is 1.
inline VecF RoundHalfEven(VecF x) {
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
inline void QuantizeLanes(float* col, const float* ps, const float* pz, float maxq, float d,
                          uint8_t* q, float* e, float* loss) {
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
  // Load (transpose) the panel; padding lanes hold zeros with unit parameters.
  for (int64_t k = 0; k < nb; ++k) {
    for (int l = 0; l < kPanel; ++l) {
      t[k * kPanel + l] = l < rows ? c.w[(r0 + l) * in + i1 + k] : 0.0f;
    }
  }
  if (dynamic_groups && c.reference_group_fit) std::copy(t, t + nb * kPanel, s.snapshot.begin());
  float ps[kPanel], pz[kPanel], loss_terms[kPanel];
  for (int l = 0; l < kPanel; ++l) {
    ps[l] = 1.0f;
    pz[l] = 0.0f;
  }
  auto load_params = [&](const float* base, int64_t stride) {
    for (int l = 0; l < rows; ++l) {
      ps[l] = base[l * stride];
      pz[l] = base[l * stride + 1];
    }
  };
  if (c.groupsize <= 0) {
    load_params(c.row_params + 2 * r0, 2);
  } else if (dynamic_groups && i1 % c.groupsize != 0) {
    // The group of column i1 started in an earlier block; its parameters are stored.
    const int64_t gi = i1 / c.groupsize;
    for (int l = 0; l < rows; ++l) {
      ps[l] = c.scales[(r0 + l) * c.groups + gi];
      pz[l] = c.zeros[(r0 + l) * c.groups + gi];
    }
  }
  int64_t static_group = -1;
  for (int64_t j = i1; j < i2; ++j) {
    const int64_t jj = j - i1;
    if (dynamic_groups && j % c.groupsize == 0) {
      const int64_t gi = j / c.groupsize;
      const int64_t c1 = std::min(in, j + c.groupsize);
      const bool in_block = !c.reference_group_fit && c1 <= i2;  // values in t, up to date
      float mn[kPanel], mx[kPanel];
      if (in_block && mode != LaneMode::kSign) {
        // min(0, min x) and max(0, max x) of all lanes at once.
        for (int l = 0; l < kPanel; ++l) mn[l] = mx[l] = 0.0f;
        for (int64_t k = jj; k < c1 - i1; ++k) {
          const float* tk = t + k * kPanel;
          for (int l = 0; l < kPanel; ++l) {
            mn[l] = tk[l] < mn[l] ? tk[l] : mn[l];
            mx[l] = mx[l] < tk[l] ? tk[l] : mx[l];
          }
        }
      }
      for (int l = 0; l < rows; ++l) {
        RowParams p;
        if (in_block && mode != LaneMode::kSign) {
          p = FitRowFromRange(t + jj * kPanel + l, c1 - j, mn[l], mx[l], qo, kPanel);
        } else if (in_block) {
          p = FitRow(t + jj * kPanel + l, c1 - j, qo, kPanel);
        } else {
          const float* wr = c.w + (r0 + l) * in;
          for (int64_t k = j; k < c1; ++k) {
            float v;
            if (k < i2) {
              v = (c.reference_group_fit ? s.snapshot.data() : t)[(k - i1) * kPanel + l];
            } else if (c.reference_group_fit) {
              v = wr[k];
            } else {
              // Past the block: apply this block's pending (lazy) updates of columns i1..j-1.
              v = wr[k];
              for (int64_t tt = i1; tt < j; ++tt) v -= ev[(tt - i1) * kPanel + l] * c.u[tt * in + k];
            }
            s.group[k - j] = v;
          }
          p = FitRow(s.group.data(), c1 - j, qo);
        }
        ps[l] = p.scale;
        pz[l] = p.zero;
        c.scales[(r0 + l) * c.groups + gi] = p.scale;
        c.zeros[(r0 + l) * c.groups + gi] = p.zero;
      }
    } else if (c.static_groups && c.groupsize > 0 && c.perm[j] / c.groupsize != static_group) {
      static_group = c.perm[j] / c.groupsize;
      load_params(c.static_params + 2 * (r0 * c.groups + static_group), 2 * c.groups);
    }
    const float d = c.u[j * in + j];
    float* col = t + jj * kPanel;
    float* ecol = ev + jj * kPanel;
    switch (mode) {
      case LaneMode::kIntegerZero:
        QuantizeLanes<LaneMode::kIntegerZero>(col, ps, pz, maxq, d, qv + jj * kPanel, ecol,
                                              loss_terms);
        break;
      case LaneMode::kFloatZero:
        QuantizeLanes<LaneMode::kFloatZero>(col, ps, pz, maxq, d, qv + jj * kPanel, ecol,
                                            loss_terms);
        break;
      case LaneMode::kSign:
        QuantizeLanes<LaneMode::kSign>(col, ps, pz, maxq, d, qv + jj * kPanel, ecol, loss_terms);
        break;
    }
    double lsum = 0;
    for (int l = 0; l < rows; ++l) lsum += loss_terms[l];
    s.loss[jj] += lsum;
    if (c.feedback) {
      // Rank-1 update of the rest of the block: W[:, k] -= e * U[j, k].
      const float* ur = c.u + j * in;
      const VecF ev_j = LoadV(ecol);
      for (int64_t k = j + 1; k < i2; ++k) {
        float* tk = t + (k - i1) * kPanel;
        StoreV(tk, LoadV(tk) - ev_j * ur[k]);
      }
    }
  }
  // Store (transpose back) values, codes and errors.
  for (int l = 0; l < rows; ++l) {
    float* wr = c.w + (r0 + l) * in + i1;
    uint8_t* qr = c.codes + (r0 + l) * in + i1;
    float* er = err + (r0 + l) * nb;
    for (int64_t k = 0; k < nb; ++k) {
      wr[k] = t[k * kPanel + l];
      qr[k] = qv[k * kPanel + l];
      er[k] = ev[k * kPanel + l];
    }
  }
}

absl::Status ValidateGptqOptions(const GptqOptions& o) {
  if (absl::Status s = ValidateQuantizerOptions(o.quantizer); !s.ok()) return s;
  if (o.blocksize < 1) {
    return absl::InvalidArgumentError(absl::StrCat("blocksize must be >= 1, got ", o.blocksize));
  }
  if (!(o.percdamp >= 0) || !std::isfinite(o.percdamp)) {
    return absl::InvalidArgumentError(absl::StrCat("percdamp must be >= 0, got ", o.percdamp));
  }
  if (o.groupsize == 0 || o.groupsize < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("groupsize must be -1 or positive, got ", o.groupsize));
  }
  return absl::OkStatus();
}

}  // namespace

// --- Solve ----------------------------------------------------------------------------------

namespace {

// LAPACK (OpenBLAS's, the library libtorch computes with), called on our own row-major buffers:
// a symmetric matrix's row-major buffer is also its column-major one, so no transposed copy is
// needed (at::linalg_cholesky makes one, and its triangular solves are slower than trtri).
// Fortran ABI: every argument by pointer, the hidden lengths of character arguments last.
extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info, size_t uplo_len);
void strtri_(const char* uplo, const char* diag, const int* n, float* a, const int* lda, int* info,
             size_t uplo_len, size_t diag_len);
}

absl::Status NotPositiveDefinite(int64_t n, double percdamp, int64_t info, const char* what) {
  return absl::FailedPreconditionError(absl::StrCat(
      what, " [", n, ", ", n, "] is not positive definite after damping ", percdamp,
      " * mean(diag) (cholesky failed at column ", info, "); raise percdamp"));
}

}  // namespace

namespace {

void Damp(at::Tensor& h, double percdamp) {
  at::Tensor diag = h.diagonal();
  const double damp = percdamp * diag.mean().item<double>();
  diag.add_(damp);
}

absl::StatusOr<at::Tensor> ReferenceFactor(const at::Tensor& h, double percdamp) {
  const int64_t n = h.size(0);
  auto [l, info] = at::linalg_cholesky_ex(h);
  if (info.item<int64_t>() != 0) {
    return NotPositiveDefinite(n, percdamp, info.item<int64_t>(), "Hessian");
  }
  at::Tensor hinv = at::cholesky_inverse(l);
  l = at::Tensor();
  auto [u, info2] = at::linalg_cholesky_ex(hinv, /*upper=*/true);
  if (info2.item<int64_t>() != 0) {
    return NotPositiveDefinite(n, percdamp, info2.item<int64_t>(), "inverse Hessian (fp32)");
  }
  return u.contiguous();
}

// h_rev = J H J (damped). J H J = L' L'^T gives H = R R^T with R = J L' J upper triangular, so
// H^-1 = (R^-1)^T R^-1 and R^-1 = J L'^-1 J is the upper Cholesky factor of H^-1. In place on
// h_rev: LAPACK's upper factor of the column-major matrix (= h_rev) is L'^T, i.e. L' in row-major
// order; its inverse likewise leaves L'^-1 in the row-major lower triangle.
absl::StatusOr<at::Tensor> ReversedFactor(at::Tensor& h_rev, double percdamp, int threads) {
  const int n = static_cast<int>(h_rev.size(0));
  float* a = h_rev.data_ptr<float>();
  int info = 0;
  spotrf_("U", &n, a, &n, &info, 1);
  if (info > 0) return NotPositiveDefinite(n, percdamp, n + 1 - info, "Hessian");
  if (info < 0) return absl::InternalError(absl::StrCat("spotrf: argument ", -info, " is invalid"));
  strtri_("U", "N", &n, a, &n, &info, 1, 1);
  if (info != 0) {
    return absl::InternalError(absl::StrCat("strtri of the Hessian's Cholesky factor: info ", info));
  }
  // U = J inv J: row i of U is row n-1-i of inv reversed; inv's upper triangle (row-major) still
  // holds h_rev, so U's strictly lower part is written as zeros.
  at::Tensor u = at::empty({n, n}, at::kFloat);
  float* up = u.data_ptr<float>();
  internal::ParallelFor(n, 64, threads, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float* src = a + (n - 1 - i) * static_cast<int64_t>(n);  // inv row r = n-1-i, c <= r
      float* dst = up + i * static_cast<int64_t>(n);
      std::fill(dst, dst + i, 0.0f);
      for (int64_t j = i; j < n; ++j) dst[j] = src[n - 1 - j];
    }
  });
  return u;
}

}  // namespace

absl::StatusOr<at::Tensor> InverseHessianFactor(at::Tensor& h, double percdamp,
                                                InverseFactorMethod method) {
  if (h.dim() != 2 || h.size(0) != h.size(1) || h.scalar_type() != at::kFloat ||
      !h.is_contiguous()) {
    return absl::InvalidArgumentError("InverseHessianFactor needs a contiguous fp32 [n, n] matrix");
  }
  Damp(h, percdamp);
  if (method == InverseFactorMethod::kReference) return ReferenceFactor(h, percdamp);
  const int threads = internal::HardwareThreads();
  std::vector<int64_t> rev(h.size(0));
  for (int64_t i = 0; i < h.size(0); ++i) rev[i] = h.size(0) - 1 - i;
  absl::StatusOr<at::Tensor> h_rev = GatherSquare(h, rev, nullptr, threads);
  if (!h_rev.ok()) return h_rev.status();
  return ReversedFactor(*h_rev, percdamp, threads);
}

GptqFlops CountGptqFlops(int64_t out, int64_t in, int64_t blocksize, InverseFactorMethod method) {
  GptqFlops f;
  const double o = static_cast<double>(out);
  for (int64_t i1 = 0; i1 < in; i1 += blocksize) {
    const int64_t i2 = std::min(in, i1 + blocksize);
    const double nb = static_cast<double>(i2 - i1);
    f.lazy_update += 2.0 * o * nb * static_cast<double>(in - i2);
    f.intra_block += o * nb * (nb - 1.0);
  }
  const double n = static_cast<double>(in);
  // LAPACK nominal counts: potrf n^3/3, trtri n^3/3, potri (trtri + lauum) 2n^3/3.
  f.factorization = (method == InverseFactorMethod::kReference ? 4.0 / 3.0 : 2.0 / 3.0) * n * n * n;
  return f;
}

absl::StatusOr<GptqHessian> PrepareGptqHessian(const at::Tensor& h_in, const GptqOptions& o) {
  if (absl::Status s = ValidateGptqOptions(o); !s.ok()) return s;
  if (!h_in.defined() || h_in.dim() != 2 || h_in.size(0) != h_in.size(1) || h_in.size(0) == 0 ||
      !h_in.is_floating_point()) {
    return absl::InvalidArgumentError("Hessian must be a square floating-point [in, in] tensor");
  }
  const Clock::time_point t0 = Clock::now();
  const int64_t in = h_in.size(0);
  const int threads = o.threads > 0 ? o.threads : internal::HardwareThreads();
  GptqHessian r;
  r.actorder = o.actorder;
  r.percdamp = o.percdamp;
  r.identity_fallback_option = o.identity_fallback;
  r.method = o.inverse_factor;

  // Dead columns (decision 12: all dead -> identity Hessian, weights kept).
  at::Tensor h = h_in.to(at::kFloat).contiguous();  // no copy when already fp32
  at::Tensor diag = h.diagonal().clone();
  r.dead = diag == 0;
  r.dead_columns = r.dead.sum().item<int64_t>();
  if (r.dead_columns == in && o.identity_fallback) {
    h = at::eye(in, at::kFloat);
    diag.fill_(1.0f);
    r.identity_fallback = true;
    r.dead.zero_();
  } else {
    diag.masked_fill_(r.dead, 1.0f);
  }

  // Act-order: columns by descending diag(H) (stable: ties keep the original order).
  if (o.actorder) {
    r.perm = std::get<1>(at::sort(diag, /*stable=*/true, /*dim=*/0, /*descending=*/true))
                 .contiguous();
  } else {
    r.perm = at::arange(in, at::kLong);
  }
  const int64_t* pp = r.perm.data_ptr<int64_t>();

  // One gather: H in quantization order (for the reversed Cholesky also reversed), dead
  // diagonal entries set to 1, values checked finite. Then damping and U.
  const bool reference = o.inverse_factor == InverseFactorMethod::kReference;
  std::vector<int64_t> q(in);
  for (int64_t i = 0; i < in; ++i) q[i] = reference ? pp[i] : pp[in - 1 - i];
  absl::StatusOr<at::Tensor> hq = GatherSquare(h, q, r.dead.data_ptr<bool>(), threads);
  if (!hq.ok()) return hq.status();
  h = at::Tensor();
  Damp(*hq, o.percdamp);
  absl::StatusOr<at::Tensor> u =
      reference ? ReferenceFactor(*hq, o.percdamp) : ReversedFactor(*hq, o.percdamp, threads);
  if (!u.ok()) return u.status();
  r.u = u->contiguous();
  r.seconds = Since(t0);
  return r;
}

absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& w, const at::Tensor& h,
                                        const GptqOptions& o) {
  if (absl::Status s = ValidateGptqOptions(o); !s.ok()) return s;
  if (!w.defined() || w.dim() != 2 || !w.is_floating_point() || w.size(1) == 0) {
    return absl::InvalidArgumentError(
        "weight must be a 2-D floating-point tensor [out, in] with in > 0");
  }
  const int64_t in = w.size(1);
  if (!h.defined() || h.dim() != 2 || h.size(0) != in || h.size(1) != in) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hessian must be a floating-point [", in, ", ", in, "] tensor"));
  }
  absl::StatusOr<GptqHessian> prepared = PrepareGptqHessian(h, o);
  if (!prepared.ok()) return prepared.status();
  absl::StatusOr<GptqResult> r = GptqQuantize(w, *prepared, o);
  if (r.ok()) r->seconds.factorization = prepared->seconds;
  return r;
}

absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& w_in, const GptqHessian& hess,
                                        const GptqOptions& o) {
  if (absl::Status s = ValidateGptqOptions(o); !s.ok()) return s;
  if (!w_in.defined() || w_in.dim() != 2 || !w_in.is_floating_point()) {
    return absl::InvalidArgumentError("weight must be a 2-D floating-point tensor [out, in]");
  }
  const int64_t out = w_in.size(0), in = w_in.size(1);
  if (in == 0) return absl::InvalidArgumentError("weight has no columns");
  if (!hess.u.defined() || hess.u.size(0) != in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prepared Hessian is for ", hess.u.defined() ? hess.u.size(0) : 0,
        " input features, the weight has ", in));
  }
  if (hess.actorder != o.actorder || hess.percdamp != o.percdamp ||
      hess.identity_fallback_option != o.identity_fallback || hess.method != o.inverse_factor) {
    return absl::InvalidArgumentError(
        "prepared Hessian was made with other actorder / percdamp / identity_fallback / "
        "inverse_factor options");
  }
  Clock::time_point t0 = Clock::now();
  const int threads = o.threads > 0 ? o.threads : internal::HardwareThreads();
  const at::Tensor src = w_in.to(at::kFloat).contiguous();  // no copy when already fp32
  const float* sp = src.data_ptr<float>();
  const QuantizerOptions& qo = o.quantizer;
  const int64_t g = o.groupsize;
  const int64_t groups = g > 0 ? (in + g - 1) / g : 1;
  const bool static_groups = o.static_groups && g > 0;
  const bool zero_dead = hess.dead_columns > 0 && !hess.identity_fallback;
  const at::Tensor dead_mask = hess.dead.to(at::kBool).contiguous();
  const bool* dead = dead_mask.data_ptr<bool>();
  const at::Tensor perm = hess.perm.contiguous();
  const int64_t* pp = perm.data_ptr<int64_t>();
  GptqResult result;
  result.dead_columns = hess.dead_columns;
  result.identity_fallback = hess.identity_fallback;

  // 1. Whole-row parameters on the original W (reference: before dead columns are zeroed).
  // 2. The working copy: dead columns zeroed (the prepared Hessian's diagonal is 1 there),
  //    columns in quantization order, values checked finite; one pass.
  // 3. Static groups: parameters of consecutive original columns of the zeroed W.
  at::Tensor row_params = at::empty({out, 2}, at::kFloat);
  at::Tensor static_params = at::empty({static_groups ? out : 0, groups, 2}, at::kFloat);
  at::Tensor w = at::empty({out, in}, at::kFloat);
  {
    float* rp = row_params.data_ptr<float>();
    float* stp = static_params.data_ptr<float>();
    float* wp = w.data_ptr<float>();
    std::vector<char> bad(threads, 0);
    internal::ParallelFor(out, kMinRowsPerChunk, threads, [&](int64_t b, int64_t e, int chunk) {
      std::vector<float> row(static_groups && zero_dead ? in : 0);
      bool ok = true;
      for (int64_t r = b; r < e; ++r) {
        const float* x = sp + r * in;
        if (g <= 0) {
          const RowParams p = FitRow(x, in, qo);
          rp[2 * r] = p.scale;
          rp[2 * r + 1] = p.zero;
        }
        float* dst = wp + r * in;
        if (o.actorder) {
          for (int64_t j = 0; j < in; ++j) {
            const float v = x[pp[j]];
            ok &= std::isfinite(v);
            dst[j] = zero_dead && dead[pp[j]] ? 0.0f : v;
          }
        } else {
          float acc = 0.0f;  // x * 0 is 0 for finite x, NaN otherwise
          for (int64_t j = 0; j < in; ++j) {
            acc += x[j] * 0.0f;
            dst[j] = x[j];
          }
          ok &= acc == 0.0f;
          if (zero_dead) {
            for (int64_t j = 0; j < in; ++j) dst[j] = dead[j] ? 0.0f : dst[j];
          }
        }
        if (static_groups) {
          if (zero_dead) {
            for (int64_t col = 0; col < in; ++col) row[col] = dead[col] ? 0.0f : x[col];
            x = row.data();
          }
          for (int64_t gi = 0; gi < groups; ++gi) {
            const int64_t c0 = gi * g, c1 = std::min(in, c0 + g);
            const RowParams p = FitRow(x + c0, c1 - c0, qo);
            stp[2 * (r * groups + gi)] = p.scale;
            stp[2 * (r * groups + gi) + 1] = p.zero;
          }
        }
      }
      if (!ok) bad[chunk] = 1;
    });
    for (char b : bad) {
      if (b) return absl::InvalidArgumentError("weight has non-finite values");
    }
  }
  const at::Tensor u = hess.u;
  result.seconds.prepare = Since(t0);

  // 7. Blocked solve.
  at::Tensor codes = at::empty({out, in}, at::kByte);
  at::Tensor scales = at::empty({out, groups}, at::kFloat);
  at::Tensor zeros = at::empty({out, groups}, at::kFloat);
  if (g <= 0) {
    scales.select(1, 0).copy_(row_params.select(1, 0));
    zeros.select(1, 0).copy_(row_params.select(1, 1));
  }
  SolveContext c;
  c.qopt = &qo;
  c.in = in;
  c.groupsize = g;
  c.groups = groups;
  c.static_groups = static_groups;
  c.feedback = !(o.mcmoe_blockwise_feedback && qo.bits <= 3);
  c.reference_group_fit = o.reference_group_fit;
  c.u = u.data_ptr<float>();
  c.perm = perm.data_ptr<int64_t>();
  c.row_params = row_params.data_ptr<float>();
  c.static_params = static_groups ? static_params.data_ptr<float>() : nullptr;
  c.w = w.data_ptr<float>();
  c.codes = codes.data_ptr<uint8_t>();
  c.scales = scales.data_ptr<float>();
  c.zeros = zeros.data_ptr<float>();

  const int64_t bs = std::min(o.blocksize, in);
  std::vector<PanelScratch> scratch;
  scratch.reserve(threads);
  for (int i = 0; i < threads; ++i) scratch.emplace_back(bs, g);
  std::vector<double> column_loss(in, 0.0);
  at::Tensor err_buf = at::empty({out, bs}, at::kFloat);
  const int64_t panels = (out + kPanel - 1) / kPanel;
  for (int64_t i1 = 0; i1 < in; i1 += bs) {
    const int64_t i2 = std::min(in, i1 + bs), nb = i2 - i1;
    at::Tensor err = nb == bs ? err_buf : at::empty({out, nb}, at::kFloat);
    float* ep = err.data_ptr<float>();
    for (PanelScratch& s : scratch) std::fill(s.loss.begin(), s.loss.end(), 0.0);
    t0 = Clock::now();
    internal::ParallelFor(panels, kMinPanelsPerChunk, threads, [&](int64_t b, int64_t e, int chunk) {
      for (int64_t p = b; p < e; ++p) {
        const int64_t r0 = p * kPanel;
        const int rows = static_cast<int>(std::min<int64_t>(kPanel, out - r0));
        SolvePanelBlock(c, r0, rows, i1, i2, ep, scratch[chunk]);
      }
    });
    for (const PanelScratch& s : scratch) {
      for (int64_t j = 0; j < nb; ++j) column_loss[i1 + j] += s.loss[j];
    }
    result.seconds.blocks += Since(t0);
    t0 = Clock::now();
    if (i2 < in) {
      // Lazy batch update: W[:, i2:] -= Err @ U[i1:i2, i2:].
      at::Tensor rest = w.narrow(1, i2, in - i2);
      rest.addmm_(err, u.narrow(0, i1, nb).narrow(1, i2, in - i2), /*beta=*/1.0, /*alpha=*/-1.0);
    }
    result.seconds.lazy_update += Since(t0);
  }
  t0 = Clock::now();

  if (static_groups) {
    scales.copy_(static_params.select(2, 0));
    zeros.copy_(static_params.select(2, 1));
  }

  // 8. Undo the permutation; g_idx.
  const at::Tensor invperm = at::argsort(perm);
  at::Tensor g_idx;
  if (g <= 0) {
    g_idx = at::zeros({in}, at::kInt);
  } else if (o.actorder && !static_groups) {
    // Groups were formed in quantization order: g_idx[perm[j]] = j / g.
    g_idx = invperm.div(g, "floor").to(at::kInt);
  } else {
    g_idx = at::arange(in, at::kLong).div(g, "floor").to(at::kInt);
  }
  at::Tensor loss_perm = at::empty({in}, at::kDouble);
  std::copy(column_loss.begin(), column_loss.end(), loss_perm.data_ptr<double>());
  if (o.actorder) {
    // Back to the original column order: out[:, c] = permuted[:, invperm[c]].
    result.weight = at::empty({out, in}, at::kFloat);
    result.q = at::empty({out, in}, at::kByte);
    const int64_t* ip = invperm.data_ptr<int64_t>();
    const float* wp = w.data_ptr<float>();
    const uint8_t* cp = codes.data_ptr<uint8_t>();
    float* wo = result.weight.data_ptr<float>();
    uint8_t* co = result.q.data_ptr<uint8_t>();
    internal::ParallelFor(out, kMinRowsPerChunk, threads, [&](int64_t b, int64_t e, int) {
      // One gather per output array and row: each loop streams one destination row while its
      // source row stays in L1 (with the two gathers interleaved this phase took 60 ms instead
      // of 45-53 on 4096 x 4096).
      for (int64_t r = b; r < e; ++r) {
        const float* ws = wp + r * in;
        float* wd = wo + r * in;
        for (int64_t col = 0; col < in; ++col) wd[col] = ws[ip[col]];
        const uint8_t* cs = cp + r * in;
        uint8_t* cd = co + r * in;
        for (int64_t col = 0; col < in; ++col) cd[col] = cs[ip[col]];
      }
    });
    result.column_loss = loss_perm.index_select(0, invperm).to(at::kFloat);
  } else {
    result.weight = w;
    result.q = codes;
    result.column_loss = loss_perm.to(at::kFloat);
  }
  result.total_loss = 0;
  for (double l : column_loss) result.total_loss += l;
  result.scales = scales;
  result.zeros = zeros;
  result.g_idx = g_idx;
  result.perm = perm;
  result.seconds.finish = Since(t0);
  return result;
}

}  // namespace moec::quant
