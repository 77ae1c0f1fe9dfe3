#include "coordinator/dashboard.h"

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "civetweb.h"
#include "coordinator/dashboard_assets.h"
#include "glog/logging.h"

namespace moec::coordinator {
namespace {

constexpr char kCookie[] = "moec_token";
constexpr size_t kMaxBody = 8 << 10;  // a login form

std::string HtmlEscape(const std::string& s) {
  return absl::StrReplaceAll(s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"},
                                 {"'", "&#39;"}});
}

// Form or query variable `name`, URL-decoded; "" when absent.
std::string Var(const std::string& data, const char* name) {
  std::string out(data.size() + 1, '\0');
  const int n = mg_get_var(data.data(), data.size(), name, out.data(), out.size());
  return n < 0 ? "" : out.substr(0, n);
}

// Percent-encoded but for A-Z a-z 0-9 - _ . ~, so any token is a valid cookie value.
std::string Encoded(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

std::string CookieToken(const std::string& cookie) {
  std::string raw(cookie.size() + 1, '\0');
  const int n = mg_get_cookie(cookie.c_str(), kCookie, raw.data(), raw.size());
  if (n <= 0) return "";
  std::string out(n + 1, '\0');
  const int m = mg_url_decode(raw.data(), n, out.data(), out.size(), /*is_form_url_encoded=*/0);
  return m < 0 ? "" : out.substr(0, m);
}

HttpResponse Page(int status, std::string body, const char* type = "text/html; charset=utf-8") {
  HttpResponse r;
  r.status = status;
  r.content_type = type;
  r.body = std::move(body);
  return r;
}

HttpResponse LoginPage(int status, const std::string& message) {
  return Page(status, absl::StrReplaceAll(web::kLoginHtml, {{"{{message}}", HtmlEscape(message)}}));
}

HttpResponse Json(int status, const nlohmann::json& j) {
  return Page(status, j.dump(), "application/json");
}

HttpResponse Redirect(const std::string& set_cookie) {
  HttpResponse r = Page(303, "");
  r.headers = {{"Location", "/"}, {"Set-Cookie", set_cookie}};
  return r;
}

int HttpStatus(const absl::Status& s) {
  if (absl::IsNotFound(s)) return 404;
  if (absl::IsInvalidArgument(s)) return 400;
  return 500;
}

}  // namespace

bool DashboardHandler::Authorized(const HttpRequest& req) const {
  const std::string token = absl::StartsWith(req.authorization, "Bearer ")
                                ? req.authorization.substr(7)
                                : CookieToken(req.cookie);
  return auth_.IsClientToken(token);
}

HttpResponse DashboardHandler::Login(const HttpRequest& req) const {
  const std::string token = Var(req.body, "token");
  if (!auth_.IsClientToken(token)) {
    LOG(WARNING) << "dashboard: a login with a wrong token was refused";
    return LoginPage(401, "That is not the coordinator's client token.");
  }
  return Redirect(absl::StrCat(kCookie, "=", Encoded(token), "; Path=/; HttpOnly; SameSite=Strict"));
}

HttpResponse DashboardHandler::Api(const HttpRequest& req) const {
  if (!Authorized(req)) return Json(401, {{"error", "log in with the client token"}});
  if (req.path == "/api/overview") return Json(200, api_->Overview());
  if (req.path == "/api/job") {
    absl::StatusOr<nlohmann::json> job = api_->Job(Var(req.query, "id"));
    if (!job.ok()) return Json(HttpStatus(job.status()), {{"error", job.status().ToString()}});
    return Json(200, *job);
  }
  if (req.path == "/api/figure") {
    absl::StatusOr<std::string> svg = api_->Figure(Var(req.query, "job"), Var(req.query, "name"));
    if (!svg.ok()) return Json(HttpStatus(svg.status()), {{"error", svg.status().ToString()}});
    return Page(200, *std::move(svg), "image/svg+xml");
  }
  return Json(404, {{"error", absl::StrCat("no endpoint ", req.path)}});
}

HttpResponse DashboardHandler::Handle(const HttpRequest& req) const {
  if (req.path == "/app.css") return Page(200, web::kAppCss, "text/css");
  if (req.path == "/login" && req.method == "POST") return Login(req);
  if (req.path == "/logout" && req.method == "POST") {
    return Redirect(absl::StrCat(kCookie, "=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
  }
  if (req.method != "GET") return Page(405, "method not allowed", "text/plain");
  if (absl::StartsWith(req.path, "/api/")) return Api(req);
  if (!Authorized(req)) return LoginPage(401, "");
  if (req.path == "/" || req.path == "/index.html") return Page(200, web::kIndexHtml);
  if (req.path == "/app.js") return Page(200, web::kAppJs, "text/javascript");
  return Page(404, "not found", "text/plain");
}

namespace {

HttpRequest ReadRequest(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  HttpRequest req;
  req.method = info->request_method ? info->request_method : "";
  req.path = info->local_uri ? info->local_uri : "";
  req.query = info->query_string ? info->query_string : "";
  if (const char* c = mg_get_header(conn, "Cookie")) req.cookie = c;
  if (const char* a = mg_get_header(conn, "Authorization")) req.authorization = a;
  if (req.method == "POST" && info->content_length > 0 &&
      info->content_length <= static_cast<long long>(kMaxBody)) {
    req.body.resize(info->content_length);
    const int n = mg_read(conn, req.body.data(), req.body.size());
    req.body.resize(n < 0 ? 0 : n);
  }
  return req;
}

void WriteResponse(mg_connection* conn, const HttpResponse& r) {
  std::string head = absl::StrCat(
      "HTTP/1.1 ", r.status, " ", mg_get_response_code_text(conn, r.status), "\r\n",
      "Content-Type: ", r.content_type, "\r\nContent-Length: ", r.body.size(), "\r\n",
      "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
      "Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n",
      "Content-Security-Policy: default-src 'self'; frame-ancestors 'none'\r\n");
  for (const auto& [name, value] : r.headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
  head += "\r\n";
  mg_write(conn, head.data(), head.size());
  mg_write(conn, r.body.data(), r.body.size());
}

int OnRequest(mg_connection* conn, void* handler) {
  const HttpResponse r = static_cast<const DashboardHandler*>(handler)->Handle(ReadRequest(conn));
  WriteResponse(conn, r);
  return r.status;  // civetweb: a non-zero return means the request was answered
}

}  // namespace

absl::StatusOr<std::unique_ptr<DashboardServer>> DashboardServer::Start(
    const std::string& listen, std::unique_ptr<DashboardApi> api, const Authenticator& auth) {
  if (!auth.HasClientToken()) {
    return absl::FailedPreconditionError(
        "--http-listen needs a client token (--client-token-file or --token-file): the "
        "dashboard's login asks for it");
  }
  std::unique_ptr<DashboardServer> server(new DashboardServer(std::move(api), auth));
  const char* options[] = {"listening_ports", listen.c_str(), "num_threads", "4",
                           "request_timeout_ms", "30000", nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  server->ctx_ = mg_start(&callbacks, nullptr, options);
  if (server->ctx_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("dashboard: cannot listen on ", listen));
  }
  mg_set_request_handler(server->ctx_, "/", OnRequest, &server->handler_);
  mg_server_port ports[4];
  const int n = mg_get_server_ports(server->ctx_, 4, ports);
  server->port_ = n > 0 ? ports[0].port : 0;
  return server;
}

DashboardServer::~DashboardServer() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

}  // namespace moec::coordinator
