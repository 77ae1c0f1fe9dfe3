#include "worker/activation_store.h"

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/crc32c.h"
#include "common/status_macros.h"
#include "common/status_payloads.h"
#include "grpcpp/grpcpp.h"
#include "proto/channel_credentials.h"
#include "moec/v1/factor.grpc.pb.h"
#include "proto/factor_stream.h"
#include "proto/rpc_status.h"
#include "storage/rocksdb_kv_store.h"

namespace moec::worker {
namespace {

constexpr absl::string_view kMetaFamily = "meta";
constexpr absl::string_view kStoreIdKey = "store_id";

// A new store id: "as-" and 16 random hex digits.
std::string NewStoreId() {
  absl::BitGen gen;
  return absl::StrFormat("as-%016x", absl::Uniform<uint64_t>(gen));
}

// Constant-time comparison of the call's "authorization" metadata with "Bearer <token>".
bool HasToken(const grpc::ServerContext* ctx, const std::string& token) {
  const std::string expected = "Bearer " + token;
  auto range = ctx->client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    const grpc::string_ref& got = it->second;
    if (got.size() != expected.size()) continue;
    unsigned char diff = 0;
    for (size_t i = 0; i < expected.size(); ++i) diff |= got.data()[i] ^ expected[i];
    if (diff == 0) return true;
  }
  return false;
}

// GetFactor and StatFactor of one ActivationStore; the writes are the coordinator's alone
// (UNIMPLEMENTED here, the generated default).
class ActivationService final : public v1::FactorService::Service {
 public:
  ActivationService(ActivationStore* store, std::string token)
      : store_(store), token_(std::move(token)) {}

  grpc::Status GetFactor(grpc::ServerContext* ctx, const v1::GetFactorRequest* req,
                         grpc::ServerWriter<v1::GetFactorResponse>* writer) override {
    if (grpc::Status a = Check(ctx); !a.ok()) return a;
    absl::StatusOr<storage::FactorInfo> info = store_->factors().Stat(req->key());
    if (!info.ok()) return ToGrpcStatus(info.status());
    v1::GetFactorResponse head;
    FillFactorStat(req->key(), *info, head.mutable_stat());
    return WriteFactorStream(store_->factors(), req->key(), *info, head, writer);
  }
  grpc::Status StatFactor(grpc::ServerContext* ctx, const v1::StatFactorRequest* req,
                          v1::StatFactorResponse* resp) override {
    if (grpc::Status a = Check(ctx); !a.ok()) return a;
    absl::StatusOr<storage::FactorInfo> info = store_->factors().Stat(req->key());
    if (!info.ok()) return ToGrpcStatus(info.status());
    FillFactorStat(req->key(), *info, resp->mutable_stat());
    return grpc::Status::OK;
  }

 private:
  // The worker token, or (without one) the peer certificate TLS already verified.
  grpc::Status Check(const grpc::ServerContext* ctx) const {
    if (token_.empty() || HasToken(ctx, token_)) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "a worker's activation store answers the worker token only");
  }
  ActivationStore* const store_;
  const std::string token_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ActivationStore>> ActivationStore::Open(const std::string& dir) {
  storage::RocksDbKvStoreOptions o;
  o.path = dir + "/activations";
  o.column_families = {{std::string(kMetaFamily), false}, {"factors", true}};
  o.block_cache_bytes = 8 << 20;
  o.background_jobs = 2;
  auto store = std::unique_ptr<ActivationStore>(new ActivationStore());
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<storage::RocksDbKvStore> kv, storage::RocksDbKvStore::Open(o));
  store->kv_ = std::move(kv);
  MOEC_ASSIGN_OR_RETURN(store->factors_, storage::FactorStore::Open(store->kv_.get()));
  absl::StatusOr<std::string> id = store->kv_->Get(kMetaFamily, kStoreIdKey);
  if (absl::IsNotFound(id.status())) {
    id = NewStoreId();
    MOEC_RETURN_IF_ERROR(store->kv_->Put(kMetaFamily, kStoreIdKey, *id, storage::Durability::kSync));
  }
  MOEC_RETURN_IF_ERROR(id.status());
  store->id_ = *id;
  return store;
}

