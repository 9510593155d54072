#!/usr/bin/env python3
"""hybridgen-server against the real `openai` client (PyPI) and raw HTTP, on the default model.

Started by ctest (tests/CMakeLists.txt, test `server_openai`): it starts the servers itself on
127.0.0.1 with free ports (--port 0), and checks
  - completions and chat, streamed and not: greedy text equals hybridgen-run's for the prompt
  - stop strings across token boundaries, usage, finish_reason
  - 16 concurrent clients (different prompts and lengths, half streaming): each answer equals
    its single-request answer, streams concatenate to exactly the non-streamed text
  - malformed and hostile requests: the right status and a JSON error naming the field, and
    the server keeps serving
  - --api-key: 401 without or with a wrong key on every endpoint but /health
  - a client disconnecting mid-stream frees its sequence (/metrics), a full queue gives 429
  - SIGTERM drains the running request and exits 0

Exit status 77 (ctest SKIP_RETURN_CODE) with a message when the default model or the openai
package is missing; tests/server/install-test-deps.sh installs the package.
"""
import os as _os
import sys as _sys

# The openai client installed by install-test-deps.sh (pip --target), ahead of anything else.
_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), ".pydeps"))

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

SKIP = 77


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True, help="hybridgen-server binary")
    ap.add_argument("--run", required=True, help="hybridgen-run binary")
    ap.add_argument("--model", required=True, help="the default model (.gguf)")
    ap.add_argument("--threads", default="2")
    return ap.parse_args()


