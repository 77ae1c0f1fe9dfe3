// The dashboard's handler over a real Coordinator core (in-memory store), and its HTTP server
// over a socket. The page itself, in a browser, is tests/e2e/dashboard_e2e_test.py's.
#include "coordinator/dashboard.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "coordinator/coordinator_test_fixture.h"
#include "gmock/gmock.h"

namespace moec::coordinator {
namespace {

using ::testing::HasSubstr;

constexpr char kClientToken[] = "client token; with=odd chars";
constexpr char kWorkerToken[] = "worker-secret";

// As a browser sends a form's field.
std::string FormEncoded(const std::string& s) {
  std::string out;
  for (char c : s) out += c == ' ' ? std::string("+") : c == ';' ? "%3B" : c == '=' ? "%3D" : std::string(1, c);
  return out;
}

Authenticator Auth() {
  RoleCredentials c;
  c.client_token = kClientToken;
  c.worker_token = kWorkerToken;
  return *Authenticator::Create(c);
}

class DashboardTest : public CoordinatorTest {
 protected:
  DashboardTest() : api_(coord_.get(), dir_.path(), absl::Now()), handler_(&api_, Auth()) {}

  HttpResponse Get(const std::string& path, const std::string& query = "",
                   const std::string& cookie = "", const std::string& authorization = "") {
    return handler_.Handle({"GET", path, query, cookie, authorization, ""});
  }
  // The cookie a login with `token` sets ("" when it is refused).
  std::string LogIn(const std::string& token) {
    HttpResponse r = handler_.Handle({"POST", "/login", "", "", "", "token=" + FormEncoded(token)});
    for (const auto& [name, value] : r.headers) {
      if (name == "Set-Cookie") return value.substr(0, value.find(';'));
    }
    return "";
  }
  nlohmann::json ApiJson(const std::string& path, const std::string& query = "") {
    HttpResponse r = Get(path, query, LogIn(kClientToken));
    EXPECT_EQ(r.status, 200) << r.body;
    return nlohmann::json::parse(r.body);
  }

