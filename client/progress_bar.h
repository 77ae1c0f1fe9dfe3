// A progress line on stderr for the CLI's local commands (eval, make-tiny-model).
#ifndef MOEC_CLIENT_PROGRESS_BAR_H_
#define MOEC_CLIENT_PROGRESS_BAR_H_

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace moec::client::cli {

// A progress line on stderr: redrawn in place on a terminal, every 10% otherwise.
class ProgressBar {
 public:
  explicit ProgressBar(std::string what)
      : what_(std::move(what)), tty_(isatty(STDERR_FILENO) != 0), start_(absl::Now()) {}
  void Update(int64_t done, int64_t total) {
    if (total <= 0) return;
    const int64_t tenth = done * 10 / total;
    if (!tty_ && tenth == last_tenth_ && done != total) return;
    last_tenth_ = tenth;
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start_);
    const double eta = done > 0 ? elapsed * static_cast<double>(total - done) / done : 0;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * done / total);
    std::fprintf(stderr, "%s%s [%s%s] %lld/%lld  %.1f s elapsed, ETA %.1f s%s", tty_ ? "\r" : "",
                 what_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total), elapsed, eta, tty_ && done != total ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  const std::string what_;
  const bool tty_;
  const absl::Time start_;
  int64_t last_tenth_ = -1;
};

}  // namespace moec::client::cli

#endif  // MOEC_CLIENT_PROGRESS_BAR_H_
