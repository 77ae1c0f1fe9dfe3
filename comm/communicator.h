// Collectives of a gang: the workers that run one layer task together (docs/data_plane.md).
// One interface, three implementations: Gloo through libtorch's c10d (CPU, real processes and
// hosts), NCCL (GPU builds), and an in-process group for unit tests. Tensors may live on any
// device and every result comes back on its input's device: NCCL moves CUDA tensors in place
// (host tensors through device buffers), Gloo stages device tensors through the host. Every
// collective takes dim 0 as the row axis. Includes ATen: include it from .cc files only.
#ifndef MOEC_COMM_COMMUNICATOR_H_
#define MOEC_COMM_COMMUNICATOR_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace moec::comm {

// A communicator of `size` ranks. Every member must call the same collectives in the same order
// (as with MPI). Errors: DeadlineExceeded when a peer does not arrive within the timeout,
// Unavailable when a peer's connection breaks (a member died) — both retriable; InvalidArgument
// for mismatched arguments. Not thread-safe: one caller at a time.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Sends rows [offset_j, offset_j + send_counts[j]) of `input` to rank j and returns the rows
  // received, concatenated in rank order; recv_counts (if not null) gets the row count from each
  // rank. Every rank's input has the same dtype and row shape (input.sizes()[1:]).
  virtual absl::StatusOr<at::Tensor> AllToAll(const at::Tensor& input,
                                              absl::Span<const int64_t> send_counts,
                                              std::vector<int64_t>* recv_counts) = 0;
  // In-place element-wise sum over ranks. The order of the additions is the implementation's:
  // exact for integers, not bit-reproducible for floats (use AllGather and a canonical order).
  virtual absl::Status AllReduceSum(at::Tensor& t) = 0;
  // Replaces `t` on every rank with root's `t` (same shape and dtype everywhere).
  virtual absl::Status Broadcast(at::Tensor& t, int root) = 0;
  virtual absl::Status Barrier() = 0;

  // Every rank's rows, in rank order (row counts may differ); built on AllToAll.
  absl::StatusOr<std::vector<at::Tensor>> AllGather(const at::Tensor& t);
  // Bytes this communicator has sent in AllToAll payloads (for benchmarks).
  int64_t bytes_sent() const { return bytes_sent_; }

 protected:
  int64_t bytes_sent_ = 0;
};

// A communicator of one rank: every collective is a local copy. What size-1 gangs get.
std::unique_ptr<Communicator> NewSingleRankCommunicator();

// `size` communicators over shared memory, one per rank, for threads of one process (tests).
std::vector<std::unique_ptr<Communicator>> NewLocalGroup(int size,
                                                         absl::Duration timeout = absl::Seconds(30));

// A key-value rendezvous store (the coordinator's GroupStore RPCs for workers; an in-memory one in
// tests). Keys are scoped to one gang attempt by the implementation. Thread-safe.
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // Blocks until `key` exists (or `timeout`: DeadlineExceeded).
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) = 0;
  // Adds `delta` to the integer at `key` (0 when absent) and returns the new value.
  virtual absl::StatusOr<int64_t> Add(const std::string& key, int64_t delta) = 0;
};

// An in-process RendezvousStore (tests, single-process groups).
std::shared_ptr<RendezvousStore> NewMemoryRendezvousStore();

struct GlooOptions {
  int rank = 0;
  int size = 1;
  std::string host = "127.0.0.1";  // address the peers reach this rank on (--advertise-host)
  absl::Duration timeout = absl::Seconds(120);  // per collective, and for the rendezvous
};

// Forms a Gloo process group (c10d::ProcessGroupGloo) through `store`; blocks until all `size`
// ranks have joined. Errors: DeadlineExceeded when they do not within the timeout; Unavailable
// when the host cannot be bound or reached.
absl::StatusOr<std::unique_ptr<Communicator>> NewGlooCommunicator(
    std::shared_ptr<RendezvousStore> store, const GlooOptions& options);

struct NcclOptions {
  int rank = 0;
  int size = 1;
  int device = 0;  // CUDA device (modulo the visible devices)
  absl::Duration timeout = absl::Seconds(120);
};

// Forms an NCCL communicator (the ncclUniqueId travels through `store`); host tensors are staged
// through device buffers. Errors: Unimplemented in builds without CUDA; FailedPrecondition without
// a CUDA device; Unavailable for NCCL/CUDA failures; DeadlineExceeded as Gloo.
absl::StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(
    std::shared_ptr<RendezvousStore> store, const NcclOptions& options);
// Whether this build has NCCL.
bool NcclBuilt();

// Creates the communicator of a gang on first use (all ranks of a stage that uses collectives
// use them; a stage that never does costs no rendezvous).
class LazyCommunicator : public Communicator {
 public:
  using Factory = std::function<absl::StatusOr<std::unique_ptr<Communicator>>()>;
  LazyCommunicator(int rank, int size, Factory factory)
      : rank_(rank), size_(size), factory_(std::move(factory)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::StatusOr<at::Tensor> AllToAll(const at::Tensor& input,
                                      absl::Span<const int64_t> send_counts,
                                      std::vector<int64_t>* recv_counts) override;
  absl::Status AllReduceSum(at::Tensor& t) override;
  absl::Status Broadcast(at::Tensor& t, int root) override;
  absl::Status Barrier() override;
  // Whether the group was formed.
  bool connected() const { return impl_ != nullptr; }

 private:
  absl::StatusOr<Communicator*> Impl();
  const int rank_, size_;
  Factory factory_;
  std::unique_ptr<Communicator> impl_;
  absl::Status failed_;
};

// Validates AllToAll arguments shared by the implementations.
absl::Status CheckAllToAll(const at::Tensor& input, absl::Span<const int64_t> send_counts,
                           int size);

}  // namespace moec::comm

#endif  // MOEC_COMM_COMMUNICATOR_H_
