#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) on the same GGUF, prompt and threads as hybridgen-run,
for the CPU decode comparison in docs/benchmarks.md. Greedy, end-of-generation ignored, so every
repetition decodes exactly N tokens; decode time is llama.cpp's own eval timing (llama_perf),
prompt processing excluded. Prints one line per repetition and the medians.
  python3 bench/llama_cpp_decode.py MODEL.gguf "Once upon a time" 128 2 [reps=3]
Build llama-cpp-python for the ISA being compared, e.g. AVX2 only:
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
    pip install llama-cpp-python==0.3.36
"""
import statistics
import sys

import llama_cpp
from llama_cpp import Llama


def main():
    model, prompt, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False, seed=0)
    print("llama.cpp system info:", llama_cpp.llama_print_system_info().decode().strip())
    ms_tok, pp_tps = [], []
    for r in range(reps):
        llm.reset()
        ids = llm.tokenize(prompt.encode(), add_bos=True)
        llm.eval(ids)  # prompt
        llama_cpp.llama_perf_context_reset(llm.ctx)
        toks = 0
        for tok in llm.generate([], top_k=1, temp=0.0, reset=False):
            toks += 1
            if toks >= n:
                break
        perf = llama_cpp.llama_perf_context(llm.ctx)
        ms = perf.t_eval_ms / max(perf.n_eval, 1)
        ms_tok.append(ms)
        print(f"rep {r}: {perf.n_eval} decode evals, {ms:.2f} ms/token")
    print(f"llama.cpp decode median: {statistics.median(ms_tok):.2f} ms/token "
          f"({1000 / statistics.median(ms_tok):.1f} tokens/s), threads {threads}, {reps} reps")


if __name__ == "__main__":
    main()
