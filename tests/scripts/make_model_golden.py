#!/usr/bin/env python3
"""Makes the golden files of the model tests with HF transformers (the reference).

1. Tiny random-weight checkpoints, one per architecture, saved with save_pretrained as
   safetensors (f32, bf16, f16; one sharded), and the logits transformers computes for a fixed
   token sequence: tests/data/models/<name>/ + reference_logits.bin ([n_tokens, vocab] f32) +
   reference.json (token ids, shapes, dtype).
2. The default model (SmolLM2-135M-Instruct Q4_1 GGUF) loaded by transformers from the GGUF
   (transformers dequantizes it to float32): for a few hundred positions of a text, the top-1
   token, the top-20 tokens with their logits, and full rows at a few positions:
   tests/data/models/smollm2_reference.json.

Run from the repository root: python3 tests/scripts/make_model_golden.py [path/to/model.gguf]
Needs: torch, transformers, safetensors, gguf, numpy (pip). The tests read only the outputs.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "models")
N_TOKENS = 40


def tiny_configs():
    common = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, initializer_range=0.25)
    return {
        # Llama with GQA and Llama-3 rope scaling (bf16 weights).
        "tiny-llama": (transformers.LlamaConfig(
            **common, num_key_value_heads=2, intermediate_size=128, rms_norm_eps=1e-5,
            rope_theta=500000.0, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
            torch.bfloat16, None),
        # Qwen2: QKV bias, tied embeddings, sharded safetensors (f32).
        "tiny-qwen2": (transformers.Qwen2Config(
            **common, num_key_value_heads=1, intermediate_size=96, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False),
            torch.float32, "40KB"),
        # Mistral with a sliding window shorter than the sequence (f32).
        "tiny-mistral": (transformers.MistralConfig(
            **common, num_key_value_heads=2, intermediate_size=128, sliding_window=8,
            rope_theta=10000.0, tie_word_embeddings=False), torch.float32, None),
        # OPT: learned positions (offset 2), LayerNorm, ReLU, biases; MHA (f16 weights).
        "tiny-opt": (transformers.OPTConfig(
            vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            ffn_dim=128, max_position_embeddings=256, word_embed_proj_dim=64,
            do_layer_norm_before=True, init_std=0.25), torch.float16, None),
    }


def make_tiny():
    torch.manual_seed(1234)
    for name, (config, dtype, shard) in tiny_configs().items():
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        with torch.no_grad():  # biases and norms away from their trivial init
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or "norm" in pname:
                    p.add_(torch.randn_like(p) * 0.1)
        model = model.to(dtype)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(d, safe_serialization=True, **kwargs)
        for f in os.listdir(d):  # keep only what the engine reads
            if f == "generation_config.json":
                os.remove(os.path.join(d, f))
        # Reference: transformers loading the saved files in float32, as a user would (casting
        # the in-memory model instead would also round its rotary inv_freq buffer to bf16).
        ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                   attn_implementation="eager").eval()
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(0, config.vocab_size, (1, N_TOKENS), generator=g)
        with torch.no_grad():
            logits = ref(ids).logits[0].float().numpy()
        logits.astype("<f4").tofile(os.path.join(d, "reference_logits.bin"))
        json.dump({"tokens": ids[0].tolist(), "vocab_size": config.vocab_size,
                   "dtype": str(dtype), "transformers": transformers.__version__,
                   "torch": torch.__version__}, open(os.path.join(d, "reference.json"), "w"))
        print(name, "saved", sorted(os.listdir(d)))


TEXT = """The history of the city begins in the third century BC, when a Celtic tribe settled on an island in the river.
The Romans conquered the area in 52 BC and founded a town on the left bank. Over the following centuries the town
grew into one of the largest cities of the province. In the Middle Ages it became the seat of the kings, who built
a palace, a cathedral and a wall around the growing city. Its university, founded around 1150, drew students from
all over Europe. def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n
Prices rose by 3.75% in 2023, while 1,234,567 visitors came to the museum. Question: What is the capital of France?
Answer: The capital of France is Paris. Paris is known for the Eiffel Tower, completed in 1889 for the World's Fair.
日本の首都は東京です。 Emoji: 🎉🚀 and accents: café, naïve, Zürich. The quick brown fox jumps over the lazy dog; the lazy
dog sleeps. In mathematics, a prime number is a natural number greater than 1 that is not a product of two smaller natural
numbers. The first primes are 2, 3, 5, 7, 11, 13, 17, 19, 23 and 29. Every integer greater than one is either prime or a
product of primes, and this factorization is unique up to the order of the factors."""


def make_default(gguf_path):
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:300]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    top = np.argsort(-logits, axis=1)[:, :20]
    rows_at = [0, len(ids) // 2, len(ids) - 1]
    ref = {
        "source": f"transformers {transformers.__version__} AutoModelForCausalLM.from_pretrained(gguf_file={f}), float32",
        "tokens": ids,
        "top_ids": top.tolist(),
        "top_logits": np.take_along_axis(logits, top, axis=1).round(5).tolist(),
        "logsumexp": [float(torch.logsumexp(torch.tensor(r), 0)) for r in logits],
        # Every 61st vocabulary entry at a few positions: the whole range, not just the top.
        "strided_rows_at": rows_at,
        "stride": 61,
        "strided_rows": [logits[i][::61].round(4).tolist() for i in rows_at],
    }
    path = os.path.join(OUT, "smollm2_reference.json")
    json.dump(ref, open(path, "w"))
    print("default model:", len(ids), "positions ->", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    make_tiny()
    gguf = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        ROOT, "models", "cache", "SmolLM2-135M-Instruct.Q4_1.gguf")
    make_default(gguf)