  DashboardApi api_;
  DashboardHandler handler_;
};

TEST_F(DashboardTest, WithoutTheClientTokenOnlyTheLoginFormIsServed) {
  HttpResponse page = Get("/");
  EXPECT_EQ(page.status, 401);
  EXPECT_THAT(page.body, HasSubstr("action=\"/login\""));
  EXPECT_EQ(Get("/app.js").status, 401);
  EXPECT_EQ(Get("/api/overview").status, 401);
  EXPECT_EQ(Get("/api/job", "id=x").status, 401);
  EXPECT_EQ(Get("/app.css").status, 200);  // the login form's stylesheet
  // The worker's token is not a client's, in a cookie or a header.
  EXPECT_EQ(LogIn(kWorkerToken), "");
  EXPECT_EQ(Get("/api/overview", "", "", std::string("Bearer ") + kWorkerToken).status, 401);
  EXPECT_EQ(Get("/api/overview", "", "moec_token=worker-secret").status, 401);
  HttpResponse refused = handler_.Handle({"POST", "/login", "", "", "", "token=<b>x</b>"});
  EXPECT_EQ(refused.status, 401);
  EXPECT_THAT(refused.body, HasSubstr("client token.</p>"));
  EXPECT_THAT(refused.body, ::testing::Not(HasSubstr("<b>x")));
}

TEST_F(DashboardTest, TheLoginSetsAnHttpOnlyStrictCookieThatOpensThePage) {
  HttpResponse r = handler_.Handle({"POST", "/login", "", "", "", ""});
  EXPECT_EQ(r.status, 401);
  r = handler_.Handle({"POST", "/login", "", "", "", "token=" + FormEncoded(kClientToken)});
  ASSERT_EQ(r.status, 303);
  std::string cookie;
  for (const auto& [name, value] : r.headers) {
    if (name == "Set-Cookie") cookie = value;
  }
  EXPECT_THAT(cookie, HasSubstr("HttpOnly"));
  EXPECT_THAT(cookie, HasSubstr("SameSite=Strict"));
  const std::string sent = cookie.substr(0, cookie.find(';'));
  HttpResponse page = Get("/", "", "other=1; " + sent);
  EXPECT_EQ(page.status, 200);
  EXPECT_THAT(page.body, HasSubstr("/app.js"));
  EXPECT_EQ(Get("/app.js", "", sent).status, 200);
  EXPECT_EQ(Get("/api/overview", "", "", std::string("Bearer ") + kClientToken).status, 200);
  HttpResponse out = handler_.Handle({"POST", "/logout", "", sent, "", ""});
  EXPECT_EQ(out.status, 303);
  EXPECT_THAT(out.headers[1].second, HasSubstr("Max-Age=0"));
}

TEST_F(DashboardTest, OverviewAndJobShowTasksWorkersAttemptsAndStages) {
  const std::string job = Submit().job.job_id();
  const std::string w = coord_->RegisterWorker({"host:7", true, 1 << 30, 80LL << 30});
  std::optional<LeasedTask> lease = Lease(w);
  ASSERT_TRUE(lease.has_value());

  nlohmann::json o = ApiJson("/api/overview");
  ASSERT_EQ(o["jobs"].size(), 1u);
  EXPECT_EQ(o["jobs"][0]["job_id"], job);
  EXPECT_EQ(o["jobs"][0]["total"], 3);  // stats at layers 0 and 1, then bits
  EXPECT_EQ(o["jobs"][0]["done"], 0);
  EXPECT_EQ(o["jobs"][0]["state"], "JOB_RUNNING");
  ASSERT_EQ(o["workers"].size(), 1u);
  EXPECT_EQ(o["workers"][0]["name"], "host:7");
  EXPECT_EQ(o["workers"][0]["gpu"], true);
  EXPECT_EQ(o["workers"][0]["tasks"], nlohmann::json::array({job + "/stats/L0"}));
  EXPECT_EQ(o["health"]["workers"], 1);
  EXPECT_GE(o["health"]["store_bytes"].get<int64_t>(), 0);

  nlohmann::json j = ApiJson("/api/job", "id=" + job);
  ASSERT_EQ(j["stages"].size(), 2u);
  EXPECT_EQ(j["stages"][1]["stage"], "bits");
  EXPECT_EQ(j["stages"][1]["deps"], nlohmann::json::array({"stats"}));
  ASSERT_EQ(j["tasks"].size(), 3u);
  EXPECT_EQ(j["tasks"][0]["state"], "TASK_LEASED");
  EXPECT_EQ(j["tasks"][0]["layer"], 0);
  EXPECT_EQ(j["tasks"][0]["attempts"], 1);
  EXPECT_EQ(j["tasks"][0]["workers"], nlohmann::json::array({w}));
  EXPECT_EQ(j["tasks"][2]["stage"], "bits");
  EXPECT_EQ(j["tasks"][2]["state"], "TASK_BLOCKED");
  bool leased = false;
  for (const auto& e : j["events"]) {
    leased |= e["kind"] == "task_leased" && absl::StrContains(e["message"].get<std::string>(), w);
  }
  EXPECT_TRUE(leased) << j["events"].dump();
  EXPECT_EQ(j["report"]["job_id"], job);
  EXPECT_EQ(j["figures"], nlohmann::json::array());

  EXPECT_EQ(Get("/api/job", "id=nojob", LogIn(kClientToken)).status, 404);
  EXPECT_EQ(Get("/api/figure", "job=" + job + "&name=usage.svg", LogIn(kClientToken)).status, 404);
  EXPECT_EQ(Get("/api/nothing", "", LogIn(kClientToken)).status, 404);
}

// A raw HTTP/1.0 GET to 127.0.0.1:`port`: the whole response.
std::string HttpGet(int port, const std::string& path, const std::string& header) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\n" + header + "\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, n);
  close(fd);
  return out;
}

TEST_F(DashboardTest, TheServerAnswersOverHttpWithSecurityHeaders) {
  RoleCredentials workers_only;  // clients by certificate only: nobody could log in
  workers_only.worker_token = kWorkerToken;
  workers_only.client_identities = {"alice"};
  EXPECT_TRUE(absl::IsFailedPrecondition(
      DashboardServer::Start("127.0.0.1:0", std::make_unique<DashboardApi>(coord_.get(), "", absl::Now()),
                             *Authenticator::Create(workers_only)).status()));
  auto server = DashboardServer::Start(
      "127.0.0.1:0", std::make_unique<DashboardApi>(coord_.get(), "", absl::Now()), Auth());
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  const std::string refused = HttpGet((*server)->port(), "/api/overview", "");
  EXPECT_THAT(refused, HasSubstr("HTTP/1.1 401"));
  const std::string ok = HttpGet((*server)->port(), "/api/overview",
                                 std::string("Authorization: Bearer ") + kClientToken + "\r\n");
  EXPECT_THAT(ok, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(ok, HasSubstr("Content-Security-Policy: default-src 'self'"));
  EXPECT_THAT(ok, HasSubstr("\"jobs\":[]"));
}

}  // namespace
}  // namespace moec::coordinator