class Server:
    """A hybridgen-server child process on a free port of 127.0.0.1."""

    def __init__(self, binary, model, *flags, threads="2"):
        self.cmd = [binary, "-m", model, "--port", "0", "-t", threads, *flags]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr_lines = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self.proc.stdout.readline()  # "hybridgen-server: listening on http://H:P ..."
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {''.join(self.stderr_lines)}")
        self.host, self.port = m.group(1), int(m.group(2))
        self.base = f"http://{self.host}:{self.port}"

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers, body bytes) of one request on a fresh connection."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            hdrs = {"Content-Type": "application/json"} if body is not None else {}
            hdrs.update(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def metrics(self, headers=None):
        status, _, body = self.request("GET", "/metrics", headers=headers)
        assert status == 200, status
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def run_reference(args, prompt, n, chat=False):
    """hybridgen-run's greedy text for the prompt (stdout minus the newline it ends with)."""
    cmd = [args.run, "-m", args.model, "-p", prompt, "-n", str(n), "--temp", "0",
           "-t", args.threads]
    if chat:
        cmd.append("--chat")
    out = subprocess.run(cmd, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert text.endswith("\n")
    return text[:-1]


def json_error(status_body, expect_status, expect_param=None, got_status=None):
    """Checks an OpenAI-style error body; returns the message."""
    body = json.loads(status_body)
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], body
    if expect_param is not None:
        assert err["param"] == expect_param, f"param {err['param']!r} != {expect_param!r}: {body}"
    return err["message"]


# ---------------------------------------------------------------------------------------------
def main():
    args = parse_args()
    args.model = os.environ.get("HYBRIDGEN_DEFAULT_MODEL", args.model)
    if not os.path.exists(args.model):
        print(f"SKIP: the default model {args.model} is not downloaded "
              "(run models/fetch-default-model.sh)")
        return SKIP
    try:
        import openai  # noqa: F401
    except ImportError:
        print("SKIP: the `openai` Python package is not installed "
              "(run tests/server/install-test-deps.sh)")
        return SKIP
    import openai

    results = []

    def test(fn):
        t0 = time.time()
        try:
            fn()
            results.append((fn.__name__, True))
            print(f"PASS {fn.__name__} ({time.time() - t0:.1f} s)", flush=True)
        except Exception:
            results.append((fn.__name__, False))
            print(f"FAIL {fn.__name__} ({time.time() - t0:.1f} s)", flush=True)
            traceback.print_exc()

    t_start = time.time()
    srv = Server(args.server, args.model, "--parallel", "16", "--queue", "32", "-c", "1024",
                 "--max-tokens", "512", "--grace-seconds", "300", threads=args.threads)
    model_id = "SmolLM2-135M-Instruct.Q4_1"
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0,
                           timeout=300)

    prompt = "The capital of France is"
    chat_prompt = "Write a short sentence about the sea."
    ref = {}

    def completion_matches_run():
        ref["completion"] = run_reference(args, prompt, 24)
        r = client.completions.create(model=model_id, prompt=prompt, max_tokens=24, temperature=0)
        assert r.choices[0].text == ref["completion"], (r.choices[0].text, ref["completion"])
        assert r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.choices[0].finish_reason in ("stop", "length")
        if r.usage.completion_tokens == 24:
            assert r.choices[0].finish_reason == "length"
        assert r.model == model_id

    def completion_stream_matches_run():
        chunks = list(client.completions.create(model=model_id, prompt=prompt, max_tokens=24,
                                                temperature=0, stream=True))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == ref["completion"], (text, ref["completion"])
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

    def chat_matches_run():
        ref["chat"] = run_reference(args, chat_prompt, 40, chat=True)
        r = client.chat.completions.create(model=model_id, max_tokens=40, temperature=0,
                                           messages=[{"role": "user", "content": chat_prompt}])
        assert r.choices[0].message.content == ref["chat"], (r.choices[0].message.content,
                                                              ref["chat"])
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens >= 1

    def chat_stream_matches_run():
        chunks = list(client.chat.completions.create(
            model=model_id, max_tokens=40, temperature=0, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": chat_prompt}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == ref["chat"], (text, ref["chat"])
        assert chunks[0].choices[0].delta.role == "assistant"
        finals = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finals[-1] in ("stop", "length") and all(f is None for f in finals[:-1])
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1

    def raw_stream_ends_with_done():
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=120)
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": True}),
            {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
        conn.close()
        assert all(e.startswith("data: ") for e in events), events
        assert events[-1] == "data: [DONE]", events[-1]

    def stop_strings_across_tokens():
        full = ref["completion"]
        # A stop string that starts inside one token and ends inside a later one.
        cut = full.find(" ", 3)
        assert cut > 0, full
        stop = full[cut - 2:cut + 3]
        expect = full[:full.find(stop)]
        r = client.completions.create(model=model_id, prompt=prompt, max_tokens=24,
                                      temperature=0, stop=[stop, "zzzz-never"])
        assert r.choices[0].text == expect, (r.choices[0].text, expect, stop)
        assert r.choices[0].finish_reason == "stop"
        chunks = list(client.completions.create(model=model_id, prompt=prompt, max_tokens=24,
                                                temperature=0, stop=stop, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == expect
        assert chunks[-1].choices[0].finish_reason == "stop"

    def sampling_with_seed_is_reproducible():
        kw = dict(model=model_id, prompt=prompt, max_tokens=16, temperature=0.9, top_p=0.95,
                  seed=1234, extra_body={"top_k": 40, "min_p": 0.05})
        a = client.completions.create(**kw).choices[0].text
        b = client.completions.create(**kw).choices[0].text
        assert a == b, (a, b)

    def models_and_health():
        m = client.models.list()
        assert [x.id for x in m.data] == [model_id]
        status, _, body = srv.request("GET", "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"

    def concurrent_16_clients_equal_single():
        cases = [(f"Question {i}: name a colour and a number bigger than {i * 7}.", 6 + 3 * i)
                 for i in range(16)]
        single = [client.completions.create(model=model_id, prompt=p, max_tokens=n,
                                            temperature=0) for p, n in cases]

        def one(i):
            p, n = cases[i]
            if i % 2 == 0:  # streaming: every token exactly once, in order
                chunks = list(client.completions.create(model=model_id, prompt=p, max_tokens=n,
                                                        temperature=0, stream=True,
                                                        stream_options={"include_usage": True}))
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                return text, chunks[-1].usage.completion_tokens
            r = client.completions.create(model=model_id, prompt=p, max_tokens=n, temperature=0)
            return r.choices[0].text, r.usage.completion_tokens

        t0 = time.time()
        barrier = threading.Barrier(16)

        def start(i):
            barrier.wait()
            return one(i)

        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            got = list(ex.map(start, range(16), timeout=600))
        elapsed = time.time() - t0
        for i, (text, n_tok) in enumerate(got):
            assert text == single[i].choices[0].text, (i, text, single[i].choices[0].text)
            assert n_tok == single[i].usage.completion_tokens, (i, n_tok)
        m = srv.metrics()
        assert m["hybridgen_active_sequences"] == 0
        print(f"  16 concurrent clients: {elapsed:.1f} s", flush=True)

    def malformed_and_hostile_requests():
        big = "x" * (10 * 1024 * 1024)
        long_prompt = "hello " * 3000
        cases = [
            # (name, method, path, body, headers, status, param)
            ("truncated JSON", "POST", "/v1/completions", '{"prompt": "hi", "max_tokens": ', None,
             400, "body"),
            ("not JSON", "POST", "/v1/completions", "hello there", None, 400, "body"),
            ("empty body", "POST", "/v1/completions", "", None, 400, "body"),
            ("JSON array body", "POST", "/v1/completions", "[1, 2]", None, 400, "body"),
            ("negative max_tokens", "POST", "/v1/completions", {"prompt": "a", "max_tokens": -5},
             None, 400, "max_tokens"),
            ("zero max_tokens", "POST", "/v1/completions", {"prompt": "a", "max_tokens": 0}, None,
             400, "max_tokens"),
            ("huge max_tokens", "POST", "/v1/completions",
             '{"prompt": "a", "max_tokens": 99999999999999999999999999}', None, 400, "max_tokens"),
            ("max_tokens over the limit", "POST", "/v1/completions",
             {"prompt": "a", "max_tokens": 100000}, None, 400, "max_tokens"),
            ("overflowing number", "POST", "/v1/completions", '{"prompt": "a", "max_tokens": 1e999}',
             None, 400, None),
            ("max_tokens as string", "POST", "/v1/completions", {"prompt": "a", "max_tokens": "9"},
             None, 400, "max_tokens"),
            ("temperature out of range", "POST", "/v1/completions",
             {"prompt": "a", "temperature": 7}, None, 400, "temperature"),
            ("temperature as string", "POST", "/v1/completions",
             {"prompt": "a", "temperature": "hot"}, None, 400, "temperature"),
            ("top_p zero", "POST", "/v1/completions", {"prompt": "a", "top_p": 0}, None, 400,
             "top_p"),
            ("seed not an integer", "POST", "/v1/completions", {"prompt": "a", "seed": 1.5}, None,
             400, "seed"),
            ("stream not a boolean", "POST", "/v1/completions", {"prompt": "a", "stream": "yes"},
             None, 400, "stream"),
            ("missing prompt", "POST", "/v1/completions", {"max_tokens": 3}, None, 400, "prompt"),
            ("prompt of wrong type", "POST", "/v1/completions", {"prompt": 42}, None, 400,
             "prompt"),
            ("token id outside the vocabulary", "POST", "/v1/completions",
             {"prompt": [1, 2, 99999999]}, None, 400, "prompt[2]"),
            ("prompt longer than the context", "POST", "/v1/completions", {"prompt": long_prompt},
             None, 400, "prompt"),
            ("unknown model", "POST", "/v1/completions", {"prompt": "a", "model": "gpt-17"}, None,
             400, "model"),
            ("n = 2", "POST", "/v1/completions", {"prompt": "a", "n": 2}, None, 400, "n"),
            ("too many stop strings", "POST", "/v1/completions",
             {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, None, 400, "stop"),
            ("stop of wrong type", "POST", "/v1/completions", {"prompt": "a", "stop": [1]}, None,
             400, "stop[0]"),
            ("chat without messages", "POST", "/v1/chat/completions", {"max_tokens": 3}, None, 400,
             "messages"),
            ("chat with empty messages", "POST", "/v1/chat/completions", {"messages": []}, None,
             400, "messages"),
            ("chat with an unknown role", "POST", "/v1/chat/completions",
             {"messages": [{"role": "wizard", "content": "hi"}]}, None, 400, "messages[0].role"),
            ("chat content of wrong type", "POST", "/v1/chat/completions",
             {"messages": [{"role": "user", "content": 5}]}, None, 400, "messages[0].content"),
            ("invalid UTF-8", "POST", "/v1/completions", b'{"prompt": "\xff\xfe bad"}', None, 400,
             "body"),
            ("wrong content type", "POST", "/v1/completions", '{"prompt": "a"}',
             {"Content-Type": "text/plain"}, 415, "Content-Type"),
            ("10 MB body", "POST", "/v1/completions", '{"prompt": "' + big + '"}', None, 413,
             "body"),
            ("unknown endpoint", "GET", "/v1/nope", None, None, 404, None),
            ("unknown endpoint (POST)", "POST", "/admin", {"x": 1}, None, 404, None),
            ("GET on a POST endpoint", "GET", "/v1/completions", None, None, 405, None),
        ]
        assert len(cases) >= 20
        for name, method, path, body, headers, status, param in cases:
            got, _, resp = srv.request(method, path, body, headers)
            assert got == status, f"{name}: status {got}, expected {status}: {resp[:300]!r}"
            try:
                msg = json_error(resp, status, param)
            except Exception as e:
                raise AssertionError(f"{name}: {e}: {resp[:300]!r}")
            hs, _, _ = srv.request("GET", "/health")
            assert hs == 200, f"{name}: the server stopped serving"
        # A request line that is not HTTP at all: an answer, not a dropped connection.
        with socket.create_connection((srv.host, srv.port), timeout=30) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        # Unknown fields are ignored, as the OpenAI API does; the server still answers.
        r = client.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0,
                                      extra_body={"no_such_field": {"x": [1]}})
        assert r.choices[0].text == client.completions.create(
            model=model_id, prompt=prompt, max_tokens=4, temperature=0).choices[0].text
        print(f"  {len(cases) + 1} malformed/hostile requests answered", flush=True)

    def disconnect_frees_sequence():
        before = srv.metrics()
        s = socket.create_connection((srv.host, srv.port), timeout=60)
        body = json.dumps({"prompt": "Tell me a very long story about a dragon.",
                           "max_tokens": 500, "temperature": 0, "stream": True, "ignore_eos": True,
                           "extra": "ignored"}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            assert chunk, "stream ended early"
            got += chunk
        during = srv.metrics()
        assert during["hybridgen_active_sequences"] == 1, during["hybridgen_active_sequences"]
        s.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            m = srv.metrics()
            if m["hybridgen_active_sequences"] == 0:
                break
            time.sleep(0.1)
        assert m["hybridgen_active_sequences"] == 0, "the sequence was not freed"
        key = 'hybridgen_requests_finished_total{reason="cancelled"}'
        assert m[key] == before[key] + 1, (m[key], before[key])
        assert m['hybridgen_kv_bytes{tier="device"}'] == 0
        # Far fewer than 500 tokens were generated for it.
        gen = m["hybridgen_generated_tokens_total"] - before["hybridgen_generated_tokens_total"]
        assert gen < 400, gen

    def metrics_are_prometheus_text():
        status, headers, body = srv.request("GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        text = body.decode()
        for name in ["hybridgen_requests_finished_total", "hybridgen_queue_depth",
                     "hybridgen_active_sequences", "hybridgen_kv_bytes",
                     "hybridgen_prefill_tokens_per_second", "hybridgen_decode_tokens_per_second",
                     "hybridgen_cpu_stage_overlap", "hybridgen_scheduler_mean_k",
                     "hybridgen_http_responses_total"]:
            assert f"# TYPE {name} " in text, name
        m = srv.metrics()
        assert m["hybridgen_decode_tokens_per_second"] > 0
        assert m['hybridgen_http_responses_total{code="400"}'] >= 20

    def sigterm_drains_and_exits_0():
        # A running stream finishes (drained: the grace period, 300 s, is far longer than 16
        # tokens take even under the sanitizers), then the process exits 0.
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=120)
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": True,
             "ignore_eos": True, "stream_options": {"include_usage": True}}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        first = r.readline()
        assert first.startswith(b"data: "), first
        srv.proc.send_signal(signal.SIGTERM)
        rest = r.read().decode()
        conn.close()
        assert rest.rstrip().endswith("data: [DONE]"), rest[-200:]
        assert '"finish_reason":"length"' in rest or '"finish_reason":"stop"' in rest, rest[-400:]
        rc = srv.proc.wait(300)
        assert rc == 0, f"exit status {rc}: {''.join(srv.stderr_lines)[-2000:]}"

    for fn in [completion_matches_run, completion_stream_matches_run, chat_matches_run,
               chat_stream_matches_run, raw_stream_ends_with_done, stop_strings_across_tokens,
               sampling_with_seed_is_reproducible, models_and_health,
               concurrent_16_clients_equal_single, malformed_and_hostile_requests,
               disconnect_frees_sequence, metrics_are_prometheus_text, sigterm_drains_and_exits_0]:
        test(fn)
    srv.stop(signal.SIGKILL) if srv.proc.poll() is None else None

    # ---- a second server: one slot, a queue of one, an API key ----
    key = "sk-test-0123456789"
    srv2 = Server(args.server, args.model, "--parallel", "1", "--queue", "1", "-c", "1024",
                  "--api-key", key, "--grace-seconds", "1", threads=args.threads)
    auth = {"Authorization": "Bearer " + key}

    def api_key_required():
        for method, path, body in [("GET", "/v1/models", None), ("GET", "/metrics", None),
                                   ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 1}),
                                   ("POST", "/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": "a"}]}),
                                   ("GET", "/v1/nope", None)]:
            for hdrs in [{}, {"Authorization": "Bearer wrong"},
                         {"Authorization": "Bearer " + key + "x"},
                         {"Authorization": key}, {"Authorization": "Bearer "}]:
                status, _, resp = srv2.request(method, path, body, hdrs)
                assert status == 401, (method, path, hdrs, status, resp[:200])
                json_error(resp, 401)
        status, _, _ = srv2.request("GET", "/health")
        assert status == 200
        good = openai.OpenAI(base_url=srv2.base + "/v1", api_key=key, max_retries=0, timeout=120)
        r = good.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0)
        assert r.choices[0].text
        bad = openai.OpenAI(base_url=srv2.base + "/v1", api_key="nope", max_retries=0, timeout=60)
        try:
            bad.models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError:
            pass

    def queue_overflow_gives_429():
        # Slot: a long stream; queue: a second request; the third gets 429.
        def open_stream():
            s = socket.create_connection((srv2.host, srv2.port), timeout=60)
            body = json.dumps({"prompt": "Count to one thousand:", "max_tokens": 400,
                               "temperature": 0, "stream": True, "ignore_eos": True}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nAuthorization: Bearer " + key.encode() +
                      b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            return s

        first = open_stream()
        got = b""
        while b"data: " not in got:  # running
            chunk = first.recv(4096)
            assert chunk, "stream ended early"
            got += chunk
        second = open_stream()  # waits in the queue
        deadline = time.time() + 30
        while srv2.metrics(auth)["hybridgen_queue_depth"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert srv2.metrics(auth)["hybridgen_queue_depth"] == 1
        status, _, resp = srv2.request("POST", "/v1/completions",
                                       {"prompt": "a", "max_tokens": 2}, auth)
        assert status == 429, (status, resp)
        assert json.loads(resp)["error"]["type"] == "rate_limit_error"
        assert srv2.metrics(auth)["hybridgen_requests_rejected_queue_full_total"] == 1
        first.close()
        second.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            m = srv2.metrics(auth)
            if m["hybridgen_active_sequences"] == 0 and m["hybridgen_queue_depth"] == 0:
                break
            time.sleep(0.1)
        assert m["hybridgen_active_sequences"] == 0 and m["hybridgen_queue_depth"] == 0, m
        # And it serves again.
        status, _, resp = srv2.request("POST", "/v1/completions",
                                       {"prompt": "a", "max_tokens": 2}, auth)
        assert status == 200, (status, resp)

    def sigterm_cancels_after_grace_and_exits_0():
        # --grace-seconds 1: a 400-token stream is cancelled, the client gets an error event
        # and [DONE], and the server still exits 0.
        conn = http.client.HTTPConnection(srv2.host, srv2.port, timeout=120)
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": "Count to one thousand:", "max_tokens": 400, "temperature": 0,
             "stream": True, "ignore_eos": True}), {"Content-Type": "application/json", **auth})
        r = conn.getresponse()
        assert r.readline().startswith(b"data: ")
        t0 = time.time()
        srv2.proc.send_signal(signal.SIGTERM)
        rest = r.read().decode()
        conn.close()
        assert rest.rstrip().endswith("data: [DONE]"), rest[-300:]
        assert "cancelled" in rest, rest[-300:]
        rc = srv2.proc.wait(60)
        assert rc == 0, f"exit status {rc}: {''.join(srv2.stderr_lines)[-3000:]}"
        assert time.time() - t0 < 30

    for fn in [api_key_required, queue_overflow_gives_429, sigterm_cancels_after_grace_and_exits_0]:
        test(fn)
    srv2.stop(signal.SIGKILL) if srv2.proc.poll() is None else None

    # ---- a third server: the hybrid attention runtime (device window + host stores) ----
    srv3 = Server(args.server, args.model, "--parallel", "2", "-c", "512", "--policy", "hybrid",
                  "--window", "16", "--k-min", "8", threads=args.threads)

    def hybrid_policy_serves_and_reports():
        c3 = openai.OpenAI(base_url=srv3.base + "/v1", api_key="unused", max_retries=0,
                           timeout=300)
        long_prompt = "Once upon a time there was a little robot who loved to read books. " * 4

        def one(i):
            chunks = list(c3.completions.create(model=model_id, prompt=f"{i}. " + long_prompt,
                                                max_tokens=12, temperature=0, stream=True,
                                                extra_body={"ignore_eos": True}))
            return "".join(c.choices[0].text for c in chunks if c.choices)

        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            texts = list(ex.map(one, range(2), timeout=600))
        assert all(texts), texts
        m = srv3.metrics()
        assert m["hybridgen_scheduler_mean_k"] > 0, m["hybridgen_scheduler_mean_k"]
        for tier in ("device_window", "host_keys", "host_values"):
            assert f'hybridgen_kv_bytes{{tier="{tier}"}}' in m, tier
        assert m["hybridgen_active_sequences"] == 0
        rc = srv3.stop()
        assert rc == 0, f"exit status {rc}: {''.join(srv3.stderr_lines)[-3000:]}"

    test(hybrid_policy_serves_and_reports)
    srv3.stop(signal.SIGKILL) if srv3.proc.poll() is None else None

    failed = [n for n, ok in results if not ok]
    print(f"server tests: {len(results) - len(failed)} passed, {len(failed)} failed "
          f"in {time.time() - t_start:.0f} s" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
