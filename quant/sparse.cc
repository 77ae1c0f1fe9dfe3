#include "quant/sparse.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "quant/gptq.h"
#include "quant/parallel.h"

namespace moec::quant {
namespace {

absl::Status Check(const at::Tensor& w, double ratio, SparsityPattern p) {
  if (!w.defined() || w.dim() != 2) return absl::InvalidArgumentError("weight must be [out, in]");
  if (!(ratio >= 0 && ratio < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("sparsity ", ratio, " outside [0, 1)"));
  }
  if (p.structured() && (p.n < 0 || p.n > p.m || w.size(1) % p.m != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(p.n, ":", p.m, " does not fit ", w.size(1),
                                                   " input columns"));
  }
  return absl::OkStatus();
}

// The k smallest values of each row of `metric` (fp32, contiguous, finite, no sign bit set),
// ties at the k-th smallest t taken in column order as a stable sort takes them: every value
// below t, then the first (k - below) values equal to t. Such floats order as their bit
// patterns, so t is found by a radix select: a histogram of the top 12 bits finds t's bucket,
// whose few values nth_element orders; every pass over the row is branch-free (a partitioning
// select over the whole row mispredicts half its comparisons). Rows over the hardware threads.
// The k-th smallest value t of row[0, cols) (non-negative and finite) and how many values equal
// to t are among the k smallest (taken in column order). `count` and `bucket` are scratch.
struct RowThreshold {
  float t = 0;
  int64_t room = 0;
};
// Buckets of SelectRow's histogram: the top 11 bits of a float whose sign bit is clear.
constexpr int kSelectShift = 20;
constexpr int kSelectBuckets = 1 << (31 - kSelectShift);

RowThreshold SelectRow(const float* row, int64_t cols, int64_t k, std::vector<uint32_t>& count,
                       std::vector<float>& bucket) {
  const auto key = [&](int64_t c) {
    uint32_t u;
    std::memcpy(&u, row + c, sizeof(u));
    return u >> kSelectShift;
  };
  std::fill(count.begin(), count.end(), 0);
  for (int64_t c = 0; c < cols; ++c) ++count[key(c)];
  uint32_t hit = 0;
  int64_t below = 0;
  while (below + count[hit] < k) below += count[hit++];
  int64_t n = 0;
  for (int64_t c = 0; c < cols; ++c) {
    bucket[n] = row[c];
    n += key(c) == hit;
  }
  std::nth_element(bucket.begin(), bucket.begin() + (k - below - 1), bucket.begin() + n);
  RowThreshold r;
  r.t = bucket[k - below - 1];
  for (int64_t i = 0; i < n; ++i) below += bucket[i] < r.t;
  r.room = k - below;  // values equal to t that are taken, in column order
  return r;
}

at::Tensor SmallestPerRow(const at::Tensor& metric, int64_t k) {
  const int64_t rows = metric.size(0), cols = metric.size(1);
  at::Tensor mask = at::empty({rows, cols}, at::kBool);
  const float* m = metric.data_ptr<float>();
  bool* out = mask.data_ptr<bool>();
  internal::ParallelFor(rows, std::max<int64_t>(1, (1 << 16) / cols), 0, [&](int64_t b, int64_t e, int) {
    std::vector<uint32_t> count(kSelectBuckets);
    std::vector<float> bucket(cols);
    for (int64_t r = b; r < e; ++r) {
      const float* row = m + r * cols;
      const RowThreshold th = SelectRow(row, cols, k, count, bucket);
      int64_t equal = 0;
      bool* o = out + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        const bool eq = row[c] == th.t;
        o[c] = (row[c] < th.t) | (eq & (equal < th.room));
        equal += eq;
      }
    }
  });
  return mask;
}

// The pruned row `o` of `row` (its metric's k smallest set to +0, as SelectRow's threshold says)
// and its PackMask bytes `m`; adds the row's zeros to *zeros. Branch-free, a byte of the mask
// per 8 columns (a byte store per column would alias every load of the loop).
void PruneRow(const float* row, const float* metric, int64_t cols, RowThreshold th, float* o,
              uint8_t* m, int64_t* zeros) {
  int64_t equal = 0, z = 0;
  for (int64_t c0 = 0; c0 < cols; c0 += 8) {
    const int64_t n = std::min<int64_t>(8, cols - c0);
    uint32_t byte = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float v = metric[c0 + j];
      const bool eq = v == th.t;
      const uint32_t pruned = (v < th.t) | (eq & (equal < th.room));
      equal += eq;
      uint32_t u;
      std::memcpy(&u, row + c0 + j, sizeof(u));
      u &= pruned - 1u;  // pruned: +0
      std::memcpy(o + c0 + j, &u, sizeof(u));
      z += (u << 1) == 0;  // ±0
      byte |= pruned << j;
    }
    m[c0 >> 3] = static_cast<uint8_t>(byte);
  }
  *zeros += z;
}

