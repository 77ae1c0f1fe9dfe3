# CUDA detection. Sets MOEC_WITH_CUDA (ON/OFF) and, when ON, enables the CUDA language.
# nvcc is looked for in /usr/local/cuda/bin, $CUDA_HOME/bin and on PATH. GPU tests skip themselves
# at run time when no device is present, so a build with CUDA on passes on GPU-less machines.
# Included before libtorch is found: torch's cuda.cmake enables CUDA itself, with whatever nvcc
# PATH gives (or /usr/local, when that nvcc is a wrapper in /usr/local/bin). Were moec to pick
# another nvcc afterwards, CMAKE_CUDA_COMPILER would change under a configured cache, and CMake
# would delete the cache and configure again, forever. Both therefore use this nvcc and its toolkit.
set(MOEC_WITH_CUDA OFF)
if(NOT MOEC_ENABLE_CUDA STREQUAL "OFF")
  find_program(MOEC_NVCC nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
  if(MOEC_NVCC)
    set(CMAKE_CUDA_COMPILER ${MOEC_NVCC})
    get_filename_component(_moec_cuda_root "${MOEC_NVCC}" DIRECTORY)
    get_filename_component(_moec_cuda_root "${_moec_cuda_root}" DIRECTORY)
    # FindCUDA (torch's cuda.cmake) and FindCUDAToolkit take the toolkit from these.
    set(CUDA_TOOLKIT_ROOT_DIR "${_moec_cuda_root}" CACHE PATH "CUDA toolkit moec and libtorch use")
    set(CUDAToolkit_ROOT "${_moec_cuda_root}")
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere and Hopper, plus PTX for newer devices.
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(MOEC_WITH_CUDA ON)
  elseif(MOEC_ENABLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MOEC_ENABLE_CUDA=ON but nvcc was not found")
  endif()
endif()
