#!/usr/bin/env python3
"""HF transformers on the same shapes, for comparison in the same run as hybridgen-run:
random bf16 weights of a preset config on the GPU, prefill a random prompt, then time greedy
decode steps with DynamicCache (the KV on the GPU). Prints one line per context.
  python3 bench/hf_decode.py models/presets/llama-3.1-8b 4096 32768
"""
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    preset, contexts = sys.argv[1], [int(c) for c in sys.argv[2:]]
    cfg = AutoConfig.from_pretrained(preset)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    for ctx in contexts:
        ids = torch.randint(0, cfg.vocab_size, (1, ctx), device="cuda", generator=g)
        with torch.no_grad():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            steps = []
            for _ in range(20):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                steps.append(time.perf_counter() - t0)
        print(f"HF transformers {transformers.__version__} (torch {torch.__version__}, sdpa, "
              f"DynamicCache on GPU) {preset} ctx {ctx}: prefill {prefill:.3f} s, decode "
              f"{1000 * statistics.median(steps[4:]):.2f} ms/token (median of 16)", flush=True)
        del past, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