// Wanda, unstructured, fused per row: the metric |w| * scale, its selection, the pruned row and
// its packed mask (PackMask's layout), with no full-size intermediate. False (and the outputs
// unspecified) when a metric is negative or not finite, where the radix selection does not apply.
bool WandaRows(const at::Tensor& w, const at::Tensor& scale, int64_t k, at::Tensor& out,
               at::Tensor& packed, int64_t* zeros) {
  const int64_t rows = w.size(0), cols = w.size(1), bytes = packed.size(1);
  const float* wp = w.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  uint8_t* mp = packed.data_ptr<uint8_t>();
  std::atomic<bool> bad{false};
  std::atomic<int64_t> zero_count{0};
  internal::ParallelFor(rows, std::max<int64_t>(1, (1 << 16) / cols), 0, [&](int64_t b, int64_t e, int) {
    std::vector<uint32_t> count(kSelectBuckets);
    std::vector<float> bucket(cols), metric(cols);
    int64_t z = 0;
    for (int64_t r = b; r < e && !bad.load(std::memory_order_relaxed); ++r) {
      const float* row = wp + r * cols;
      uint32_t flags = 0;
      for (int64_t c = 0; c < cols; ++c) {
        metric[c] = std::fabs(row[c]) * sp[c];
        uint32_t u;
        std::memcpy(&u, &metric[c], sizeof(u));
        flags |= (u >> 31) | static_cast<uint32_t>(!(metric[c] <= std::numeric_limits<float>::max()));
      }
      if (flags != 0) {
        bad = true;
        return;
      }
      const RowThreshold th = SelectRow(metric.data(), cols, k, count, bucket);
      PruneRow(row, metric.data(), cols, th, op + r * cols, mp + r * bytes, &z);
    }
    zero_count += z;
  });
  *zeros = zero_count.load();
  return !bad.load();
}

// n smallest of each group of m columns, per row.
at::Tensor NmMask(const at::Tensor& metric, SparsityPattern p) {
  const int64_t out = metric.size(0), in = metric.size(1);
  at::Tensor groups = metric.reshape({out, in / p.m, p.m});
  at::Tensor idx = std::get<1>(groups.topk(p.n, -1, /*largest=*/false));
  return at::zeros({out, in / p.m, p.m}, metric.options().dtype(at::kBool)).scatter_(-1, idx, true).reshape({out, in});
}

absl::Status CheckSparseGpt(const at::Tensor& weight, const at::Tensor& hessian,
                            const SparseGptOptions& o) {
  if (absl::Status s = Check(weight, o.ratio, o.pattern); !s.ok()) return s;
  const int64_t cols = weight.size(1);
  if (!hessian.defined() || hessian.dim() != 2 || hessian.size(0) != cols || hessian.size(1) != cols) {
    return absl::InvalidArgumentError(absl::StrCat("Hessian must be [", cols, ", ", cols, "]"));
  }
  if (o.blocksize < 1 || (o.pattern.structured() && o.blocksize % o.pattern.m != 0)) {
    return absl::InvalidArgumentError("blocksize must be positive and a multiple of m");
  }
  return absl::OkStatus();
}

// Dead columns (H_jj = 0) are zeroed in w and get H_jj = 1; then H is damped and the upper
// Cholesky factor of H^-1 returned.
absl::StatusOr<at::Tensor> InverseFactor(at::Tensor& w, at::Tensor& h, double percdamp) {
  const at::Tensor dead = h.diagonal() == 0;
  h.diagonal().masked_fill_(dead, 1);
  w.index_put_({at::indexing::Slice(), dead}, 0);
  const double damp = percdamp * h.diagonal().mean().item<double>();
  h.diagonal().add_(damp);
  at::Tensor l, info;
  std::tie(l, info) = at::linalg_cholesky_ex(h);
  if (info.item<int>() != 0) return absl::FailedPreconditionError("Hessian is not positive definite");
  at::Tensor hinv;
  std::tie(hinv, info) = at::linalg_cholesky_ex(at::cholesky_inverse(l), /*upper=*/true);
  if (info.item<int>() != 0) return absl::FailedPreconditionError("inverse Hessian is not positive definite");
  return hinv;
}

