// gMock matchers for absl::Status / absl::StatusOr (Debian's Abseil has no status_matchers.h):
//   EXPECT_THAT(s, StatusIs(absl::StatusCode::kNotFound));
//   EXPECT_THAT(s, StatusIs(absl::StatusCode::kDataLoss, HasSubstr("key")));
//   EXPECT_THAT(v, IsOkAndHolds(42));   EXPECT_OK(s);   ASSERT_OK_AND_ASSIGN(auto x, F());
#ifndef MOEC_TESTS_TESTING_STATUS_MATCHERS_H_
#define MOEC_TESTS_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moec::testing {
namespace internal {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace internal

// Matches a Status or StatusOr whose code equals `code` and whose message matches `msg`
// (a string is a substring match; any gMock string matcher works).
MATCHER_P2(StatusIsImpl, code, msg_matcher, "") {
  const absl::Status& s = internal::GetStatus(arg);
  if (s.code() != code) {
    *result_listener << "status is " << s;
    return false;
  }
  if (!::testing::Matches(msg_matcher)(std::string(s.message()))) {
    *result_listener << "status is " << s;
    return false;
  }
  return true;
}

inline auto StatusIs(absl::StatusCode code) { return StatusIsImpl(code, ::testing::_); }
template <typename M>
auto StatusIs(absl::StatusCode code, M msg) {
  return StatusIsImpl(code, ::testing::MatcherCast<std::string>(msg));
}
inline auto StatusIs(absl::StatusCode code, const char* substr) {
  return StatusIsImpl(code, ::testing::HasSubstr(substr));
}

MATCHER_P(IsOkAndHolds, value_matcher, "") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(value_matcher, *arg, result_listener);
}

MATCHER(IsOk, "") {
  const absl::Status& s = internal::GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

}  // namespace moec::testing

#define EXPECT_OK(expr) EXPECT_THAT((expr), ::moec::testing::IsOk())
#define ASSERT_OK(expr) ASSERT_THAT((expr), ::moec::testing::IsOk())

#define MOEC_TEST_CONCAT_INNER_(a, b) a##b
#define MOEC_TEST_CONCAT_(a, b) MOEC_TEST_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                                        \
  auto MOEC_TEST_CONCAT_(moec_test_so_, __LINE__) = (expr);                    \
  ASSERT_THAT(MOEC_TEST_CONCAT_(moec_test_so_, __LINE__).status(),            \
              ::moec::testing::IsOk());                                        \
  lhs = std::move(MOEC_TEST_CONCAT_(moec_test_so_, __LINE__)).value()

#endif  // MOEC_TESTS_TESTING_STATUS_MATCHERS_H_
