// `moec`'s side of the commands that run libtorch: libmoec_torch_commands.so, next to the moec
// binary, is loaded on first use (commands_torch.cc holds the commands).
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/commands.h"

namespace moec::client::cli {
namespace {

constexpr char kModule[] = "libmoec_torch_commands.so";

// The directory of the running binary.
std::string BinaryDir() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// The address of `symbol` in the module, loaded once.
absl::StatusOr<void*> TorchSymbol(const char* symbol) {
  static void* handle = nullptr;
  static std::string error;
  if (handle == nullptr && error.empty()) {
    const std::string path = BinaryDir() + "/" + kModule;
    handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* e = ::dlerror();
      error = absl::StrCat("this command runs libtorch, which moec loads from ", path, ": ",
                           e != nullptr ? e : "dlopen failed",
                           " (build the target moec_torch_commands, or reinstall moec)");
    }
  }
  if (handle == nullptr) return absl::FailedPreconditionError(error);
  void* f = ::dlsym(handle, symbol);
  if (f == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(kModule, " has no ", symbol,
                                                      ": it is from another build of moec"));
  }
  return f;
}

}  // namespace

int CmdEval(const Args& args) {
  absl::StatusOr<void*> f = TorchSymbol("moec_torch_eval");
  if (!f.ok()) return Error(kUnavailable, f.status());
  return reinterpret_cast<int (*)(const Args&)>(*f)(args);
}

int MakeTrainedTinyModel(const Args& args, const std::string& dir, const TinyModelFlags& flags) {
  absl::StatusOr<void*> f = TorchSymbol("moec_torch_make_trained_tiny_model");
  if (!f.ok()) return Error(kUnavailable, f.status());
  return reinterpret_cast<int (*)(const Args&, const std::string&, const TinyModelFlags&)>(*f)(
      args, dir, flags);
}

}  // namespace moec::client::cli