ActivationStore::~ActivationStore() {
  factors_.reset();  // before the key-value store it uses
}

absl::StatusOr<uint32_t> ActivationStore::Put(const std::string& key, storage::DType dtype,
                                              absl::Span<const int64_t> shape,
                                              absl::string_view data) {
  std::unique_ptr<storage::FactorTransaction> txn = factors_->NewTransaction();
  MOEC_RETURN_IF_ERROR(txn->Put(key, dtype, shape, data));
  MOEC_RETURN_IF_ERROR(txn->Commit(storage::Durability::kSync));
  return crc32c::Value(data);
}

absl::StatusOr<std::optional<storage::Factor>> ActivationStore::GetIfPresent(
    const std::string& key) const {
  absl::StatusOr<storage::Factor> f = factors_->Get(key);
  if (absl::IsNotFound(f.status())) return std::nullopt;
  MOEC_RETURN_IF_ERROR(f.status());
  return std::optional<storage::Factor>(std::move(*f));
}

struct ActivationServer::Impl {
  std::unique_ptr<ActivationService> service;
  std::unique_ptr<grpc::Server> server;
};

absl::StatusOr<std::unique_ptr<ActivationServer>> ActivationServer::Start(
    ActivationStore* store, const ActivationServerOptions& o) {
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!o.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({o.tls_key, o.tls_cert});
    if (!o.tls_ca.empty()) {
      ssl.pem_root_certs = o.tls_ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  }
  if (o.token.empty() && (o.tls_cert.empty() || o.tls_ca.empty())) {
    return absl::InvalidArgumentError(
        "an activation server needs the worker token, or TLS with a CA to verify peers by");
  }
  auto out = std::unique_ptr<ActivationServer>(new ActivationServer());
  out->impl_ = std::make_unique<Impl>();
  out->impl_->service = std::make_unique<ActivationService>(store, o.token);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o.listen, creds, &port);
  builder.RegisterService(out->impl_->service.get());
  out->impl_->server = builder.BuildAndStart();
  if (out->impl_->server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve the activation store on ", o.listen));
  }
  std::string host = o.advertise_host;
  if (host.empty()) host = std::string(o.listen.substr(0, o.listen.rfind(':')));
  out->address_ = absl::StrCat(host, ":", port);
  return out;
}

ActivationServer::~ActivationServer() {
  if (impl_ != nullptr && impl_->server != nullptr) {
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
}

std::shared_ptr<grpc::Channel> PeerReader::ChannelTo(const std::string& address) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<grpc::Channel>& c = channels_[address];
  if (c == nullptr) {
    std::shared_ptr<grpc::ChannelCredentials> creds =
        ChannelCredentials(options_.tls_ca, options_.tls_cert, options_.tls_key);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(32 << 20);
    c = grpc::CreateCustomChannel(address, creds, args);
  }
  return c;
}

absl::StatusOr<storage::Factor> PeerReader::Get(const std::string& address, const std::string& key,
                                                const storage::FactorInfo& expected) {
  auto stub = v1::FactorService::NewStub(ChannelTo(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(options_.rpc_timeout_ms));
  if (!options_.token.empty()) ctx.AddMetadata("authorization", "Bearer " + options_.token);
  v1::GetFactorRequest req;
  req.set_key(key);
  auto reader = stub->GetFactor(&ctx, req);
  v1::FactorStat stat;
  MOEC_ASSIGN_OR_RETURN(storage::Factor f, ReadFactorStream(reader.get(), key, &stat));
  if (stat.held() || f.info.dtype != expected.dtype || f.info.shape != expected.shape ||
      f.info.crc32c != expected.crc32c) {
    return WithFactorKey(absl::DataLossError(absl::StrCat(
                             "factor '", key, "' on ", address,
                             " differs from what the coordinator recorded")),
                         key);
  }
  ++reads_;
  bytes_ += static_cast<int64_t>(f.data.size());
  return f;
}

}  // namespace moec::worker
