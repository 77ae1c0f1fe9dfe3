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

# moec_cc_test(NAME name SRCS ... DEPS ... [LABELS ...] [TIMEOUT seconds])
# Registers each gtest case as its own CTest test (gtest_discover_tests).
function(moec_cc_test)
  if(MOEC_FUZZ_ONLY)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOEC_WARNINGS}>)
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} moec_testing GTest::gmock GTest::gtest_main)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  include(GoogleTest)
  gtest_discover_tests(${ARG_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
endfunction()
