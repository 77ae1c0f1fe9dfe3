// NewNcclCommunicator in builds without CUDA (MOEC_WITH_CUDA off): NCCL needs the CUDA toolkit.
#include "comm/communicator.h"

namespace moec::comm {

bool NcclBuilt() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(
    std::shared_ptr<RendezvousStore>, const NcclOptions&) {
  return absl::UnimplementedError(
      "this moec was built without CUDA, so without NCCL; rebuild with MOEC_ENABLE_CUDA=ON or use "
      "--collectives gloo");
}

}  // namespace moec::comm
