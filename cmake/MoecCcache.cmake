# Use ccache for C, C++ and CUDA when available (CI rebuilds are then mostly cache hits).
find_program(MOEC_CCACHE ccache)
if(MOEC_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${MOEC_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${MOEC_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${MOEC_CCACHE})
endif()
