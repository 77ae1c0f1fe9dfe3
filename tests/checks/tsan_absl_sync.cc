// ThreadSanitizer and Debian's prebuilt Abseil: libabsl_synchronization is not instrumented, so
// TSan cannot see that absl::Mutex, CondVar and Notification order memory, and reports every
// access they protect as a race. Linked into the test binaries of the TSan build only
// (tests/checks/tsan.sh), this file interposes their entry points: each calls the library's
// own function (dlsym RTLD_NEXT) and tells TSan what it did — a release before a lock is given
// up, an acquire once it is held — per mutex. Await and LockWhen give the lock up (and take it
// again) inside the library, around evaluations of the waiter's Condition: each evaluation by
// the waiter acquires the mutex before and releases it after. The symbol names are those of
// Debian 12's Abseil (inline namespace debian3).
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace {

template <typename F>
F Real(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: no %s in the loaded Abseil\n", name);
    std::abort();
  }
  return reinterpret_cast<F>(f);
}

// The mutex this thread waits to reacquire inside Await / LockWhen, if any, and the one it is
// unlocking (Unlock evaluates the Conditions of waiters to choose whom to wake).
thread_local const void* waiting_on = nullptr;
thread_local const void* unlocking = nullptr;

struct Waiting {
  explicit Waiting(const void* mu) : previous(waiting_on) { waiting_on = mu; }
  ~Waiting() { waiting_on = previous; }
  const void* previous;
};

void Acquire(const void* mu) { __tsan_acquire(const_cast<void*>(mu)); }
void Release(const void* mu) { __tsan_release(const_cast<void*>(mu)); }

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

#define MOEC_REAL(type, name) static const auto real = Real<type>(name)

void Mutex::Lock() {
  MOEC_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  real(this);
  Acquire(this);
}
void Mutex::ReaderLock() {
  MOEC_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  Acquire(this);
}
bool Mutex::TryLock() {
  MOEC_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}
bool Mutex::ReaderTryLock() {
  MOEC_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}
void Mutex::Unlock() {
  MOEC_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  Release(this);
  const void* previous = unlocking;
  unlocking = this;
  real(this);
  unlocking = previous;
}
void Mutex::ReaderUnlock() {
  MOEC_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  Release(this);
  real(this);
}
void Mutex::Await(const Condition& cond) {
  MOEC_REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  Waiting w(this);
  real(this, cond);
  Acquire(this);
}
bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  MOEC_REAL(bool (*)(Mutex*, const Condition&, Duration),
            "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Waiting w(this);
  const bool r = real(this, cond, timeout);
  Acquire(this);
  return r;
}
bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  MOEC_REAL(bool (*)(Mutex*, const Condition&, Time),
            "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Waiting w(this);
  const bool r = real(this, cond, deadline);
  Acquire(this);
  return r;
}
void Mutex::LockWhen(const Condition& cond) {
  MOEC_REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  Waiting w(this);
  real(this, cond);
  Acquire(this);
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  MOEC_REAL(bool (*)(Mutex*, const Condition&, Duration),
            "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Waiting w(this);
  const bool r = real(this, cond, timeout);
  Acquire(this);
  return r;
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  MOEC_REAL(bool (*)(Mutex*, const Condition&, Time),
            "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Waiting w(this);
  const bool r = real(this, cond, deadline);
  Acquire(this);
  return r;
}
bool Condition::Eval() const {
  MOEC_REAL(bool (*)(const Condition*), "_ZNK4absl7debian39Condition4EvalEv");
  // Evaluated holding the lock — by the waiter (before it first blocks, and when it has
  // reacquired it) or by a thread unlocking — which may be given up right after.
  const void* mu = waiting_on != nullptr ? waiting_on : unlocking;
  if (mu == nullptr) return real(this);
  Acquire(mu);
  const bool r = real(this);
  Release(mu);
  return r;
}
void CondVar::Wait(Mutex* mu) {
  MOEC_REAL(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  Release(mu);
  real(this, mu);
  Acquire(mu);
}
bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  MOEC_REAL(bool (*)(CondVar*, Mutex*, Duration),
            "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Release(mu);
  const bool r = real(this, mu, timeout);
  Acquire(mu);
  return r;
}
bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  MOEC_REAL(bool (*)(CondVar*, Mutex*, Time),
            "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Release(mu);
  const bool r = real(this, mu, deadline);
  Acquire(mu);
  return r;
}
void Notification::Notify() {
  MOEC_REAL(void (*)(Notification*), "_ZN4absl7debian312Notification6NotifyEv");
  Release(this);
  real(this);
}
void Notification::WaitForNotification() const {
  MOEC_REAL(void (*)(const Notification*), "_ZNK4absl7debian312Notification19WaitForNotificationEv");
  real(this);
  Acquire(this);
}
bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  MOEC_REAL(bool (*)(const Notification*, Duration),
            "_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool r = real(this, timeout);
  if (r) Acquire(this);
  return r;
}
bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  MOEC_REAL(bool (*)(const Notification*, Time),
            "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool r = real(this, deadline);
  if (r) Acquire(this);
  return r;
}
void ReleasableMutexLock::Release() {
  // The lock's one member is its Mutex*; the library's Release unlocks it directly.
  Mutex* mu = *reinterpret_cast<Mutex**>(this);
  MOEC_REAL(void (*)(ReleasableMutexLock*), "_ZN4absl7debian319ReleasableMutexLock7ReleaseEv");
  if (mu != nullptr) ::Release(mu);
  real(this);
}

#undef MOEC_REAL

ABSL_NAMESPACE_END
}  // namespace absl
