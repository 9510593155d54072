#!/usr/bin/env python3
"""Writes the reference files the checkpoint-reader tests compare against (tests/data/quant/).

Everything expected here is computed by code nobody on this project wrote:
  * gguf-py (the `gguf` package from llama.cpp, 0.19): GGUFWriter writes the .gguf files,
    gguf.quants quantizes Q4_0/Q4_1/Q8_0/BF16 and dequantizes every type, GGUFReader reads the
    default model;
  * numpy: float32 <-> float16 conversions;
  * the `safetensors` package (with torch for BF16) writes the valid .safetensors files.

Outputs (all small, committed):
  quant_golden.gguf       one tensor of each supported ggml type + metadata of every kv type
  quant_golden.f32        expected float32 values (little-endian), indexed by quant_golden.json
  quant_golden.json       tensor names/types/shapes, offsets into quant_golden.f32, conversion
                          cases for f32->f16 and f32->bf16
  safetensors/...         valid single / sharded / other-named safetensors checkpoints and
                          safetensors_golden.json with their expected values
  quant_kinds.gguf        random blocks of every quantized type HybridGen reads (Q4_0, Q4_1,
                          Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) with
                          f16 scales/mins and sub-block scales at their extremes
  quant_kinds.f32/.json   their gguf-py dequantization and the manifest (as quant_golden.*)
  smollm2_golden.json     metadata and dequantized rows of SmolLM2-135M-Instruct.Q4_1.gguf
                          (only when that model file is given or found)

Reruns reproduce every file byte for byte (fixed seeds), except that the safetensors package
may write the two "__metadata__" entries of single/model.safetensors in either order.

Usage: python3 tests/scripts/make_dequant_golden.py [--model PATH/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGUFWriter, GGMLQuantizationType as T, GGUFValueType as V
from gguf import quants

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "data", "quant"))
SEED = 20250601


def f16_bits(values):
    return np.array(values, dtype=np.uint16).view(np.float16)


def random_kquant_blocks(rng, n_blocks, type_size, scale_offsets):
    """Random k-quant blocks: random quant/scale bytes, f16 super-block scales set to finite
    values of moderate size (random bytes there could be inf/NaN)."""
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in scale_offsets:
        mag = rng.uniform(1e-3, 5e-2, size=n_blocks) * rng.choice([-1.0, 1.0], size=n_blocks)
        blocks[:, off:off + 2] = mag.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def make_quant_gguf(rng):
    # name -> (ggml type, row-major shape, array handed to GGUFWriter, raw_dtype, expected f32)
    cases = []

    a = rng.standard_normal((4, 64)).astype(np.float32)
    a[0, :4] = [0.0, -0.0, np.inf, 1e-40]  # 1e-40: a float32 subnormal
    cases.append(("t.f32", T.F32, a, None, a))

    h = rng.standard_normal((4, 64)).astype(np.float16)
    specials = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x0001, 0x8001, 0x03FF, 0x0400,
                0x7BFF, 0xFBFF, 0x3C00, 0x3555, 0x0200, 0x83FF]
    h[0, :len(specials)] = f16_bits(specials)
    cases.append(("t.f16", T.F16, h, None, quants.dequantize(h.view(np.uint8), T.F16)))

    b_src = rng.standard_normal((4, 64)).astype(np.float32)
    bb = quants.quantize(b_src, T.BF16)  # uint8 (4, 128): ggml's fp32 -> bf16 rounding
    bb_u16 = bb.view(np.uint16)
    bb_u16[0, :8] = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x807F, 0x3F80]
    cases.append(("t.bf16", T.BF16, bb, T.BF16, quants.dequantize(bb, T.BF16)))

    for name, qt, shape in (("t.q4_0", T.Q4_0, (3, 2, 64)),
                            ("t.q4_1", T.Q4_1, (4, 128)),
                            ("t.q8_0", T.Q8_0, (4, 128))):
        x = (rng.standard_normal(shape) * rng.uniform(0.01, 2.0)).astype(np.float32)
        x.reshape(-1)[:32] = 0.0  # one all-zero block (d = 0)
        q = quants.quantize(x, qt)
        cases.append((name, qt, q, qt, quants.dequantize(q, qt)))

    # gguf-py cannot quantize Q4_K/Q6_K (it only dequantizes them), and the default model has
    # no such tensors: use random blocks, dequantized by gguf-py.
    q4k = random_kquant_blocks(rng, 4, 144, (0, 2)).reshape(2, 2 * 144)
    cases.append(("t.q4_k", T.Q4_K, q4k, T.Q4_K, quants.dequantize(q4k, T.Q4_K)))
    q6k = random_kquant_blocks(rng, 4, 210, (208,)).reshape(2, 2 * 210)
    cases.append(("t.q6_k", T.Q6_K, q6k, T.Q6_K, quants.dequantize(q6k, T.Q6_K)))

    i32 = rng.integers(-2**31, 2**31, size=(16,), dtype=np.int64).astype(np.int32)
    cases.append(("t.i32", T.I32, i32, None, i32.astype(np.float32)))
    i64 = rng.integers(-2**40, 2**40, size=(2, 4), dtype=np.int64)
    cases.append(("t.i64", T.I64, i64, None, i64.astype(np.float32)))

    path = os.path.join(OUT, "quant_golden.gguf")
    w = GGUFWriter(path, arch="hgtest")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.15625)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 3.141592653589793)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "h\u00e9llo w\u00f6rld \u2713")
    w.add_array("test.arr_str", ["a", "bc", ""])
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_key_value("test.arr_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_u64", [7, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_array("test.arr_f32", [0.5, -1.25])
    w.add_array("test.nested", [[1, 2], [3, 4, 5]])
    for name, qt, arr, raw, _ in cases:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    manifest = {"file": "quant_golden.gguf", "values": "quant_golden.f32", "alignment": 64,
                "tensors": []}
    blob = []
    offset = 0
    for name, qt, arr, raw, expected in cases:
        expected = np.ascontiguousarray(expected, dtype=np.float32)
        if raw is not None and arr.dtype == np.uint8:
            shape = list(quants.quant_shape_from_byte_shape(arr.shape, raw))
        else:
            shape = list(arr.shape)
        assert int(np.prod(shape)) == expected.size, name
        manifest["tensors"].append({"name": name, "ggml_type": int(qt), "type": qt.name,
                                    "shape": shape, "offset": offset, "count": int(expected.size),
                                    "nbytes": int(arr.nbytes)})
        blob.append(expected.reshape(-1))
        offset += expected.size

    # f32 -> f16 (numpy, IEEE round-to-nearest-even) and f32 -> bf16 (gguf-py, = ggml's
    # ggml_compute_fp32_to_bf16) conversion cases.
    conv_src = np.concatenate([
        rng.standard_normal(200).astype(np.float32) * np.float32(3.0),
        np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 1e6, -1e6,
                  2.0**-14, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 3 * 2.0**-26, 1e-10,
                  6.1e-5, -5.96e-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-11 + 2.0**-20,
                  1e-40, 3.0e38, -3.0e38, 1.00390625, 1.01171875],
                 dtype=np.float32),
        (rng.uniform(-1, 1, 64) * 2.0**-16).astype(np.float32),  # f16 subnormal range
    ])
    with np.errstate(over="ignore"):  # values past 65504 become inf, as intended
        f16_conv = conv_src.astype(np.float16)
    manifest["f16_conversion"] = {
        "offset": offset, "count": int(conv_src.size),
        "bits": f16_conv.view(np.uint16).astype(int).tolist()}
    blob.append(conv_src)
    offset += conv_src.size
    manifest["bf16_conversion"] = {
        "offset": offset, "count": int(conv_src.size),
        "bits": quants.quantize(conv_src.reshape(1, -1), T.BF16).view(np.uint16).reshape(-1)
        .astype(int).tolist()}
    blob.append(conv_src)
    offset += conv_src.size

    np.concatenate(blob).astype("<f4").tofile(os.path.join(OUT, "quant_golden.f32"))
    with open(os.path.join(OUT, "quant_golden.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes")


# Per type: (ggml type, bytes per block, elements per block, offsets of f16 scale/min fields,
# byte range of packed sub-block scales or None).
KINDS = [
    (T.Q4_0, 18, 32, (0,), None),
    (T.Q4_1, 20, 32, (0, 2), None),
    (T.Q5_0, 22, 32, (0,), None),
    (T.Q5_1, 24, 32, (0, 2), None),
    (T.Q8_0, 34, 32, (0,), None),
    (T.Q2_K, 84, 256, (80, 82), (0, 16)),
    (T.Q3_K, 110, 256, (108,), (96, 108)),
    (T.Q4_K, 144, 256, (0, 2), (4, 16)),
    (T.Q5_K, 176, 256, (0, 2), (4, 16)),
    (T.Q6_K, 210, 256, (208,), (192, 208)),
    (T.IQ4_NL, 18, 32, (0,), None),
    (T.IQ4_XS, 136, 256, (0,), (2, 8)),
]


def extreme_blocks(rng, n_blocks, type_size, f16_offsets, scale_range):
    """Random blocks whose f16 fields cycle through the extremes: moderate random values, +-65504
    (the largest finite f16, mixed signs for scale and min), the smallest subnormal 2^-24, zero,
    random finite f16 bit patterns (normals and subnormals of any exponent); and sub-block
    scales all at their largest (0xFF bytes) or zero, and all-ones quants."""
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for b in range(n_blocks):
        kind = b % 8
        for k, off in enumerate(f16_offsets):
            if kind == 0 or kind == 5 or kind == 6:
                v = np.float16(rng.uniform(1e-3, 5e-2) * rng.choice([-1.0, 1.0]))
            elif kind == 1:
                v = np.float16(65504.0)
            elif kind == 2:
                v = np.float16(65504.0 if k == 0 else -65504.0)
            elif kind == 3:
                v = f16_bits([0x0001 if k == 0 else 0x8001])[0]
            elif kind == 4:
                v = np.float16(0.0)
            else:
                bits = int(rng.integers(0, 0x7C00)) | (int(rng.integers(0, 2)) << 15)
                v = f16_bits([bits])[0]
            blocks[b, off:off + 2] = np.array([v], dtype=np.float16).view(np.uint8)
        if scale_range is not None and kind in (5, 6):
            lo, hi = scale_range
            blocks[b, lo:hi] = 0xFF if kind == 5 else 0x00
        if kind == 6:  # quants all ones (largest index / level) beside zero sub-scales
            mask = np.ones(type_size, dtype=bool)
            for off in f16_offsets:
                mask[off:off + 2] = False
            if scale_range is not None:
                mask[scale_range[0]:scale_range[1]] = False
            blocks[b, mask] = 0xFF
    return blocks


def make_quant_kinds():
    # A stream of its own, so that quant_golden.* above stays byte for byte as it was.
    rng = np.random.default_rng(SEED + 16)
    path = os.path.join(OUT, "quant_kinds.gguf")
    w = GGUFWriter(path, arch="hgtest")
    manifest = {"file": "quant_kinds.gguf", "values": "quant_kinds.f32", "tensors": []}
    blob, offset = [], 0
    for qt, size, bs, f16_offsets, scale_range in KINDS:
        assert quants.GGML_QUANT_SIZES[qt] == (bs, size), qt
        rows, per_row = 4, (16 if bs == 32 else 4)  # 16 or 64 blocks: each extreme twice or more
        blocks = extreme_blocks(rng, rows * per_row, size, f16_offsets, scale_range)
        arr = blocks.reshape(rows, per_row * size)
        expected = quants.dequantize(arr, qt).astype(np.float32)
        name = "k." + qt.name.lower()
        w.add_tensor(name, arr, raw_dtype=qt)
        manifest["tensors"].append({"name": name, "ggml_type": int(qt), "type": qt.name,
                                    "shape": [rows, per_row * bs], "offset": offset,
                                    "count": int(expected.size), "nbytes": int(arr.nbytes)})
        blob.append(expected.reshape(-1))
        offset += expected.size
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.concatenate(blob).astype("<f4").tofile(os.path.join(OUT, "quant_kinds.f32"))
    with open(os.path.join(OUT, "quant_kinds.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes")


def make_safetensors():
    import torch
    from safetensors.torch import save_file

    base = os.path.join(OUT, "safetensors")
    g = torch.Generator().manual_seed(SEED)
    golden = {}

    def save(rel, tensors, metadata=None):
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(tensors, path, metadata=metadata)
        golden[rel] = {
            "metadata": metadata or {},
            "tensors": {n: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                            "values": t.to(torch.float64).reshape(-1).tolist()
                            if t.dtype in (torch.int32, torch.int64)
                            else t.float().reshape(-1).tolist()}
                        for n, t in tensors.items()}}

    save("single/model.safetensors", {
        "w.f32": torch.randn(2, 3, generator=g),
        "w.f16": torch.randn(4, generator=g).half(),
        "w.bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "w.i32": torch.tensor([1, -2, 2**31 - 1], dtype=torch.int32),
        "w.i64": torch.tensor([5, -(2**40)], dtype=torch.int64),
        "w.scalar": torch.tensor(1.5),
        "w.empty": torch.zeros(0, 5),
        "w.3d": torch.randn(2, 1, 3, generator=g),
    }, metadata={"format": "pt", "note": "hybridgen test"})

    shard1 = {"model.embed.weight": torch.randn(3, 4, generator=g),
              "model.norm.weight": torch.randn(4, generator=g).half()}
    shard2 = {"lm_head.weight": torch.randn(2, 4, generator=g).bfloat16()}
    save("sharded/model-00001-of-00002.safetensors", shard1, {"format": "pt"})
    save("sharded/model-00002-of-00002.safetensors", shard2, {"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {}}
    for n in shard1:
        index["weight_map"][n] = "model-00001-of-00002.safetensors"
    for n in shard2:
        index["weight_map"][n] = "model-00002-of-00002.safetensors"
    with open(os.path.join(base, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")

    save("othername/weights.safetensors", {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)})

    with open(os.path.join(base, "safetensors_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print("wrote", base)


def make_smollm2_golden(model_path):
    r = gguf.GGUFReader(model_path)
    fields = r.fields

    def scalar(key):
        return fields[key].contents()

    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = fields["tokenizer.ggml.merges"].contents()
    ttype = fields["tokenizer.ggml.token_type"].contents()
    out = {
        "file": os.path.basename(model_path),
        "version": scalar("GGUF.version"),
        "n_kv": scalar("GGUF.kv_count"),
        "n_tensors": len(r.tensors),
        "alignment": int(r.alignment),
        "strings": {k: scalar(k) for k in ("general.architecture", "general.name",
                                           "tokenizer.ggml.model", "tokenizer.ggml.pre",
                                           "tokenizer.chat_template")},
        "uints": {k: scalar(k) for k in ("llama.block_count", "llama.context_length",
                                         "llama.embedding_length", "llama.feed_forward_length",
                                         "llama.attention.head_count",
                                         "llama.attention.head_count_kv", "llama.vocab_size",
                                         "llama.rope.dimension_count", "general.file_type",
                                         "tokenizer.ggml.bos_token_id",
                                         "tokenizer.ggml.eos_token_id")},
        # float32 values widened to double (exact)
        "floats": {k: float(np.float32(scalar(k))) for k in
                   ("llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon")},
        "bools": {k: bool(scalar(k)) for k in ("tokenizer.ggml.add_bos_token",
                                               "tokenizer.ggml.add_space_prefix")},
        "tokens": {"count": len(tokens), "sample": {str(i): tokens[i] for i in
                                                    (0, 1, 2, 100, 1000, 49151)}},
        "merges": {"count": len(merges), "first": merges[:3], "last": merges[-1]},
        "token_type": {"count": len(ttype), "first": [int(v) for v in ttype[:8]]},
        "tensors": {},
        "rows": [],
    }
    by_name = {t.name: t for t in r.tensors}
    counts = {}
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    out["type_counts"] = counts
    out["total_nbytes"] = int(sum(int(t.n_bytes) for t in r.tensors))
    for t in r.tensors:
        if t.name.startswith("blk.0.") or t.name in ("token_embd.weight", "output_norm.weight",
                                                       "blk.29.ffn_down.weight"):
            out["tensors"][t.name] = {"type": t.tensor_type.name,
                                      "shape": [int(d) for d in reversed(list(t.shape))],
                                      "nbytes": int(t.n_bytes)}
    for name, rows in (("token_embd.weight", (0, 49151)),
                       ("blk.0.attn_q.weight", (7,)),
                       ("blk.29.ffn_down.weight", (575,)),
                       ("output_norm.weight", (0,))):
        t = by_name[name]
        deq = quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))
        for row in rows:
            vals = deq[row].astype(np.float32)
            # Shortest decimal that round-trips each float32 (parsed back as double, then
            # narrowed to float, it gives the same float32).
            out["rows"].append({"tensor": name, "row": row,
                                "values": [float(str(v)) for v in vals]})
    with open(os.path.join(OUT, "smollm2_golden.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote smollm2_golden.json from", model_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="SmolLM2-135M-Instruct.Q4_1.gguf for smollm2_golden.json")
    ap.add_argument("--only-kinds", action="store_true",
                    help="write only quant_kinds.* (needs just gguf and numpy, not torch)")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    make_quant_kinds()
    if args.only_kinds:
        return
    rng = np.random.default_rng(SEED)
    make_quant_gguf(rng)
    make_safetensors()
    model = args.model
    if model is None:
        for cand in (os.environ.get("HYBRIDGEN_DEFAULT_MODEL"),
                     os.path.join(HERE, "..", "..", "models", "cache",
                                  "SmolLM2-135M-Instruct.Q4_1.gguf")):
            if cand and os.path.exists(cand):
                model = cand
                break
    if model:
        make_smollm2_golden(model)
    else:
        print("default model not found: smollm2_golden.json left as it is", file=sys.stderr)


if __name__ == "__main__":
    main()
