# Third-party dependencies: Debian 12 packages (deploy/setup-debian.sh installs them) and
# libtorch from PyPI's PyTorch wheel (deploy/setup-python.sh), see below.
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

# libtorch from PyTorch 2.x (docs/development.md "libtorch"). Found through, in order:
#   - Torch_DIR, when given (a GPU cluster's own PyTorch, an unpacked libtorch zip):
#     -DTorch_DIR=<prefix>/share/cmake/Torch;
#   - the torch package of MOEC_PYTHON (torch.utils.cmake_prefix_path); by default the project's
#     .venv, where deploy/setup-python.sh installs the pinned CUDA wheel (deploy/requirements.txt).
# Debian's libtorch 1.13 is not supported any more (no CUDA, an older c10d). TorchConfig.cmake
# and its Caffe2 package in the system paths first, so a Debian libtorch-dev on the machine would be
# picked up beside the right headers: both are named here, from the chosen prefix.
set(MOEC_TORCH_MIN_VERSION 2.4)
# CUDA targets for torch's own CUDA flags (else it probes for a GPU and lists a dozen); moec's
# kernels use CMAKE_CUDA_ARCHITECTURES (cmake/MoecCuda.cmake).
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
set(MOEC_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python3" CACHE FILEPATH
    "Python whose torch package provides libtorch (when Torch_DIR is not set)")
if(NOT MOEC_FUZZ_ONLY)
  if(NOT Torch_DIR)
    if(NOT EXISTS "${MOEC_PYTHON}")
      message(FATAL_ERROR "moec: no libtorch. Run deploy/setup-python.sh (installs the pinned "
        "PyTorch into ${PROJECT_SOURCE_DIR}/.venv), or pass -DMOEC_PYTHON=<a python with torch> "
        "or -DTorch_DIR=<libtorch>/share/cmake/Torch.")
    endif()
    execute_process(
      COMMAND "${MOEC_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE _moec_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
      ERROR_VARIABLE _moec_torch_err RESULT_VARIABLE _moec_torch_rc)
    if(NOT _moec_torch_rc EQUAL 0)
      message(FATAL_ERROR "moec: ${MOEC_PYTHON} cannot import torch (${_moec_torch_err}). "
        "Run deploy/setup-python.sh or pass -DTorch_DIR=<libtorch>/share/cmake/Torch.")
    endif()
    set(Torch_DIR "${_moec_torch_prefix}/Torch" CACHE PATH "libtorch's CMake package" FORCE)
  endif()
  get_filename_component(_moec_torch_lib "${Torch_DIR}/../../../lib" ABSOLUTE)
  get_filename_component(_moec_caffe2_dir "${Torch_DIR}/../Caffe2" ABSOLUTE)
  set(Caffe2_DIR "${_moec_caffe2_dir}" CACHE PATH "libtorch's Caffe2 CMake package" FORCE)
  # (the variable names TorchConfig.cmake uses)
  foreach(_pair TORCH_LIBRARY:torch c10_LIBRARY:c10 C10_CUDA_LIBRARY:c10_cuda
                CAFFE2_NVRTC_LIBRARY:caffe2_nvrtc)
    string(REPLACE ":" ";" _pair "${_pair}")
    list(GET _pair 0 _var)
    list(GET _pair 1 _name)
    if(EXISTS "${_moec_torch_lib}/lib${_name}.so")
      set(${_var} "${_moec_torch_lib}/lib${_name}.so" CACHE FILEPATH "" FORCE)
    endif()
  endforeach()
  find_package(Torch ${MOEC_TORCH_MIN_VERSION} REQUIRED CONFIG PATHS "${Torch_DIR}" NO_DEFAULT_PATH)
  # The wheel's libtorch.so and libtorch_cpu.so export their own copies of parts of libstdc++
  # (std::filesystem, std::chrono's tzdb, ...: its toolchain links them statically). Loaded before
  # libstdc++, they would serve moec's calls too, and std::filesystem::remove_all jumps to null.
  # libstdc++ comes first in every binary's DT_NEEDED, so its own definitions win.
  add_link_options("LINKER:--push-state,--no-as-needed" "-lstdc++" "LINKER:--pop-state")
  message(STATUS "moec: libtorch ${Torch_VERSION} from ${Torch_DIR}")
  # One interface target so that torch's flags and libraries travel together; only libraries
  # that really compute with tensors link it (model runtime, stages, kernels' torch glue).
  add_library(moec_torch INTERFACE)
  target_link_libraries(moec_torch INTERFACE ${TORCH_LIBRARIES})
  # The wheel ships its own (older) protobuf headers in torch/include/google: they would shadow
  # Debian's protobuf that moec's generated .pb.h need. moec sees torch/include through a folder
  # of links to every entry but google/ (libtorch's own headers never include protobuf).
  set(_moec_torch_includes "")
  set(_moec_torch_filtered "${CMAKE_BINARY_DIR}/torch_include")
  foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
    if(EXISTS "${_dir}/google/protobuf")
      file(MAKE_DIRECTORY "${_moec_torch_filtered}")
      file(GLOB _entries RELATIVE "${_dir}" "${_dir}/*")
      foreach(_entry IN LISTS _entries)
        if(NOT _entry STREQUAL "google")
          file(CREATE_LINK "${_dir}/${_entry}" "${_moec_torch_filtered}/${_entry}" SYMBOLIC)
        endif()
      endforeach()
      list(APPEND _moec_torch_includes "${_moec_torch_filtered}")
    else()
      list(APPEND _moec_torch_includes "${_dir}")
    endif()
  endforeach()
  target_include_directories(moec_torch SYSTEM INTERFACE ${_moec_torch_includes})
  # torch's imported targets carry torch/include too: point them at the filtered folder.
  get_directory_property(_moec_imported IMPORTED_TARGETS)
  foreach(_target IN LISTS _moec_imported)
    get_target_property(_incs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(_incs)
      set(_new_incs "")
      foreach(_inc IN LISTS _incs)
        if(EXISTS "${_inc}/google/protobuf")
          list(APPEND _new_incs "${_moec_torch_filtered}")
        else()
          list(APPEND _new_incs "${_inc}")
        endif()
      endforeach()
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_incs}")
    endif()
  endforeach()
  separate_arguments(_moec_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(moec_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_moec_torch_flags}>)
endif()
