// The coordinator's read-only web dashboard (docs/operations.md "Dashboard"), served on
// --http-listen: jobs with progress and ETA, a job's stage DAG with its tasks per layer, their
// attempts, workers, errors and time breakdown, the workers, the job's report with its figures,
// and the coordinator's health. One page (coordinator/web/, built into the binary: no external
// assets) that polls JSON endpoints every 2 s.
//
// Access needs the client token: the login form (POST /login) stores it in an HttpOnly,
// SameSite=Strict cookie scoped to the dashboard; API calls may instead send
// "Authorization: Bearer <token>". Without either, every page and endpoint but the login form
// and its stylesheet answers 401.
#ifndef MOEC_COORDINATOR_DASHBOARD_H_
#define MOEC_COORDINATOR_DASHBOARD_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/auth.h"
#include "coordinator/dashboard_api.h"

struct mg_context;  // civetweb's server

namespace moec::coordinator {

struct HttpRequest {
  std::string method;         // "GET", "POST"
  std::string path;           // "/api/job"
  std::string query;          // "id=j-1", undecoded
  std::string cookie;         // the Cookie header
  std::string authorization;  // the Authorization header
  std::string body;           // a form's body, undecoded
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/html; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // besides the security headers
};

// Answers the dashboard's requests. Thread-safe.
class DashboardHandler {
 public:
  DashboardHandler(DashboardApi* api, Authenticator auth) : api_(api), auth_(std::move(auth)) {}
  HttpResponse Handle(const HttpRequest& req) const;

 private:
  bool Authorized(const HttpRequest& req) const;
  HttpResponse Login(const HttpRequest& req) const;
  HttpResponse Api(const HttpRequest& req) const;

  DashboardApi* const api_;  // Not owned.
  const Authenticator auth_;
};

// The HTTP server (civetweb) in front of a DashboardHandler.
class DashboardServer {
 public:
  // `listen`: "IP:PORT" (port 0: any free one). Errors: FailedPrecondition when the
  // coordinator has no client token (nobody could log in); Unavailable when `listen` cannot be
  // bound.
  static absl::StatusOr<std::unique_ptr<DashboardServer>> Start(
      const std::string& listen, std::unique_ptr<DashboardApi> api, const Authenticator& auth);
  ~DashboardServer();
  int port() const { return port_; }
  const DashboardHandler& handler() const { return handler_; }

 private:
  DashboardServer(std::unique_ptr<DashboardApi> api, const Authenticator& auth)
      : api_(std::move(api)), handler_(api_.get(), auth) {}
  std::unique_ptr<DashboardApi> api_;
  DashboardHandler handler_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_DASHBOARD_H_
