// Makes absl's synchronisation visible to ThreadSanitizer in VERDICTD_SANITIZE=thread builds.
//
// Debian's absl is a shared library built without -fsanitize=thread, so its Mutex, CondVar,
// Notification and BlockingCounter synchronise through atomics and futexes that TSan never sees:
// every field our code guards with an absl::Mutex would be reported as a data race. TSan's usual
// remedy (suppressing by library) cannot help, because both racing accesses are in our code.
//
// Instead the link wraps (ld --wrap, see the root CMakeLists.txt) our calls into those classes:
// each wrapper tells TSan what the call means through its public annotation interface
// (sanitizer/tsan_interface.h) and then calls the real function. Calls made inside Debian's
// libraries (gRPC's own use of absl) are not wrapped and stay invisible; see tsan.supp.
//
// The annotations follow absl's own (absl/synchronization/mutex.cc when built with TSan):
//  * lock: __tsan_mutex_pre_lock, the real lock, __tsan_mutex_post_lock (acquire);
//  * unlock: __tsan_mutex_pre_unlock (release), the real unlock, __tsan_mutex_post_unlock;
//  * Await / CondVar::Wait: an unlock then a lock around the real call;
//  * Notification, BlockingCounter, Barrier: release before the signalling call, acquire after
//    a successful wait.
// TSan ignores memory accesses between a pre_ and its post_ annotation, so absl::Condition
// functions that absl evaluates inside Unlock or Await (possibly on another thread) are not
// checked; everything else our code does still is.

#include <sanitizer/tsan_interface.h>

#include <cstddef>

#include "absl/base/options.h"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

// The mangled names below (and the --wrap list in CMakeLists.txt) spell absl's inline namespace.
#define VERDICTD_STR2(x) #x
#define VERDICTD_STR(x) VERDICTD_STR2(x)
static_assert(sizeof(VERDICTD_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME)) == sizeof("debian3"),
              "absl's inline namespace is not debian3: update the --wrap list and this file");

namespace {

// Notification::HasBeenNotified() is inline (so instrumented): an acquire load of the atomic
// flag that follows the Mutex. TSan pairs acquires and releases by address, so Notify releases
// on that address.
void* NotifiedFlag(const absl::Notification* notification) {
  return reinterpret_cast<char*>(const_cast<absl::Notification*>(notification)) +
         sizeof(absl::Mutex);
}

constexpr unsigned kRead = __tsan_mutex_read_lock;
constexpr unsigned kTry = __tsan_mutex_try_lock;
constexpr unsigned kTryFailed = __tsan_mutex_try_lock_failed;

void AnnotateUnlockForWait(absl::Mutex* mu) { __tsan_mutex_pre_unlock(mu, 0); }
void AnnotateLockAfterWait(absl::Mutex* mu) {
  __tsan_mutex_post_unlock(mu, 0);
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
}

}  // namespace

using absl::BlockingCounter;
using absl::Condition;
using absl::CondVar;
using absl::Duration;
using absl::Mutex;
using absl::Notification;
using absl::Time;

// VERDICTD_WRAP(ret, mangled, params...) declares __real_<mangled> and defines
// __wrap_<mangled>'s signature; the body follows.
#define VERDICTD_WRAP(ret, mangled, ...)        \
  extern "C" ret __real_##mangled(__VA_ARGS__); \
  extern "C" ret __wrap_##mangled(__VA_ARGS__)

// --- Mutex ------------------------------------------------------------------------------------

VERDICTD_WRAP(void, _ZN4absl7debian35Mutex4LockEv, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, 0);
  __real__ZN4absl7debian35Mutex4LockEv(mu);
  __tsan_mutex_post_lock(mu, 0, 0);
}

VERDICTD_WRAP(void, _ZN4absl7debian35Mutex6UnlockEv, Mutex* mu) {
  __tsan_mutex_pre_unlock(mu, 0);
  __real__ZN4absl7debian35Mutex6UnlockEv(mu);
  __tsan_mutex_post_unlock(mu, 0);
}

VERDICTD_WRAP(bool, _ZN4absl7debian35Mutex7TryLockEv, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, kTry);
  const bool locked = __real__ZN4absl7debian35Mutex7TryLockEv(mu);
  __tsan_mutex_post_lock(mu, kTry | (locked ? 0 : kTryFailed), 0);
  return locked;
}

VERDICTD_WRAP(void, _ZN4absl7debian35Mutex10ReaderLockEv, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, kRead);
  __real__ZN4absl7debian35Mutex10ReaderLockEv(mu);
  __tsan_mutex_post_lock(mu, kRead, 0);
}

VERDICTD_WRAP(void, _ZN4absl7debian35Mutex12ReaderUnlockEv, Mutex* mu) {
  __tsan_mutex_pre_unlock(mu, kRead);
  __real__ZN4absl7debian35Mutex12ReaderUnlockEv(mu);
  __tsan_mutex_post_unlock(mu, kRead);
}

VERDICTD_WRAP(bool, _ZN4absl7debian35Mutex13ReaderTryLockEv, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, kRead | kTry);
  const bool locked = __real__ZN4absl7debian35Mutex13ReaderTryLockEv(mu);
  __tsan_mutex_post_lock(mu, kRead | kTry | (locked ? 0 : kTryFailed), 0);
  return locked;
}

