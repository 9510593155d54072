#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) on the same GGUF, prompt and threads as hybridgen-run,
for the CPU decode comparison in docs/benchmarks.md. Greedy, end-of-generation ignored, so every
repetition decodes exactly N tokens; decode time is llama.cpp's own eval timing (llama_perf),
prompt processing excluded. Prints one line per repetition and the medians.
  python3 bench/llama_cpp_decode.py MODEL.gguf "Once upon a time" 128 2 [reps=3] [prefill=0]
prefill > 0 also times prompt processing of that many seeded token ids, the same ids as
`hybridgen-run --n-prompt P` (splitmix64 from the default seed 0xC0FFEE, modulo the vocabulary),
in batches of 512 (llama.cpp's n_batch), timed by the wall clock around eval().
Build llama-cpp-python for the ISA being compared, e.g. AVX2 only:
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
    pip install llama-cpp-python==0.3.36
"""
import statistics
import sys
import time

import llama_cpp
from llama_cpp import Llama


def seeded_ids(n, vocab, seed=0xC0FFEE):
    """hybridgen-run --n-prompt's ids (tools/run/main.cpp): splitmix64 modulo the vocabulary."""
    mask, x, out = (1 << 64) - 1, seed, []
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) % vocab)
    return out


def main():
    model, prompt, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    prefill = int(sys.argv[6]) if len(sys.argv) > 6 else 0
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
    if prefill > 0:
        ids = seeded_ids(prefill, llm.n_vocab())
        pp_s = []
        for r in range(reps):
            llm.reset()  # eval() then drops the KV cache from position 0 on
            # Wall clock around eval (llama_perf's prompt counters stay 0 for eval's batches
            # in 0.3.36), as hybridgen-run's "prefill:" line is the wall time of its prefill.
            t0 = time.perf_counter()
            llm.eval(ids)
            pp_s.append(time.perf_counter() - t0)
            print(f"prefill rep {r}: {len(ids)} tokens in {pp_s[-1]:.3f} s "
                  f"({len(ids) / pp_s[-1]:.1f} tokens/s)")
        print(f"llama.cpp prefill median: {statistics.median(pp_s):.3f} s for {prefill} tokens "
              f"({prefill / statistics.median(pp_s):.1f} tokens/s), threads {threads}")
    print(f"llama.cpp decode median: {statistics.median(ms_tok):.2f} ms/token "
          f"({1000 / statistics.median(ms_tok):.1f} tokens/s), threads {threads}, {reps} reps")


if __name__ == "__main__":
    main()
