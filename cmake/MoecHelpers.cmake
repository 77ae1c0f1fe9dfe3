# moec_cc_library / moec_cc_test: small helpers in the spirit of absl_cc_library / absl_cc_test.

set(MOEC_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare)

# moec_cc_library(NAME name SRCS ... [HDRS ...] DEPS ... [PUBLIC_DEPS ...])
function(moec_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS;PUBLIC_DEPS" ${ARGN})
  add_library(${ARG_NAME} ${ARG_SRCS} ${ARG_HDRS})
  target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_compile_options(${ARG_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOEC_WARNINGS}>)
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_DEPS})
endfunction()

# moec_cc_test(NAME name SRCS ... DEPS ... [LABELS ...] [TIMEOUT seconds] [PROPERTIES k v ...])
# Registers each gtest case as its own CTest test (gtest_discover_tests). Labels say what a test
# is: unit (default), e2e, oracle, quality, fuzz, bench.
function(moec_cc_test)
  if(MOEC_FUZZ_ONLY)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;PROPERTIES" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOEC_WARNINGS}>)
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} moec_testing GTest::gmock GTest::gtest_main)
  if(MOEC_TSAN)
    target_link_libraries(${ARG_NAME} PRIVATE moec_tsan_absl_sync ${CMAKE_DL_LIBS})
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  include(GoogleTest)
  gtest_discover_tests(${ARG_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT} ${ARG_PROPERTIES})
endfunction()

# moec_torch_pch(target): precompiles <ATen/ATen.h> for a target that uses libtorch. The header
# is compiled once for libraries (-fPIC) and once for executables (-fPIE; GCC refuses a PCH
# built with the other setting) and every target reuses one of the two (a target with its own -m/-f
# code-generation flags, like moec_quant, needs its own). A .gch of ATen is about
# 320 MB with -g: one per target (20 of them) filled CI's disk.
function(moec_torch_pch target)
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE")
    set(provider moec_pch_pie)
  else()
    set(provider moec_pch_pic)
  endif()
  if(NOT TARGET ${provider})
    set(src ${PROJECT_BINARY_DIR}/${provider}.cc)
    if(NOT EXISTS ${src})
      file(WRITE ${src} "// Compiles the shared ATen precompiled header (cmake/MoecHelpers.cmake).\n")
    endif()
    add_library(${provider} OBJECT ${src})
    target_link_libraries(${provider} PRIVATE moec_torch)
    target_compile_options(${provider} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOEC_WARNINGS}>)
    if(provider STREQUAL "moec_pch_pie")
      set_target_properties(${provider} PROPERTIES POSITION_INDEPENDENT_CODE OFF)
      target_compile_options(${provider} PRIVATE -fPIE)
    endif()
    target_precompile_headers(${provider} PRIVATE <ATen/ATen.h>)
  endif()
  target_precompile_headers(${target} REUSE_FROM ${provider})
endfunction()
