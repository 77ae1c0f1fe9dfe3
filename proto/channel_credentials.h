// The client side of the cluster's transport security, for every gRPC channel moec opens (the
// CLI's, a worker's to the coordinator and to its peers' activation stores).
#ifndef MOEC_PROTO_CHANNEL_CREDENTIALS_H_
#define MOEC_PROTO_CHANNEL_CREDENTIALS_H_

#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"

namespace moec {

// Plaintext when `ca` (PEM roots) is empty; else TLS verified against `ca`, presenting the
// client certificate `cert` with its key `key` when given (mutual TLS).
inline std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials(const std::string& ca,
                                                                    const std::string& cert,
                                                                    const std::string& key) {
  if (ca.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca;
  ssl.pem_cert_chain = cert;
  ssl.pem_private_key = key;
  return grpc::SslCredentials(ssl);
}

}  // namespace moec

#endif  // MOEC_PROTO_CHANNEL_CREDENTIALS_H_
