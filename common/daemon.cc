#include "common/daemon.h"

#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "common/cli_util.h"
#include "common/process_tuning.h"
#include "glog/logging.h"

namespace moec {

void InitDaemon(int argc, char** argv, ThreadWait thread_wait) {
  if (thread_wait == ThreadWait::kPassive) UsePassiveThreadWait(argv);
  TuneMallocForLargeBuffers();
  SkipMutexDeadlockDetection();
  // The normalized arguments must outlive parsing only: flags copy their values.
  std::vector<std::string> storage;
  std::vector<char*> args = NormalizeDashedFlags(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
}

}  // namespace moec
