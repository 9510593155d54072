# ctest eval_profile_roundtrip: hybridgen-eval profile writes a model profile; its k_min must be
# an integer K of the sweep, and hybridgen-run --profile must take it as the scheduler's K_min.
#   cmake -D EVAL=hybridgen-eval -D RUN=hybridgen-run -D MODEL=dir -D OUT=file -P check-profile.cmake
execute_process(
  COMMAND ${EVAL} profile -m ${MODEL} -c 128 -t 1 --random-tokens 96 --prefill 32 --window 8
          --policy hybrid:post --k 4,8,16,32 --metric top1 --tolerance 1 --profile-out ${OUT}
          -q --log-level error
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "hybridgen-eval profile exited ${rc}:\n${out}\n${err}")
endif()
file(READ ${OUT} profile)
string(JSON k_min ERROR_VARIABLE json_err GET "${profile}" k_min)
if(json_err OR NOT k_min MATCHES "^[0-9]+$")
  message(FATAL_ERROR "${OUT}: no integer k_min (${json_err}):\n${profile}")
endif()
string(JSON n_sweep LENGTH "${profile}" sweep)
set(in_sweep FALSE)
math(EXPR last "${n_sweep} - 1")
foreach(i RANGE ${last})
  string(JSON k GET "${profile}" sweep ${i} k)
  if(k EQUAL k_min)
    set(in_sweep TRUE)
  endif()
endforeach()
if(NOT in_sweep OR NOT n_sweep EQUAL 4)
  message(FATAL_ERROR "${OUT}: k_min ${k_min} is not one of the 4 swept K:\n${profile}")
endif()
# The scheduler reads it: hybridgen-run logs the K_min it runs with.
execute_process(
  COMMAND ${RUN} -m ${MODEL} -c 128 -t 1 --n-prompt 40 -n 4 --policy hybrid --window 8
          --profile ${OUT} --log-level info
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT err MATCHES "K_min ${k_min},")
  message(FATAL_ERROR "hybridgen-run --profile ${OUT} did not run with K_min ${k_min}:\n${err}")
endif()
message("profile ok: k_min ${k_min} of ${n_sweep} swept K")
