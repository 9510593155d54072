#!/usr/bin/env python3
"""llama.cpp's logits for the default model, the reference of native (quantized) weights.

llama.cpp (llama-cpp-python 0.3.36, built from source) evaluates the default GGUF
(SmolLM2-135M-Instruct.Q4_1.gguf: Q4_1 projections, Q8_0 embedding / tied LM head) on the
token sequence of tests/data/models/smollm2_reference.json, one token per llama_decode (n_batch
1), so every projection is its decode GEMV: ggml_vec_dot_q4_1_q8_1 / q8_0_q8_0 with the
activations quantized per block of 32 — the arithmetic --weight-format native follows. For
each position it records the top-20 token ids and logits, the argmax and the logsumexp:
tests/data/models/smollm2_llama_cpp.json. tests/unit/native_weights_test.cpp compares.

Run from the repository root (a venv with llama-cpp-python and numpy):
  python3 tests/scripts/make_llama_cpp_logits_golden.py [MODEL.gguf] [threads=2]
The build used for the committed file: AVX2 only (CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON
-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF ..."), recorded in "llama_cpp_system_info".
"""
import json
import os
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOP = 20


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        ROOT, "models", "cache", "SmolLM2-135M-Instruct.Q4_1.gguf")
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with open(os.path.join(ROOT, "tests", "data", "models", "smollm2_reference.json")) as f:
        tokens = json.load(f)["tokens"]
    llm = Llama(model_path=model, n_ctx=512, n_batch=1, n_ubatch=1, n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False, seed=0)
    llm.reset()
    llm.eval(tokens)  # n_batch 1: one llama_decode per token
    scores = np.array(llm.scores[:len(tokens)], dtype=np.float64)  # [n_tokens, vocab]
    out = {
        "source": "llama-cpp-python " + llama_cpp.__version__ + " on " + os.path.basename(model) +
                  ", n_batch 1 (every position a decode step), " + str(threads) + " threads",
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "tokens": tokens,
        "top_ids": [], "top_logits": [], "argmax": [], "logsumexp": [],
    }
    for row in scores:
        ids = np.argsort(-row, kind="stable")[:TOP]
        out["top_ids"].append([int(i) for i in ids])
        out["top_logits"].append([float(np.float32(row[i])) for i in ids])
        out["argmax"].append(int(ids[0]))
        mx = row.max()
        out["logsumexp"].append(float(mx + np.log(np.exp(row - mx).sum())))
    path = os.path.join(ROOT, "tests", "data", "models", "smollm2_llama_cpp.json")
    with open(path, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print("wrote", path, len(tokens), "positions;", out["llama_cpp_system_info"])


if __name__ == "__main__":
    main()
