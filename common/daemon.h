// The start every moec daemon (moec-coordinator, moec-worker) shares: process tuning, flags
// (dashed spellings accepted) and glog to stderr. Call it first in main, after setting the
// program's usage text.
#ifndef MOEC_COMMON_DAEMON_H_
#define MOEC_COMMON_DAEMON_H_

namespace moec {

enum class ThreadWait { kDefault, kPassive };

// kPassive (compute daemons): re-executes with OMP_WAIT_POLICY=PASSIVE and
// OPENBLAS_THREAD_TIMEOUT=4 first (UsePassiveThreadWait, docs/data_plane.md), so that the idle
// threads of libtorch's OpenMP pool and of OpenBLAS sleep instead of spinning against each other.
void InitDaemon(int argc, char** argv, ThreadWait thread_wait);

}  // namespace moec

#endif  // MOEC_COMMON_DAEMON_H_
