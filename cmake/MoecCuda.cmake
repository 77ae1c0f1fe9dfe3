# CUDA detection. Sets MOEC_WITH_CUDA (ON/OFF) and, when ON, enables the CUDA language.
# nvcc is looked for on PATH and in /usr/local/cuda/bin. GPU tests skip themselves at run time
# when no device is present, so a build with CUDA on passes on GPU-less machines.
set(MOEC_WITH_CUDA OFF)
if(NOT MOEC_ENABLE_CUDA STREQUAL "OFF")
  find_program(MOEC_NVCC nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
  if(MOEC_NVCC)
    set(CMAKE_CUDA_COMPILER ${MOEC_NVCC})
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
