# The logits calculator against host read bandwidth measured in the same run (bench/logits_bench.cpp).
# Include from bench/CMakeLists.txt: include(${CMAKE_CURRENT_SOURCE_DIR}/logits.cmake)
add_executable(hybridgen-logits-bench ${CMAKE_CURRENT_LIST_DIR}/logits_bench.cpp)
target_include_directories(hybridgen-logits-bench PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(hybridgen-logits-bench PRIVATE hybridgen OpenMP::OpenMP_CXX)
# -O3 for the bandwidth loop (as bench/membw.cpp; no -march, so it runs on any x86-64 CPU); the
# calculator itself lives in libhybridgen and picks its kernel at run time.
target_compile_options(hybridgen-logits-bench PRIVATE -O3)
