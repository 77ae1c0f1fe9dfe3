// The worker's side of the activation chain (docs/data_plane.md "The activation chain"): the
// hidden-state chunks its tasks produce stay in its own FactorStore (RocksDB under --scratch);
// the coordinator records only each chunk's key, size, CRC32C and holder. ActivationStore is the
// store; ActivationServer serves it to the worker's peers (FactorService's GetFactor and
// StatFactor, with the worker token and TLS when configured); PeerReader reads what peers hold.
#ifndef MOEC_WORKER_ACTIVATION_STORE_H_
#define MOEC_WORKER_ACTIVATION_STORE_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "storage/factor_store.h"
#include "storage/kv_store.h"

namespace grpc {
class Server;
class Channel;
}  // namespace grpc

namespace moec::worker {

// Thread-safe.
class ActivationStore {
 public:
  // Opens (or creates) the store in `dir`/activations. Its id, made at creation, stays with the
  // directory: a worker restarted on the same --scratch serves what it held before.
  // Errors: those of RocksDB (FailedPrecondition when another process has it open).
  static absl::StatusOr<std::unique_ptr<ActivationStore>> Open(const std::string& dir);
  ~ActivationStore();

  const std::string& id() const { return id_; }
  storage::FactorStore& factors() { return *factors_; }

  // Stores tensor `key` durably (a transaction of its own), replacing an earlier attempt's
  // bytes; returns its CRC32C. Workers stage a task's tensors in one transaction instead.
  absl::StatusOr<uint32_t> Put(const std::string& key, storage::DType dtype,
                               absl::Span<const int64_t> shape, absl::string_view data);
  // The tensor when this store has it; nullopt when it has not.
  absl::StatusOr<std::optional<storage::Factor>> GetIfPresent(const std::string& key) const;

 private:
  ActivationStore() = default;
  std::unique_ptr<storage::KvStore> kv_;
  std::unique_ptr<storage::FactorStore> factors_;
  std::string id_;
};

struct ActivationServerOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks one
  std::string advertise_host;          // what peers dial; default: the listen host
  std::string token;                   // the worker token peers present; empty: certificates
  std::string tls_cert, tls_key;       // serve TLS with this certificate
  std::string tls_ca;                  // and require peers' certificates signed by this CA
};

// gRPC FactorService over an ActivationStore (reads only). Stops at destruction.
class ActivationServer {
 public:
  // Errors: InvalidArgument without a token or a certificate to check peers with; Unavailable
  // when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<ActivationServer>> Start(ActivationStore* store,
                                                                 const ActivationServerOptions& o);
  ~ActivationServer();
  const std::string& address() const { return address_; }  // HOST:PORT peers dial

 private:
  ActivationServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string address_;
};

struct PeerReaderOptions {
  std::string token;                          // bearer token (the worker token)
  std::string tls_ca, tls_cert, tls_key;      // TLS as for the coordinator
  int64_t rpc_timeout_ms = 60000;
};

// Reads tensors from peers' ActivationServers; one channel per address. Thread-safe.
class PeerReader {
 public:
  explicit PeerReader(PeerReaderOptions options) : options_(std::move(options)) {}
  // The tensor `key` from the worker at `address`, checked against `expected` (dtype, shape,
  // size and CRC32C, as the coordinator recorded them). Errors: Unavailable or DeadlineExceeded
  // when the peer does not answer; NotFound when it does not hold the key; DataLoss (carrying
  // the key) when its bytes differ from what was recorded.
  absl::StatusOr<storage::Factor> Get(const std::string& address, const std::string& key,
                                      const storage::FactorInfo& expected);
  // Tensors and bytes read from peers so far.
  int64_t reads() const { return reads_.load(); }
  int64_t bytes() const { return bytes_.load(); }

 private:
  std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address);
  std::atomic<int64_t> reads_{0}, bytes_{0};
  const PeerReaderOptions options_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moec::worker

#endif  // MOEC_WORKER_ACTIVATION_STORE_H_