// Prunes columns [i1, i1 + blocksize) of w column by column and propagates the errors.
void PruneBlock(at::Tensor& w, const at::Tensor& hinv, int64_t i1, const SparseGptOptions& o) {
  const int64_t cols = w.size(1);
  const int64_t i2 = std::min(i1 + o.blocksize, cols), count = i2 - i1;
  at::Tensor w1 = w.narrow(1, i1, count).clone();
  at::Tensor q1 = at::zeros_like(w1), err1 = at::zeros_like(w1);
  const at::Tensor hinv1 = hinv.narrow(0, i1, count).narrow(1, i1, count);
  const at::Tensor d = hinv1.diagonal();
  at::Tensor mask1;
  if (!o.pattern.structured()) {
    const at::Tensor tmp = w1.pow(2) / d.reshape({1, -1}).pow(2);
    const at::Tensor sorted = std::get<0>(at::sort(tmp.reshape(-1)));
    const int64_t k = static_cast<int64_t>(tmp.numel() * o.ratio);
    mask1 = o.ratio > 0 ? tmp <= sorted[std::min(k, tmp.numel() - 1)] : at::zeros_like(tmp, at::kBool);
  } else {
    mask1 = at::zeros(w1.sizes(), w1.options().dtype(at::kBool));
  }
  for (int64_t i = 0; i < count; ++i) {
    if (o.pattern.structured() && i % o.pattern.m == 0) {
      const at::Tensor tmp = w1.narrow(1, i, o.pattern.m).pow(2) /
                             d.narrow(0, i, o.pattern.m).reshape({1, -1}).pow(2);
      mask1.scatter_(1, i + std::get<1>(tmp.topk(o.pattern.n, 1, /*largest=*/false)), true);
    }
    const at::Tensor col = w1.select(1, i);
    const at::Tensor q = col.masked_fill(mask1.select(1, i), 0);
    q1.select(1, i).copy_(q);
    const at::Tensor e = (col - q) / hinv1[i][i];
    w1.narrow(1, i, count - i).sub_(e.unsqueeze(1).matmul(hinv1[i].narrow(0, i, count - i).unsqueeze(0)));
    err1.select(1, i).copy_(e);
  }
  w.narrow(1, i1, count).copy_(q1);
  if (i2 < cols) w.narrow(1, i2, cols - i2).sub_(err1.matmul(hinv.narrow(0, i1, count).narrow(1, i2, cols - i2)));
}

}  // namespace

absl::StatusOr<at::Tensor> WandaMask(const at::Tensor& w, const at::Tensor& norm2, double ratio,
                                     SparsityPattern pattern) {
  if (absl::Status s = Check(w, ratio, pattern); !s.ok()) return s;
  profile::ScopedPhase phase(profile::Phase::kSolve);
  if (!norm2.defined() || norm2.numel() != w.size(1)) {
    return absl::InvalidArgumentError("Wanda needs one input norm per column");
  }
  const at::Tensor metric = w.to(at::kFloat).abs() * norm2.to(w.device(), at::kFloat).sqrt().reshape({1, -1});
  if (pattern.structured()) return NmMask(metric, pattern);
  const int64_t k = static_cast<int64_t>(std::floor(w.size(1) * ratio));
  if (k == 0) return at::zeros(w.sizes(), w.options().dtype(at::kBool));
  if (metric.is_cpu() && at::isfinite(metric).all().item<bool>() &&
      !at::signbit(metric).any().item<bool>()) {
    return SmallestPerRow(metric.contiguous(), k);
  }
  // The k smallest of each row, ties taken in column order as the reference's stable sort takes
  // them, by selection instead of sorting (a sort of every row was a third of a Wanda job):
  // every value below the row's k-th smallest t, then the first (k - below) values equal to t.
  const at::Tensor t = std::get<0>(metric.kthvalue(k, /*dim=*/1, /*keepdim=*/true));
  const at::Tensor below = metric < t;
  const at::Tensor equal = metric == t;
  const at::Tensor room = k - below.sum(1, /*keepdim=*/true);
  return below | (equal & (equal.cumsum(1) <= room));
}

absl::StatusOr<PrunedWeight> WandaPrune(const at::Tensor& w, const at::Tensor& norm2,
                                        double ratio, SparsityPattern pattern) {
  if (absl::Status st = Check(w, ratio, pattern); !st.ok()) return st;
  if (!norm2.defined() || norm2.numel() != w.size(1)) {
    return absl::InvalidArgumentError("Wanda needs one input norm per column");
  }
  const int64_t k = static_cast<int64_t>(std::floor(w.size(1) * ratio));
  PrunedWeight r;
  if (w.is_cpu() && !pattern.structured() && k > 0) {
    profile::ScopedPhase phase(profile::Phase::kSolve);
    const at::Tensor wf = w.to(at::kFloat).contiguous();
    const at::Tensor scale = norm2.to(at::kCPU, at::kFloat).sqrt().contiguous();
    r.weight = at::empty_like(wf);
    r.mask = at::empty({wf.size(0), (wf.size(1) + 7) / 8}, wf.options().dtype(at::kByte));
    if (WandaRows(wf, scale, k, r.weight, r.mask, &r.zeros)) return r;
  }
  MOEC_ASSIGN_OR_RETURN(at::Tensor mask, WandaMask(w, norm2, ratio, pattern));
  r.weight = w.to(at::kFloat).masked_fill(mask, 0);
  r.zeros = (r.weight == 0).sum().item<int64_t>();
  r.mask = PackMask(mask);
  return r;
}