// LockWhen* return with the lock held whatever they return.
VERDICTD_WRAP(void, _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE, Mutex* mu,
              const Condition& cond) {
  __tsan_mutex_pre_lock(mu, 0);
  __real__ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE(mu, cond);
  __tsan_mutex_post_lock(mu, 0, 0);
}

VERDICTD_WRAP(bool, _ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE,
              Mutex* mu, const Condition& cond, Duration timeout) {
  __tsan_mutex_pre_lock(mu, 0);
  const bool result =
      __real__ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE(mu, cond,
                                                                                         timeout);
  __tsan_mutex_post_lock(mu, 0, 0);
  return result;
}

VERDICTD_WRAP(bool, _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE,
              Mutex* mu, const Condition& cond, Time deadline) {
  __tsan_mutex_pre_lock(mu, 0);
  const bool result =
      __real__ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(mu, cond,
                                                                                      deadline);
  __tsan_mutex_post_lock(mu, 0, 0);
  return result;
}

VERDICTD_WRAP(void, _ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE, Mutex* mu,
              const Condition& cond) {
  __tsan_mutex_pre_lock(mu, kRead);
  __real__ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE(mu, cond);
  __tsan_mutex_post_lock(mu, kRead, 0);
}

// Await* are called, and return, with the lock held (in our code always as a writer); in
// between absl releases it while the condition is false.
VERDICTD_WRAP(void, _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE, Mutex* mu,
              const Condition& cond) {
  AnnotateUnlockForWait(mu);
  __real__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(mu, cond);
  AnnotateLockAfterWait(mu);
}

VERDICTD_WRAP(bool, _ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE,
              Mutex* mu, const Condition& cond, Duration timeout) {
  AnnotateUnlockForWait(mu);
  const bool result =
      __real__ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE(mu, cond,
                                                                                      timeout);
  AnnotateLockAfterWait(mu);
  return result;
}

VERDICTD_WRAP(bool, _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE,
              Mutex* mu, const Condition& cond, Time deadline) {
  AnnotateUnlockForWait(mu);
  const bool result = __real__ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE(
      mu, cond, deadline);
  AnnotateLockAfterWait(mu);
  return result;
}

// A destroyed Mutex must not be locked (TSan reports it), and its memory may then hold a new one.
VERDICTD_WRAP(void, _ZN4absl7debian35MutexD1Ev, Mutex* mu) {
  __real__ZN4absl7debian35MutexD1Ev(mu);
  __tsan_mutex_destroy(mu, 0);
}

VERDICTD_WRAP(void, _ZN4absl7debian35MutexD2Ev, Mutex* mu) {
  __real__ZN4absl7debian35MutexD2Ev(mu);
  __tsan_mutex_destroy(mu, 0);
}

// --- CondVar: waiting releases and reacquires the mutex -----------------------------------------

VERDICTD_WRAP(void, _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE, CondVar* cv, Mutex* mu) {
  AnnotateUnlockForWait(mu);
  __real__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(cv, mu);
  AnnotateLockAfterWait(mu);
}

VERDICTD_WRAP(bool, _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE,
              CondVar* cv, Mutex* mu, Duration timeout) {
  AnnotateUnlockForWait(mu);
  const bool result =
      __real__ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(cv, mu, timeout);
  AnnotateLockAfterWait(mu);
  return result;
}

VERDICTD_WRAP(bool, _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE, CondVar* cv,
              Mutex* mu, Time deadline) {
  AnnotateUnlockForWait(mu);
  const bool result =
      __real__ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(cv, mu, deadline);
  AnnotateLockAfterWait(mu);
  return result;
}

// --- Notification -------------------------------------------------------------------------------

VERDICTD_WRAP(void, _ZN4absl7debian312Notification6NotifyEv, Notification* n) {
  __tsan_release(NotifiedFlag(n));
  __real__ZN4absl7debian312Notification6NotifyEv(n);
}

VERDICTD_WRAP(void, _ZNK4absl7debian312Notification19WaitForNotificationEv, const Notification* n) {
  __real__ZNK4absl7debian312Notification19WaitForNotificationEv(n);
  __tsan_acquire(NotifiedFlag(n));
}

VERDICTD_WRAP(bool, _ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE,
              const Notification* n, Duration timeout) {
  const bool notified =
      __real__ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE(
          n, timeout);
  if (notified) {
    __tsan_acquire(NotifiedFlag(n));
  }
  return notified;
}

VERDICTD_WRAP(bool, _ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE,
              const Notification* n, Time deadline) {
  const bool notified =
      __real__ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE(n,
                                                                                         deadline);
  if (notified) {
    __tsan_acquire(NotifiedFlag(n));
  }
  return notified;
}

// --- BlockingCounter and Barrier ----------------------------------------------------------------

VERDICTD_WRAP(bool, _ZN4absl7debian315BlockingCounter14DecrementCountEv, BlockingCounter* c) {
  __tsan_release(c);
  return __real__ZN4absl7debian315BlockingCounter14DecrementCountEv(c);
}

VERDICTD_WRAP(void, _ZN4absl7debian315BlockingCounter4WaitEv, BlockingCounter* c) {
  __real__ZN4absl7debian315BlockingCounter4WaitEv(c);
  __tsan_acquire(c);
}

VERDICTD_WRAP(bool, _ZN4absl7debian37Barrier5BlockEv, absl::Barrier* b) {
  __tsan_release(b);
  const bool last = __real__ZN4absl7debian37Barrier5BlockEv(b);
  __tsan_acquire(b);
  return last;
}
