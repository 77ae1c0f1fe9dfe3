// GPTQ's Hessian preparation (quant/gptq.h): dead columns, the act-order permutation, damping
// and U, the upper Cholesky factor of the damped inverse Hessian.
#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/task_profile.h"
#include "quant/gptq.h"
#include "quant/gptq_internal.h"
#include "quant/parallel.h"

namespace moec::quant {
namespace {

using internal::Clock;

// out[i, j] = h[idx[i], idx[j]] for a contiguous fp32 [n, n] matrix, with out[i, i] = 1 where
// unit_diag[idx[i]] (may be null); one row-parallel pass that also checks every value is finite.
absl::StatusOr<at::Tensor> GatherSquare(const at::Tensor& h, const std::vector<int64_t>& idx,
                                        const bool* unit_diag, int threads) {
  const int64_t n = h.size(0);
  at::Tensor out = at::empty({n, n}, at::kFloat);
  const float* hp = h.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<char> bad(std::max(threads, 1), 0);
  // Reversed columns (the reversed Cholesky without act-order) are copied as such, which
  // vectorizes; the finiteness check runs on the source row (x * 0 is 0 for finite x).
  bool reversed = true;
  for (int64_t j = 0; j < n && reversed; ++j) reversed = idx[j] == n - 1 - j;
  internal::ParallelFor(n, 64, threads, [&](int64_t b, int64_t e, int chunk) {
    float acc = 0.0f;
    for (int64_t i = b; i < e; ++i) {
      const float* src = hp + idx[i] * n;
      float* dst = op + i * n;
      for (int64_t j = 0; j < n; ++j) acc += src[j] * 0.0f;
      if (reversed) {
        std::reverse_copy(src, src + n, dst);
      } else {
        for (int64_t j = 0; j < n; ++j) dst[j] = src[idx[j]];
      }
      if (unit_diag != nullptr && unit_diag[idx[i]]) dst[i] = 1.0f;
    }
    if (acc != 0.0f) bad[chunk] = 1;
  });
  for (char x : bad) {
    if (x) return absl::InvalidArgumentError("Hessian has non-finite values");
  }
  return out;
}

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
  // U = J inv J in place, a half-turn of the matrix: U[i, j] = inv[n-1-i, n-1-j], rows i and
  // n-1-i swapped together. inv's upper triangle (row-major) still holds h_rev, and it lands in
  // U's strictly lower part, which is zeroed. (A separate U cost a fresh 64 MiB at n = 4096,
  // 27 ms of page faults and copying against 8 ms in place.)
  const int64_t nn = n;
  internal::ParallelFor((nn + 1) / 2, 32, threads, [&](int64_t b, int64_t e, int) {
    std::vector<float> tmp(nn);
    for (int64_t i = b; i < e; ++i) {
      float* ri = a + i * nn;
      float* rk = a + (nn - 1 - i) * nn;
      std::reverse_copy(rk, rk + nn, tmp.data());
      if (rk != ri) std::reverse_copy(ri, ri + nn, rk);
      std::copy(tmp.begin(), tmp.end(), ri);
      std::fill(ri, ri + i, 0.0f);
      if (rk != ri) std::fill(rk, rk + (nn - 1 - i), 0.0f);
    }
  });
  return h_rev;
}

// ReversedFactor's math as ATen operations on h_damped's device (GptqEngine::kAten): the
// Cholesky factor of the reversed Hessian, then its inverse by a triangular solve.
absl::StatusOr<at::Tensor> ReversedFactorOnDevice(const at::Tensor& h_damped, double percdamp) {
  const int64_t n = h_damped.size(0);
  auto [l, info] = at::linalg_cholesky_ex(h_damped.flip({0, 1}));
  if (const int64_t bad = info.item<int64_t>(); bad != 0) {
    return NotPositiveDefinite(n, percdamp, n + 1 - bad, "Hessian");
  }
  at::Tensor inv = at::linalg_solve_triangular(l, at::eye(n, l.options()), /*upper=*/false);
  return inv.flip({0, 1}).triu().contiguous();
}

// Dead columns (decision 12: all dead -> identity Hessian, weights kept): sets r's dead mask,
// count and identity fallback, replaces h by the identity when it fires, and returns diag(H)
// with the dead entries set to 1.
at::Tensor MarkDeadColumns(at::Tensor& h, bool identity_fallback, GptqHessian* r) {
  const int64_t in = h.size(0);
  at::Tensor diag = h.diagonal().clone();
  r->dead = diag == 0;
  r->dead_columns = r->dead.sum().item<int64_t>();
  if (r->dead_columns == in && identity_fallback) {
    h = at::eye(in, h.options());
    diag.fill_(1.0f);
    r->identity_fallback = true;
    r->dead.zero_();
  } else {
    diag.masked_fill_(r->dead, 1.0f);
  }
  return diag;
}

// Act-order: columns by descending diag(H) (stable: ties keep the original order).
at::Tensor QuantizationOrder(const at::Tensor& diag, bool actorder) {
  if (actorder) {
    return std::get<1>(at::sort(diag, /*stable=*/true, /*dim=*/0, /*descending=*/true))
        .contiguous();
  }
  return at::arange(diag.size(0), diag.options().dtype(at::kLong));
}

// The same steps as ATen operations on h's device (GptqEngine): H in quantization order with
// the dead diagonal set to 1, checked finite, damped, factored.
absl::StatusOr<at::Tensor> PrepareOnDevice(at::Tensor& h, const GptqHessian& r, double percdamp,
                                           bool reference) {
  if (!at::isfinite(h).all().item<bool>()) {
    return absl::InvalidArgumentError("Hessian has non-finite values");
  }
  at::Tensor hq = h.index_select(0, r.perm).index_select(1, r.perm);
  hq.diagonal().masked_fill_(r.dead.index_select(0, r.perm), 1.0f);
  h = at::Tensor();
  Damp(hq, percdamp);
  if (reference) return ReferenceFactor(hq, percdamp);
  return ReversedFactorOnDevice(hq, percdamp);
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

absl::StatusOr<GptqHessian> PrepareGptqHessian(const at::Tensor& h_in, const GptqOptions& o) {
  if (absl::Status s = internal::ValidateGptqOptions(o); !s.ok()) return s;
  if (!h_in.defined() || h_in.dim() != 2 || h_in.size(0) != h_in.size(1) || h_in.size(0) == 0 ||
      !h_in.is_floating_point()) {
    return absl::InvalidArgumentError("Hessian must be a square floating-point [in, in] tensor");
  }
  const Clock::time_point t0 = Clock::now();
  const int64_t in = h_in.size(0);
  profile::ScopedPhase phase(profile::Phase::kSolve);
  profile::AddFlops(CountGptqFlops(0, in, o.blocksize, o.inverse_factor).factorization);
  const int threads = o.threads > 0 ? o.threads : internal::HardwareThreads();
  GptqHessian r;
  r.actorder = o.actorder;
  r.percdamp = o.percdamp;
  r.identity_fallback_option = o.identity_fallback;
  r.method = o.inverse_factor;

  at::Tensor h = h_in.to(at::kFloat).contiguous();  // no copy when already fp32
  const at::Tensor diag = MarkDeadColumns(h, o.identity_fallback, &r);
  r.perm = QuantizationOrder(diag, o.actorder);
  const bool reference = o.inverse_factor == InverseFactorMethod::kReference;
  if (internal::UseAtenSolve(o, h.device())) {
    absl::StatusOr<at::Tensor> u = PrepareOnDevice(h, r, o.percdamp, reference);
    if (!u.ok()) return u.status();
    r.u = *std::move(u);
    r.seconds = internal::Since(t0);
    return r;
  }
  const int64_t* pp = r.perm.data_ptr<int64_t>();

  // One gather: H in quantization order (for the reversed Cholesky also reversed), dead
  // diagonal entries set to 1, values checked finite. Then damping and U.
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
  r.seconds = internal::Since(t0);
  return r;
}

}  // namespace moec::quant