at::Tensor PackMask(const at::Tensor& mask) {
  const int64_t rows = mask.size(0), cols = mask.size(1), bytes = (cols + 7) / 8;
  at::Tensor bits = mask.to(at::kByte);
  if (bytes * 8 != cols) bits = at::constant_pad_nd(bits, {0, bytes * 8 - cols});
  const at::Tensor weight = at::pow(2, at::arange(8, mask.options().dtype(at::kInt))).to(at::kByte);
  return (bits.reshape({rows, bytes, 8}) * weight).sum(-1).to(at::kByte);
}

absl::StatusOr<at::Tensor> ApplyPackedMask(at::Tensor w, const at::Tensor& packed) {
  if (w.dim() != 2 || w.scalar_type() != at::kFloat || packed.scalar_type() != at::kByte ||
      packed.dim() != 2 || packed.size(0) != w.size(0) || packed.size(1) != (w.size(1) + 7) / 8) {
    return absl::DataLossError(c10::str("a pruning mask of shape ", packed.sizes(), " and type ",
                                        packed.scalar_type(), " does not fit an fp32 matrix of shape ",
                                        w.sizes(), " and type ", w.scalar_type()));
  }
  const int64_t rows = w.size(0), cols = w.size(1), bytes = packed.size(1);
  if (!w.is_cpu() || !packed.is_cpu()) {
    const at::Tensor bits = packed.to(w.device()).unsqueeze(-1).bitwise_right_shift(
        at::arange(8, packed.options().device(w.device())));
    return w.masked_fill_(bits.bitwise_and(1).to(at::kBool).reshape({rows, bytes * 8}).narrow(1, 0, cols), 0);
  }
  w = w.contiguous();
  const at::Tensor m = packed.contiguous();
  float* wp = w.data_ptr<float>();
  const uint8_t* mp = m.data_ptr<uint8_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(cols, 1)),
                   [&](int64_t b, int64_t e) {
                     for (int64_t r = b; r < e; ++r) {
                       float* row = wp + r * cols;
                       const uint8_t* mr = mp + r * bytes;
                       for (int64_t c = 0; c < cols; ++c) {  // branch-free: masks are dense
                         uint32_t u;
                         std::memcpy(&u, row + c, sizeof(u));
                         u &= ((mr[c >> 3] >> (c & 7)) & 1u) - 1u;  // a set bit clears every bit
                         std::memcpy(row + c, &u, sizeof(u));
                       }
                     }
                   });
  return w;
}

absl::StatusOr<at::Tensor> MagnitudeMask(const at::Tensor& w, double ratio, SparsityPattern pattern) {
  if (absl::Status s = Check(w, ratio, pattern); !s.ok()) return s;
  profile::ScopedPhase phase(profile::Phase::kSolve);
  const at::Tensor metric = w.to(at::kFloat).abs();
  if (pattern.structured()) return NmMask(metric, pattern);
  const at::Tensor sorted = std::get<0>(at::sort(metric.reshape(-1)));
  const int64_t at_index = static_cast<int64_t>(std::floor(metric.numel() * ratio));
  if (ratio == 0) return at::zeros(w.sizes(), w.options().dtype(at::kBool));
  return metric <= sorted[at_index];
}

absl::StatusOr<at::Tensor> SparseGptPrune(const at::Tensor& weight, const at::Tensor& hessian,
                                          const SparseGptOptions& o) {
  if (absl::Status s = CheckSparseGpt(weight, hessian, o); !s.ok()) return s;
  profile::ScopedPhase phase(profile::Phase::kSolve);
  // GPTQ's structure: the inverse-Hessian factor and lazy block updates (docs/quantization.md).
  profile::AddFlops(CountGptqFlops(weight.size(0), weight.size(1), o.blocksize).total());
  const int64_t cols = weight.size(1);
  at::Tensor w = weight.to(at::kFloat).clone();
  at::Tensor h = hessian.to(at::kFloat).clone();
  absl::StatusOr<at::Tensor> hinv = InverseFactor(w, h, o.percdamp);
  if (!hinv.ok()) return hinv.status();
  for (int64_t i1 = 0; i1 < cols; i1 += o.blocksize) PruneBlock(w, *hinv, i1, o);
  return w;
}

}  // namespace moec::quant
