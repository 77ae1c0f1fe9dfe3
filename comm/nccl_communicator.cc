// NCCL for gangs of GPU workers. CUDA tensors move in place; host tensors (row metadata, counts)
// are staged through device buffers (cudaMemcpy). Collectives run on a blocking stream of the
// communicator's own, which the CUDA runtime orders with the legacy default stream libtorch's
// kernels run on, and every collective waits for its stream before returning. The ncclUniqueId is
// exchanged through the same RendezvousStore as Gloo's addresses. Built only with CUDA
// (MOEC_WITH_CUDA); tests skip without a device.
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "comm/communicator.h"

namespace moec::comm {
namespace {

absl::Status Cuda(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("cuda ", what, ": ", cudaGetErrorString(e)));
}

absl::Status Nccl(ncclResult_t r, absl::string_view what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("nccl ", what, ": ", ncclGetErrorString(r)));
}

#define MOEC_NCCL_RETURN(expr)                     \
  do {                                             \
    if (absl::Status _s = (expr); !_s.ok()) return _s; \
  } while (0)

absl::StatusOr<ncclDataType_t> NcclType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    default: return absl::InvalidArgumentError("nccl: unsupported dtype");
  }
}

// A device buffer for the duration of one collective.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) status_ = Cuda(cudaMalloc(&ptr_, bytes), "malloc");
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  char* get() const { return static_cast<char*>(ptr_); }
  const absl::Status& status() const { return status_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
  absl::Status status_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, int rank, int size, absl::Duration timeout)
      : comm_(comm), stream_(stream), rank_(rank), size_(size), timeout_(timeout) {}
  ~NcclCommunicator() override {
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  absl::StatusOr<at::Tensor> AllToAll(const at::Tensor& input, absl::Span<const int64_t> counts,
                                      std::vector<int64_t>* recv_counts) override {
    MOEC_NCCL_RETURN(CheckAllToAll(input, counts, size_));
    absl::StatusOr<std::vector<int64_t>> received = ExchangeCounts(counts);
    if (!received.ok()) return received.status();
    const std::vector<int64_t>& in_counts = *received;
    int64_t rows = 0;
    for (int j = 0; j < size_; ++j) rows += in_counts[j];
    std::vector<int64_t> shape = input.sizes().vec();
    shape[0] = rows;
    at::Tensor in = input.contiguous();
    at::Tensor out = at::empty(shape, input.options());
    const int64_t row_bytes = input.size(0) > 0 ? in.nbytes() / input.size(0)
                                                : (rows > 0 ? out.nbytes() / rows : 0);
    if (input.is_cuda()) {
      // Rows on the GPU move in place: libtorch's kernels run on the legacy default stream, with
      // which stream_ (a blocking stream) is ordered both ways.
      MOEC_NCCL_RETURN(SendRecvRows(static_cast<char*>(in.data_ptr()),
                                    static_cast<char*>(out.data_ptr()), counts, in_counts,
                                    row_bytes));
    } else {
      DeviceBuffer send(in.nbytes()), recv(out.nbytes());
      MOEC_NCCL_RETURN(send.status());
      MOEC_NCCL_RETURN(recv.status());
      if (in.nbytes() > 0) {
        MOEC_NCCL_RETURN(Cuda(cudaMemcpyAsync(send.get(), in.data_ptr(), in.nbytes(),
                                              cudaMemcpyHostToDevice, stream_), "copy"));
      }
      MOEC_NCCL_RETURN(SendRecvRows(send.get(), recv.get(), counts, in_counts, row_bytes));
      if (out.nbytes() > 0) {
        MOEC_NCCL_RETURN(Cuda(cudaMemcpyAsync(out.data_ptr(), recv.get(), out.nbytes(),
                                              cudaMemcpyDeviceToHost, stream_), "copy"));
      }
    }
    MOEC_NCCL_RETURN(Wait("all_to_all"));
    if (recv_counts != nullptr) *recv_counts = in_counts;
    return out;
  }

  absl::Status AllReduceSum(at::Tensor& t) override {
    return Collective(t, "all_reduce", [&](char* buf, size_t n, ncclDataType_t type) {
      return ncclAllReduce(buf, buf, n, type, ncclSum, comm_, stream_);
    });
  }
  absl::Status Broadcast(at::Tensor& t, int root) override {
    if (root < 0 || root >= size_) return absl::InvalidArgumentError("broadcast: root out of range");
    return Collective(t, "broadcast", [&](char* buf, size_t n, ncclDataType_t type) {
      return ncclBroadcast(buf, buf, n, type, root, comm_, stream_);
    });
  }
  absl::Status Barrier() override {
    at::Tensor one = at::ones({1}, at::kInt);
    return AllReduceSum(one);
  }

 private:
  // Every rank's send counts, so each knows what it receives: returns the rows each rank j sends
  // this one.
  absl::StatusOr<std::vector<int64_t>> ExchangeCounts(absl::Span<const int64_t> counts) {
    at::Tensor mine = at::tensor(std::vector<int64_t>(counts.begin(), counts.end()), at::kLong);
    at::Tensor all = at::empty({size_ * size_}, at::kLong);
    {
      DeviceBuffer d(all.nbytes());
      MOEC_NCCL_RETURN(d.status());
      MOEC_NCCL_RETURN(Cuda(cudaMemcpyAsync(d.get() + rank_ * mine.nbytes(), mine.data_ptr(),
                                            mine.nbytes(), cudaMemcpyHostToDevice, stream_),
                            "copy"));
      MOEC_NCCL_RETURN(Nccl(ncclAllGather(d.get() + rank_ * mine.nbytes(), d.get(), size_,
                                          ncclInt64, comm_, stream_),
                            "all_gather"));
      MOEC_NCCL_RETURN(Cuda(cudaMemcpyAsync(all.data_ptr(), d.get(), all.nbytes(),
                                            cudaMemcpyDeviceToHost, stream_),
                            "copy"));
      MOEC_NCCL_RETURN(Wait("all_to_all counts"));
    }
    std::vector<int64_t> in_counts(size_);
    for (int j = 0; j < size_; ++j) in_counts[j] = all[j * size_ + rank_].item<int64_t>();
    return in_counts;
  }

  // In one NCCL group: sends counts[j] rows of `send` to each rank j and receives in_counts[j]
  // rows from it into `recv` (both in rank order), rows of `row_bytes`.
  absl::Status SendRecvRows(char* send, char* recv, absl::Span<const int64_t> counts,
                            const std::vector<int64_t>& in_counts, int64_t row_bytes) {
    MOEC_NCCL_RETURN(Nccl(ncclGroupStart(), "group"));
    int64_t soff = 0, roff = 0;
    for (int j = 0; j < size_; ++j) {
      if (counts[j] > 0) {
        MOEC_NCCL_RETURN(Nccl(ncclSend(send + soff * row_bytes, counts[j] * row_bytes,
                                       ncclChar, j, comm_, stream_), "send"));
        if (j != rank_) bytes_sent_ += counts[j] * row_bytes;
      }
      if (in_counts[j] > 0) {
        MOEC_NCCL_RETURN(Nccl(ncclRecv(recv + roff * row_bytes, in_counts[j] * row_bytes,
                                       ncclChar, j, comm_, stream_), "recv"));
      }
      soff += counts[j];
      roff += in_counts[j];
    }
    MOEC_NCCL_RETURN(Nccl(ncclGroupEnd(), "group"));
    return absl::OkStatus();
  }

  template <typename Op>
  absl::Status Collective(at::Tensor& t, absl::string_view what, Op op) {
    absl::StatusOr<ncclDataType_t> type = NcclType(t.scalar_type());
    if (!type.ok()) return type.status();
    at::Tensor c = t.contiguous();
    if (c.is_cuda()) {
      MOEC_NCCL_RETURN(Nccl(op(static_cast<char*>(c.data_ptr()), c.numel(), *type), what));
      MOEC_NCCL_RETURN(Wait(what));
    } else {
      DeviceBuffer d(c.nbytes());
      MOEC_NCCL_RETURN(d.status());
      MOEC_NCCL_RETURN(Cuda(cudaMemcpyAsync(d.get(), c.data_ptr(), c.nbytes(),
                                            cudaMemcpyHostToDevice, stream_), "copy"));
      MOEC_NCCL_RETURN(Nccl(op(d.get(), c.numel(), *type), what));
      MOEC_NCCL_RETURN(Cuda(cudaMemcpyAsync(c.data_ptr(), d.get(), c.nbytes(),
                                            cudaMemcpyDeviceToHost, stream_), "copy"));
      MOEC_NCCL_RETURN(Wait(what));
    }
    if (!c.is_same(t)) t.copy_(c);
    return absl::OkStatus();
  }

  // Waits for the stream; a peer that never arrives is a timeout, after which the communicator
  // is aborted (NCCL has no per-call timeout).
  absl::Status Wait(absl::string_view what) {
    const absl::Time deadline = absl::Now() + timeout_;
    while (true) {
      cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return absl::OkStatus();
      if (e != cudaErrorNotReady) return Cuda(e, what);
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess) return Nccl(async, what);
      if (absl::Now() > deadline) {
        ncclCommAbort(comm_);
        return absl::DeadlineExceededError(absl::StrCat("nccl ", what, ": peers did not arrive"));
      }
      absl::SleepFor(absl::Microseconds(50));
    }
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  const int rank_, size_;
  const absl::Duration timeout_;
};

}  // namespace

