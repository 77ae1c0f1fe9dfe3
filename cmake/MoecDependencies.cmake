# Third-party dependencies, all from Debian 12 packages (deploy/setup-debian.sh installs them).
find_package(Threads REQUIRED)
find_package(absl REQUIRED)
find_package(Protobuf REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(glog REQUIRED)

if(NOT MOEC_FUZZ_ONLY)
  find_package(RocksDB REQUIRED)
  find_package(GTest REQUIRED)
  if(MOEC_BUILD_BENCHMARKS)
    find_package(benchmark REQUIRED)
  endif()
else()
  find_package(RocksDB REQUIRED)
endif()

# libtorch 1.13 (Debian, CPU). Its config references an imported gflags target whose location is
# only set when the gflags library was found first (ARCHITECTURE.md "Build facts").
if(NOT MOEC_FUZZ_ONLY)
  find_library(GFLAGS_LIBRARY gflags REQUIRED)
  find_package(Torch REQUIRED)
  # One interface target so that torch's flags and libraries travel together; only libraries
  # that really compute with tensors link it (model runtime, stages, kernels' torch glue).
  add_library(moec_torch INTERFACE)
  target_link_libraries(moec_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(moec_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
  separate_arguments(_moec_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(moec_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_moec_torch_flags}>)
endif()
