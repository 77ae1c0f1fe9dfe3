// Crash tests: run a body in a fresh child process that dies without cleanup (_exit), then
// inspect what it left on disk. The child is the test binary itself, re-executed, so it starts
// with no threads (forking a process that runs RocksDB's background threads would deadlock).
//
//   MOEC_CRASH_CHILD(WriteThenDie) { ...; return 0; }   // at namespace scope; `arg` is a string
//   EXPECT_EQ(RunCrashChild("WriteThenDie", dir), 0);  // in a test
//
// The body runs from a static initializer of the re-executed binary; its return value becomes
// the exit code. To crash with live objects, end the body with _exit(0): a `return` runs the
// destructors of its locals (closing databases, aborting transactions) before the process ends.
#ifndef MOEC_TESTS_TESTING_CRASH_CHILD_H_
#define MOEC_TESTS_TESTING_CRASH_CHILD_H_

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace moec::testing {

class CrashChildRegistrar {
 public:
  using Body = int (*)(const std::string& arg);
  CrashChildRegistrar(const char* name, Body body) {
    const char* want = std::getenv("MOEC_CRASH_CHILD");
    if (want != nullptr && std::strcmp(want, name) == 0) {
      const char* arg = std::getenv("MOEC_CRASH_ARG");
      _exit(body(arg ? arg : ""));
    }
  }
};

// Runs child body `name` with `arg` in a re-executed copy of this binary; returns its exit code
// (or 128 + signal number, or -1 if it could not be started).
inline int RunCrashChild(const char* name, const std::string& arg) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    setenv("MOEC_CRASH_CHILD", name, 1);
    setenv("MOEC_CRASH_ARG", arg.c_str(), 1);
    execl("/proc/self/exe", "crash_child", "--gtest_list_tests", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

}  // namespace moec::testing

#define MOEC_CRASH_CHILD(name)                                                             \
  static int name(const std::string& arg);                                                 \
  static ::moec::testing::CrashChildRegistrar name##_registrar_(#name, &name);            \
  static int name(const std::string& arg)

#endif  // MOEC_TESTS_TESTING_CRASH_CHILD_H_
