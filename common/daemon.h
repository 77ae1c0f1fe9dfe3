// The start every moec daemon (moec-coordinator, moec-worker) shares: process tuning, flags
// (dashed spellings accepted) and glog to stderr. Call it first in main, after setting the
// program's usage text.
#ifndef MOEC_COMMON_DAEMON_H_
#define MOEC_COMMON_DAEMON_H_

namespace moec {

enum class OpenMpWait { kDefault, kPassive };

// kPassive (compute daemons): re-executes with OMP_WAIT_POLICY=PASSIVE first
// (docs/data_plane.md), so that libtorch's idle OpenMP threads sleep instead of spinning against
// the BLAS threads.
void InitDaemon(int argc, char** argv, OpenMpWait openmp_wait);

}  // namespace moec

#endif  // MOEC_COMMON_DAEMON_H_
