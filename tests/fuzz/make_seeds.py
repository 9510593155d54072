#!/usr/bin/env python3
"""Writes the seed corpora of the fuzzers into tests/fuzz/corpus/<target>/.

Valid files (copied from tests/data or built here) plus handcrafted malformed ones, each named
for what it holds. Deterministic: running it again rewrites the same files. Needs only the
Python standard library and the repository's tests/data.

    python3 tests/fuzz/make_seeds.py
"""
import base64
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "tests", "data")
CORPUS = os.path.join(HERE, "corpus")


def out_dir(target):
    d = os.path.join(CORPUS, target)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def write(d, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(d, name, src):
    with open(os.path.join(DATA, src), "rb") as f:
        write(d, name, f.read())


# ---- safetensors -------------------------------------------------------------------------------

def st_file(header, data=b"", raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors():
    d = out_dir("safetensors")
    copy(d, "valid_single.safetensors", "quant/safetensors/single/model.safetensors")
    copy(d, "valid_othername.safetensors", "quant/safetensors/othername/weights.safetensors")
    copy(d, "valid_shard1.safetensors", "quant/safetensors/sharded/model-00001-of-00002.safetensors")
    copy(d, "valid_shard2.safetensors", "quant/safetensors/sharded/model-00002-of-00002.safetensors")
    copy(d, "valid_tiny_qwen2_shard.safetensors", "models/tiny-qwen2/model-00003-of-00011.safetensors")
    t = lambda dt, shape, a, b: {"dtype": dt, "shape": shape, "data_offsets": [a, b]}
    write(d, "valid_all_dtypes.safetensors", st_file({
        "__metadata__": {"format": "pt", "note": "x"},
        "f32": t("F32", [2, 2], 0, 16), "f16": t("F16", [3], 16, 22), "bf16": t("BF16", [1, 1], 22, 24),
        "i32": t("I32", [1], 24, 28), "i64": t("I64", [2], 28, 44), "empty": t("F32", [0, 5], 44, 44),
        "scalar": t("F32", [], 44, 48)}, bytes(range(48))))
    write(d, "valid_no_tensors.safetensors", st_file({}))
    write(d, "valid_metadata_null.safetensors", st_file({"__metadata__": None}))
    write(d, "bad_empty.safetensors", b"")
    write(d, "bad_short.safetensors", b"\x02\x00\x00")
    write(d, "bad_header_len_huge.safetensors", b"\xff" * 8 + b"{}")
    write(d, "bad_header_len_past_end.safetensors", struct.pack("<Q", 100) + b"{}")
    write(d, "bad_header_len_zero.safetensors", struct.pack("<Q", 0) + b"{}")
    write(d, "bad_header_not_json.safetensors", st_file(None, raw_header=b"{\"a\": [1, 2"))
    write(d, "bad_header_array.safetensors", st_file([1, 2, 3]))
    write(d, "bad_duplicate_tensor.safetensors", st_file(None, b"\0" * 8, raw_header=(
        b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')))
    write(d, "bad_duplicate_nested_key.safetensors", st_file(None, b"\0" * 4, raw_header=(
        b'{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}')))
    write(d, "bad_dtype.safetensors", st_file({"w": t("F8_E4M3", [4], 0, 4)}, b"\0" * 4))
    write(d, "bad_dtype_not_string.safetensors", st_file({"w": t(7, [4], 0, 4)}, b"\0" * 4))
    write(d, "bad_shape_negative.safetensors", st_file({"w": t("F32", [-1], 0, 4)}, b"\0" * 4))
    write(d, "bad_shape_float.safetensors", st_file({"w": t("F32", [1.5], 0, 4)}, b"\0" * 4))
    write(d, "bad_shape_overflow.safetensors", st_file({"w": t("F32", [2**32, 2**32, 2**32], 0, 4)}, b"\0" * 4))
    write(d, "bad_shape_bytes_overflow.safetensors", st_file({"w": t("I64", [2**62], 0, 4)}, b"\0" * 4))
    write(d, "bad_shape_9_dims.safetensors", st_file({"w": t("F32", [1] * 9, 0, 4)}, b"\0" * 4))
    write(d, "bad_shape_huge_dim.safetensors", st_file({"w": t("F32", [2**64 - 1], 0, 4)}, b"\0" * 4))
    write(d, "bad_offsets_reversed.safetensors", st_file({"w": t("F32", [1], 4, 0)}, b"\0" * 4))
    write(d, "bad_offsets_past_end.safetensors", st_file({"w": t("F32", [1], 0, 4)}, b"\0" * 2))
    write(d, "bad_offsets_huge.safetensors", st_file({"w": t("F32", [1], 2**64 - 4, 2**64 - 1)}, b"\0" * 4))
    write(d, "bad_offsets_one.safetensors", st_file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4))
    write(d, "bad_span_mismatch.safetensors", st_file({"w": t("F32", [2], 0, 4)}, b"\0" * 4))
    write(d, "bad_overlap.safetensors", st_file({"a": t("F32", [2], 0, 8), "b": t("F32", [1], 4, 8)}, b"\0" * 8))
    write(d, "bad_hole.safetensors", st_file({"a": t("F32", [1], 0, 4), "b": t("F32", [1], 8, 12)}, b"\0" * 12))
    write(d, "bad_trailing_bytes.safetensors", st_file({"a": t("F32", [1], 0, 4)}, b"\0" * 9))
    write(d, "bad_metadata_value.safetensors", st_file({"__metadata__": {"n": 3}}))
    write(d, "bad_metadata_array.safetensors", st_file({"__metadata__": ["x"]}))
    write(d, "bad_tensor_not_object.safetensors", st_file({"w": [1, 2]}))
    write(d, "bad_deep_nesting.safetensors", st_file(None, raw_header=b'{"w":' + b"[" * 300 + b"]" * 300 + b"}"))


def safetensors_index():
    # The harness's directory holds model-0000{1,2}-of-00002.safetensors (model.embed.weight,
    # model.norm.weight | lm_head.weight), dup.safetensors (model.norm.weight again),
    # bad.safetensors, empty.safetensors and a directory dir.safetensors.
    d = out_dir("safetensors_index")
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    valid = {"metadata": {"total_size": 36}, "weight_map": {
        "model.embed.weight": s1, "model.norm.weight": s1, "lm_head.weight": s2}}
    write(d, "valid.json", json.dumps(valid, indent=2))
    write(d, "valid_one_shard.json", json.dumps({"weight_map": {"lm_head.weight": s2}}))
    write(d, "valid_empty_map.json", json.dumps({"weight_map": {}}))
    copy(d, "valid_repo_sharded.json", "quant/safetensors/sharded/model.safetensors.index.json")
    wm = lambda m: json.dumps({"weight_map": m})
    write(d, "bad_duplicate_across_shards.json", wm({"model.norm.weight": s1, "x": "dup.safetensors"}))
    write(d, "bad_wrong_shard.json", wm({"lm_head.weight": s1}))
    write(d, "bad_malformed_shard.json", wm({"w": "bad.safetensors"}))
    write(d, "bad_empty_shard.json", wm({"w": "empty.safetensors"}))
    write(d, "bad_dir_shard.json", wm({"w": "dir.safetensors"}))
    write(d, "bad_missing_shard.json", wm({"w": "model-00003-of-00002.safetensors"}))
    write(d, "bad_traversal.json", wm({"w": "../" + s1}))
    write(d, "bad_absolute.json", wm({"w": "/etc/passwd"}))
    write(d, "bad_dot.json", wm({"w": "."}))
    write(d, "bad_nul.json", wm({"w": s1 + "\u0000x"}))
    write(d, "bad_index_itself.json", wm({"w": "model.safetensors.index.json"}))
    write(d, "bad_not_string.json", wm({"w": 1}))
    write(d, "bad_no_weight_map.json", json.dumps({"metadata": {}}))
    write(d, "bad_weight_map_array.json", json.dumps({"weight_map": [s1]}))
    write(d, "bad_duplicate_key.json", '{"weight_map": {"a": "%s", "a": "%s"}}' % (s1, s2))
    write(d, "bad_not_json.json", '{"weight_map": {')
    write(d, "bad_array.json", "[]")


# ---- GGUF ----------------------------------------------------------------------------------------

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)


def g_str(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def g_val(t, v):
    if t == T_STR:
        return g_str(v)
    if t == T_ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(g_val(et, x) for x in items)
    fmt = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i",
           T_F32: "<f", T_BOOL: "<B", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}[t]
    return struct.pack(fmt, v)


def gguf(kvs, tensors=(), data=b"", version=3, alignment=32, n_tensors=None, n_kv=None):
    """kvs: [(key, type, value)]; tensors: [(name, dims (ne order), ggml type, offset)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv)
    for k, t, v in kvs:
        out += g_str(k) + struct.pack("<I", t) + g_val(t, v)
    for name, dims, gt, off in tensors:
        out += g_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims)
        out += struct.pack("<IQ", gt, off)
    if tensors:
        out += b"\0" * ((alignment - len(out) % alignment) % alignment)
    return out + data


def byte_symbols():
    syms, n = [], 0
    for b in range(256):
        printable = 33 <= b <= 126 or 161 <= b <= 172 or b >= 174
        syms.append(chr(b) if printable else chr(256 + n))
        if not printable:
            n += 1
    return syms


def tiny_vocab():
    toks = byte_symbols() + ["he", "ll", "hell", "hello", "\u0120w", "\u0120wor", "<|im_start|>",
                             "<|im_end|>", "<|endoftext|>", "<user>"]
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 w", "\u0120w o"]
    # "\u0120wo" is not a token: that merge is made valid by adding it.
    toks.append("\u0120wo")
    merges.append("\u0120wo r")
    types = [1] * 262 + [3, 3, 3, 4] + [1]
    assert len(types) == len(toks)
    return toks, merges, types


def llama_kvs(arch="llama", extra=()):
    toks, merges, types = tiny_vocab()
    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}")
    return [
        ("general.architecture", T_STR, arch),
        ("general.alignment", T_U32, 32),
        (arch + ".block_count", T_U32, 1),
        (arch + ".embedding_length", T_U32, 8),
        (arch + ".feed_forward_length", T_U32, 16),
        (arch + ".attention.head_count", T_U32, 2),
        (arch + ".attention.head_count_kv", T_U32, 1),
        (arch + ".context_length", T_U32, 64),
        (arch + ".rope.freq_base", T_F32, 10000.0),
        (arch + ".attention.layer_norm_rms_epsilon", T_F32, 1e-5),
        ("tokenizer.ggml.model", T_STR, "gpt2"),
        ("tokenizer.ggml.pre", T_STR, "smollm" if arch == "llama" else "qwen2"),
        ("tokenizer.ggml.tokens", T_ARR, (T_STR, toks)),
        ("tokenizer.ggml.token_type", T_ARR, (T_I32, types)),
        ("tokenizer.ggml.merges", T_ARR, (T_STR, merges)),
        ("tokenizer.ggml.bos_token_id", T_U32, 264),
        ("tokenizer.ggml.eos_token_id", T_U32, 263),
        ("tokenizer.ggml.add_bos_token", T_BOOL, 0),
        ("tokenizer.chat_template", T_STR, chatml),
    ] + list(extra)


def gguf_targets():
    d = out_dir("gguf")
    copy(d, "valid_quant_golden.gguf", "quant/quant_golden.gguf")
    f32 = struct.pack("<8f", *range(8))
    q8 = struct.pack("<e", 0.5) + bytes(range(32))
    q40 = struct.pack("<e", 0.25) + bytes(range(16))
    tensors = [("token_embd.weight", [8], 0, 0), ("q8", [32], 8, 32), ("q4", [32], 2, 96)]
    data = f32 + q8 + b"\0" * (96 - 32 - len(q8)) + q40
    write(d, "valid_llama_tokenizer.gguf", gguf(llama_kvs(), tensors, data))
    write(d, "valid_qwen2_tokenizer.gguf", gguf(llama_kvs("qwen2"), tensors, data))
    write(d, "valid_llama3_pre.gguf", gguf([x if x[0] != "tokenizer.ggml.pre" else (x[0], T_STR, "llama-bpe")
                                            for x in llama_kvs()]))
    write(d, "valid_all_kv_types.gguf", gguf([
        ("u8", T_U8, 1), ("i8", T_I8, -1), ("u16", T_U16, 2), ("i16", T_I16, -2),
        ("u32", T_U32, 3), ("i32", T_I32, -3), ("f32", T_F32, 1.5), ("bool", T_BOOL, 1),
        ("str", T_STR, "s"), ("u64", T_U64, 2**63), ("i64", T_I64, -2**62), ("f64", T_F64, 2.5),
        ("arr_i32", T_ARR, (T_I32, [1, -2, 3])), ("arr_str", T_ARR, (T_STR, ["a", "b"])),
        ("nested", T_ARR, (T_ARR, [(T_U8, [1, 2]), (T_U8, [])])),
    ], version=2))
    write(d, "valid_no_tensors.gguf", gguf([("general.architecture", T_STR, "llama")]))
    write(d, "valid_v2_empty.gguf", gguf([], version=2))
    write(d, "bad_magic.gguf", b"GGML" + struct.pack("<IQQ", 3, 0, 0))
    write(d, "bad_short.gguf", b"GGU")
    write(d, "bad_version_1.gguf", gguf([], version=1))
    write(d, "bad_version_big_endian.gguf", gguf([], version=3 << 24))
    write(d, "bad_n_kv_huge.gguf", gguf([], n_kv=2**63))
    write(d, "bad_n_tensors_huge.gguf", gguf([], n_tensors=2**62))
    write(d, "bad_string_len_huge.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**64 - 1) + b"k")
    write(d, "bad_array_count_huge.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + g_str("a") +
          struct.pack("<IIQ", T_ARR, T_U64, 2**61) + b"\0" * 16)
    nested = (T_U8, [1])
    for _ in range(9):
        nested = (T_ARR, [nested])
    write(d, "bad_array_too_deep.gguf", gguf([("deep", T_ARR, nested)]))
    write(d, "bad_value_type.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + g_str("a") + struct.pack("<I", 13) + b"\0" * 8)
    write(d, "bad_array_elem_type.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + g_str("a") + struct.pack("<IIQ", T_ARR, 99, 1) + b"\0" * 8)
    write(d, "bad_empty_key.gguf", gguf([("", T_U8, 1)]))
    write(d, "bad_duplicate_key.gguf", gguf([("a", T_U8, 1), ("a", T_U8, 2)]))
    for al in (0, 3, 2**63 + 1):
        write(d, "bad_alignment_%d.gguf" % al, gguf([("general.alignment", T_U64, al)], [("t", [1], 0, 0)], f32[:4]))
    write(d, "bad_alignment_string.gguf", gguf([("general.alignment", T_STR, "32")]))
    write(d, "bad_alignment_negative.gguf", gguf([("general.alignment", T_I32, -32)]))
    write(d, "valid_alignment_huge.gguf", gguf([("general.alignment", T_U64, 2**40)], [("t", [0], 0, 0)]))
    write(d, "bad_tensor_5_dims.gguf", gguf([], [("t", [1, 1, 1, 1, 1], 0, 0)], f32[:4]))
    write(d, "bad_tensor_dim_negative.gguf", gguf([], [("t", [2**64 - 1], 0, 0)], f32[:4]))
    write(d, "bad_tensor_numel_overflow.gguf", gguf([], [("t", [2**32, 2**32, 2], 0, 0)], f32[:4]))
    write(d, "bad_tensor_bytes_overflow.gguf", gguf([], [("t", [2**62], 0, 0)], f32[:4]))
    write(d, "bad_tensor_type_unknown.gguf", gguf([], [("t", [1], 99, 0)], f32[:4]))
    write(d, "bad_tensor_type_q5_0.gguf", gguf([], [("t", [32], 6, 0)], b"\0" * 22))
    write(d, "bad_tensor_q4_0_row.gguf", gguf([], [("t", [31], 2, 0)], b"\0" * 18))
    write(d, "bad_tensor_misaligned.gguf", gguf([], [("t", [1], 0, 4)], f32))
    write(d, "bad_tensor_past_end.gguf", gguf([], [("t", [8], 0, 0)], f32[:16]))
    write(d, "bad_tensor_offset_huge.gguf", gguf([], [("t", [1], 0, 2**64 - 32)], f32[:4]))
    write(d, "bad_tensor_overlap.gguf", gguf([], [("a", [16], 0, 0), ("b", [8], 0, 32)], f32 * 2))
    write(d, "bad_tensor_duplicate.gguf", gguf([], [("a", [1], 0, 0), ("a", [1], 0, 32)], f32 * 2))
    write(d, "bad_truncated_tensor_info.gguf", gguf([], [("t", [1], 0, 0)])[:-12])
    kv = llama_kvs()
    write(d, "bad_tokenizer_model.gguf", gguf([x if x[0] != "tokenizer.ggml.model" else (x[0], T_STR, "llama") for x in kv]))
    write(d, "bad_tokenizer_pre.gguf", gguf([x if x[0] != "tokenizer.ggml.pre" else (x[0], T_STR, "unknown-pre") for x in kv]))
    write(d, "bad_tokenizer_bos_range.gguf", gguf([x if x[0] != "tokenizer.ggml.bos_token_id" else (x[0], T_U32, 100000) for x in kv]))
    write(d, "bad_tokenizer_merge.gguf", gguf([x if x[0] != "tokenizer.ggml.merges" else (x[0], T_ARR, (T_STR, ["x y", "nospace"])) for x in kv]))
    write(d, "bad_tokenizer_types_len.gguf", gguf([x if x[0] != "tokenizer.ggml.token_type" else (x[0], T_ARR, (T_I32, [1, 3])) for x in kv]))
    write(d, "bad_tokenizer_tokens_not_strings.gguf", gguf([x if x[0] != "tokenizer.ggml.tokens" else (x[0], T_ARR, (T_U32, [1, 2])) for x in kv]))
    write(d, "bad_tokenizer_token_utf8.gguf", gguf([x if x[0] != "tokenizer.ggml.tokens" else (x[0], T_ARR, (T_STR, [b"\xff\xfe", b"a"])) for x in kv]))
    write(d, "bad_config_heads.gguf", gguf([x if x[0] != "llama.attention.head_count_kv" else (x[0], T_U32, 3) for x in kv]))
    write(d, "bad_config_huge.gguf", gguf([x if x[0] != "llama.embedding_length" else (x[0], T_U64, 2**40) for x in kv]))
    write(d, "bad_config_arch.gguf", gguf([x if x[0] != "general.architecture" else (x[0], T_STR, "gpt2") for x in kv]))


# ---- tokenizer.json --------------------------------------------------------------------------------

def tiny_tokenizer(**over):
    syms = byte_symbols()
    vocab = {s: i for i, s in enumerate(syms)}
    for extra in ["he", "ll", "hell", "hello", "\u0120w", "\u0120wo", "\u0120wor"]:
        vocab[extra] = len(vocab)
    j = {
        "version": "1.0",
        "added_tokens": [
            {"id": 300, "content": "<|endoftext|>", "special": True, "normalized": False},
            {"id": 301, "content": "<|im_start|>", "special": True},
            {"id": 302, "content": "<|im_end|>", "special": True, "lstrip": True, "rstrip": True},
            {"id": 303, "content": "word", "special": False, "single_word": True},
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "post_processor": {"type": "ByteLevel"},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": ["h e", "l l", ["he", "ll"], "hell o", "\u0120 w", "\u0120w o", "\u0120wo r"]},
    }
    for k, v in over.items():
        if k.startswith("model_"):
            j["model"][k[6:]] = v
        else:
            j[k] = v
    return json.dumps(j, ensure_ascii=False)


def tokenizer_json():
    d = out_dir("tokenizer_json")
    copy(d, "valid_smollm2.json", "tokenizers/smollm2/tokenizer.json")
    for x in "abcd":
        copy(d, "valid_features_%s.json" % x, "tokenizers/features/features_%s.json" % x)
    write(d, "valid_tiny.json", tiny_tokenizer())
    write(d, "valid_tiny_nfc_digits.json", tiny_tokenizer(
        normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"}]},
        pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": True, "use_regex": False}]}))
    write(d, "valid_tiny_template.json", tiny_tokenizer(post_processor={
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [301]},
                           "<|im_end|>": {"id": "<|im_end|>", "ids": [302]}}}))
    write(d, "valid_tiny_roberta.json", tiny_tokenizer(post_processor={
        "type": "RobertaProcessing", "cls": ["<|im_start|>", 301], "sep": ["<|im_end|>", 302]}))
    write(d, "valid_tiny_unk.json", tiny_tokenizer(model_unk_token="he", model_fuse_unk=True, model_ignore_merges=True))
    write(d, "bad_not_json.json", '{"model": {')
    write(d, "bad_top_array.json", "[]")
    write(d, "bad_no_model.json", "{}")
    write(d, "bad_model_unigram.json", tiny_tokenizer(model_type="Unigram"))
    write(d, "bad_dropout.json", tiny_tokenizer(model_dropout=0.1))
    write(d, "bad_byte_fallback.json", tiny_tokenizer(model_byte_fallback=True))
    write(d, "bad_subword_prefix.json", tiny_tokenizer(model_continuing_subword_prefix="##"))
    write(d, "bad_vocab_array.json", tiny_tokenizer(model_vocab=["a"]))
    write(d, "bad_vocab_id_negative.json", tiny_tokenizer(model_vocab={"a": -1}))
    write(d, "bad_vocab_id_too_big.json", tiny_tokenizer(model_vocab={"a": 16777216}))
    write(d, "bad_vocab_id_float.json", tiny_tokenizer(model_vocab={"a": 1.5}))
    write(d, "bad_unk_missing.json", tiny_tokenizer(model_unk_token="<unk>"))
    write(d, "bad_merge_form.json", tiny_tokenizer(model_merges=["hello"]))
    write(d, "bad_merge_unknown.json", tiny_tokenizer(model_merges=["x yz"]))
    write(d, "bad_merge_result.json", tiny_tokenizer(model_merges=["e h"]))
    write(d, "bad_added_empty.json", tiny_tokenizer(added_tokens=[{"id": 5, "content": ""}]))
    write(d, "bad_added_no_id.json", tiny_tokenizer(added_tokens=[{"content": "x"}]))
    write(d, "bad_no_byte_level.json", tiny_tokenizer(pre_tokenizer={"type": "Digits"}))
    write(d, "bad_regex.json", tiny_tokenizer(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"}, {"type": "ByteLevel"}]}))
    write(d, "bad_behavior.json", tiny_tokenizer(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways"}, {"type": "ByteLevel"}]}))
    write(d, "bad_pre_unknown.json", tiny_tokenizer(pre_tokenizer={"type": "Whitespace"}))
    write(d, "bad_normalizer.json", tiny_tokenizer(normalizer={"type": "Lowercase"}))
    write(d, "bad_template_missing_special.json", tiny_tokenizer(post_processor={
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
        "special_tokens": {}}))
    write(d, "bad_template_id_no_token.json", tiny_tokenizer(post_processor={
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
        "special_tokens": {"<s>": {"ids": [299]}}}))
    write(d, "bad_decoder.json", tiny_tokenizer(decoder={"type": "WordPiece"}))
    write(d, "bad_nested_sequence.json", tiny_tokenizer(normalizer=json.loads(
        '{"type":"Sequence","normalizers":[' * 50 + '{"type":"NFC"}' + ']}' * 50)))


def tokenizer_encode():
    d = out_dir("tokenizer_encode")
    with open(os.path.join(DATA, "tokenizers", "corpus.json")) as f:
        corpus = json.load(f)
    for i, c in enumerate(corpus):
        text = base64.b64decode(c["b64"]) if "b64" in c else c["text"].encode("utf-8")
        # Cycle through the 7 tokenizers and the flag combinations.
        sel = (i % 7) | (((i // 7) % 8) << 3)
        write(d, "text_%02d" % i, bytes([sel]) + text)
    write(d, "special_parse", bytes([0x18 | 1]) + b"<|begin_of_text|>hi<|eot_id|>")
    write(d, "special_chatml", bytes([0x10]) + b"<|im_start|>user\nhello<|im_end|>")
    write(d, "nfc_decomposed", bytes([2]) + "e\u0301 \u1100\u1161\u11a8 A\u030a".encode())
    write(d, "invalid_utf8", bytes([0]) + b"\xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x90\x28\xbc \xf8\xa1\xa1\xa1\xa1 \xed\xa0\x80")
    write(d, "long_spaces", bytes([1]) + b" " * 2000 + b"x")
    write(d, "long_digits", bytes([0]) + b"1234567890" * 100)


# ---- config.json ---------------------------------------------------------------------------------

def model_config():
    d = out_dir("model_config")
    for m in ("tiny-llama", "tiny-mistral", "tiny-opt", "tiny-qwen2"):
        copy(d, "valid_%s.json" % m, "models/%s/config.json" % m)
    base = {"model_type": "llama", "vocab_size": 320, "num_hidden_layers": 2, "hidden_size": 64,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": [2, 3]}
    def cfg(name, **over):
        c = dict(base)
        for k, v in over.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        write(d, name, json.dumps(c))
    cfg("valid_llama3_rope.json", rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg("valid_rope_parameters.json", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    cfg("valid_head_dim.json", head_dim=32)
    cfg("valid_qwen2.json", model_type="qwen2", use_sliding_window=False)
    cfg("valid_mistral_window.json", model_type="mistral", sliding_window=4096)
    cfg("bad_unknown_type.json", model_type="gpt_neox")
    cfg("bad_no_type.json", model_type=None)
    cfg("bad_missing_vocab.json", vocab_size=None)
    cfg("bad_negative.json", num_hidden_layers=-1)
    cfg("bad_zero_heads.json", num_attention_heads=0)
    cfg("bad_float_dim.json", hidden_size=64.5)
    cfg("bad_string_dim.json", hidden_size="64")
    cfg("bad_huge_dim.json", hidden_size=2**31)
    cfg("bad_implausible.json", hidden_size=2**20, num_attention_heads=4)
    cfg("bad_heads_kv.json", num_key_value_heads=3)
    cfg("bad_head_dim_odd.json", head_dim=33)
    cfg("bad_eps.json", rms_norm_eps=2.0)
    cfg("bad_eps_string.json", rms_norm_eps="small")
    cfg("bad_theta.json", rope_theta=-1.0)
    cfg("bad_theta_huge.json", rope_theta=1e300)
    cfg("bad_rope_yarn.json", rope_scaling={"type": "yarn", "factor": 4.0})
    cfg("bad_rope_factor.json", rope_scaling={"rope_type": "llama3", "factor": 0})
    cfg("bad_rope_freqs.json", rope_scaling={"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1})
    cfg("bad_rope_not_object.json", rope_scaling="llama3")
    cfg("bad_mlp_bias.json", mlp_bias=True)
    cfg("bad_act.json", hidden_act="gelu")
    cfg("bad_tie_string.json", tie_word_embeddings="yes")
    cfg("bad_qwen2_window.json", model_type="qwen2", use_sliding_window=True)
    opt = {"model_type": "opt", "vocab_size": 320, "num_hidden_layers": 2, "hidden_size": 64,
           "num_attention_heads": 4, "ffn_dim": 128, "max_position_embeddings": 256,
           "activation_function": "relu", "do_layer_norm_before": True, "word_embed_proj_dim": 64}
    write(d, "bad_opt_350m.json", json.dumps(dict(opt, do_layer_norm_before=False, word_embed_proj_dim=32)))
    write(d, "bad_opt_gelu.json", json.dumps(dict(opt, activation_function="gelu")))
    write(d, "valid_opt_big_positions.json", json.dumps(dict(opt, max_position_embeddings=2**31 - 100)))
    write(d, "bad_not_json.json", '{"model_type": "llama",')
    write(d, "bad_array.json", '["llama"]')
    write(d, "bad_empty.json", "")


# ---- chat templates ------------------------------------------------------------------------------

def chat_input(flags, template, messages):
    out = bytes([flags]) + template.encode("utf-8")
    for role, content in messages:
        out += b"\0" + role.encode("utf-8") + b"\0" + (content if isinstance(content, bytes) else content.encode("utf-8"))
    return out


def chat_template():
    d = out_dir("chat_template")
    with open(os.path.join(DATA, "tokenizers", "chat_golden.json")) as f:
        golden = json.load(f)
    templates = golden["templates"]
    convs = {}
    for c in golden["cases"]:
        convs.setdefault(c["conversation"], [(m["role"], m["content"]) for m in c["messages"]])
    for ti, (tname, tmpl) in enumerate(sorted(templates.items())):
        for ci, (cname, msgs) in enumerate(sorted(convs.items())):
            if (ti + ci) % 3:  # a third of the pairs keep the corpus small
                continue
            flags = 1 | ((ti + ci) % 4) << 1 | (ci % 2) << 3 | ((ti % 3) << 4) | (ti % 2) << 6
            write(d, "%s_%s" % (tname.replace(".", "_"), cname), chat_input(flags, tmpl, msgs))
    write(d, "chatml_minimal", chat_input(1, "<|im_start|>", [("user", "hi")]))
    write(d, "llama3_minimal", chat_input(0, "<|start_header_id|>", [("system", "  s  "), ("user", "u")]))
    write(d, "llama31_date", chat_input(1, "<|start_header_id|> Cutting Knowledge Date "
                                           "{%- set date_string = '1 Jan 2000' %}{{ 'Cutting Knowledge Date: X\\n' }}",
                                        [("ipython", "{\"a\": 1}\n"), ("user", "q")]))
    write(d, "llama31_clock", chat_input(1, "<|start_header_id|>Cutting Knowledge Date strftime_now", [("user", "q")]))
    write(d, "qwen3_think", chat_input(1, "<|im_start|><tool_response></think>last_query_index",
                                       [("user", "q"), ("assistant", "<think>\nr\n</think>\n\na"),
                                        ("tool", "x"), ("tool", "y"), ("assistant", "</think>only")]))
    write(d, "escapes", chat_input(1, "{{ '<|im_start|>system\\nA\\u00e9\\x41\\U0001F600\\t\\q\\uD800<|im_end|>' }}"
                                      "{# comment {{ '<|im_start|>' }} #}{% 'unterminated", [("user", "x")]))
    write(d, "unterminated_tag", chat_input(0, "<|im_start|>{{ \"<|im_start|>system\\nX<|im_end|>", []))
    write(d, "unknown_family", chat_input(1, "{{ messages }}", [("user", "x")]))
    write(d, "empty_template", chat_input(1, "", [("user", "x")]))
    write(d, "no_messages", chat_input(1, "<|start_header_id|>", []))
    write(d, "invalid_utf8_content", chat_input(1, "<|start_header_id|>", [("user", b"  abc\xf0\x9f ")]))


if __name__ == "__main__":
    safetensors()
    safetensors_index()
    gguf_targets()
    tokenizer_json()
    tokenizer_encode()
    model_config()
    chat_template()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print("%-18s %3d files %7d bytes" % (t, len(files), size))