bool NcclBuilt() { return true; }

absl::StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(
    std::shared_ptr<RendezvousStore> store, const NcclOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl: rank ", options.rank, " of a group of ", options.size));
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError("nccl: this worker has no CUDA device");
  }
  MOEC_NCCL_RETURN(Cuda(cudaSetDevice(options.device % devices), "set device"));
  ncclUniqueId id;
  if (options.rank == 0) {
    MOEC_NCCL_RETURN(Nccl(ncclGetUniqueId(&id), "unique id"));
    MOEC_NCCL_RETURN(store->Set("nccl_id", std::string(id.internal, sizeof(id.internal))));
  } else {
    absl::StatusOr<std::string> v = store->Get("nccl_id", options.timeout);
    if (!v.ok()) return v.status();
    if (v->size() != sizeof(id.internal)) return absl::DataLossError("nccl: malformed unique id");
    std::copy(v->begin(), v->end(), id.internal);
  }
  cudaStream_t stream;
  MOEC_NCCL_RETURN(Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamDefault), "stream"));
  ncclComm_t comm;
  if (absl::Status s = Nccl(ncclCommInitRank(&comm, options.size, id, options.rank), "init");
      !s.ok()) {
    cudaStreamDestroy(stream);
    return s;
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, stream, options.rank, options.size, options.timeout));
}

}  // namespace moec::comm
