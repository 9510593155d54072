#!/usr/bin/env python3
"""Throughput and latency of hybridgen-server under 1, 4 and 16 concurrent clients.

Starts the server (or uses --url), then for each concurrency C runs C client threads, each
sending --requests streaming /v1/completions requests back to back (different prompts, greedy,
ignore_eos so that every request generates exactly --max-tokens tokens), and reports
  tokens/s  - generated tokens of all clients over the wall time of the round
  TTFT      - time to first token: request sent -> first text event (p50, p99)
  TPOT      - time per output token after the first: (last - first event) / (tokens - 1)
A warm-up round (one request per client slot) comes first and is not counted.

  scripts/bench-server.py --server build/tools/server/hybridgen-server -m MODEL -t 2
  scripts/bench-server.py --url http://127.0.0.1:8080 --clients 1,4,16

Standard library only (http.client), so that the client costs little next to the server.
"""
import argparse
import http.client
import json
import re
import subprocess
import sys
import threading
import time


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, prompt, max_tokens):
    """(ttft s, tpot s or None, tokens) of one streamed completion."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
    first = last = None
    tokens = 0
    while True:
        line = r.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        if ev["choices"] and ev["choices"][0]["text"]:
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
    conn.close()
    ttft = (first - t0) if first else float("nan")
    tpot = (last - first) / (tokens - 1) if first and tokens > 1 else None
    return ttft, tpot, tokens


def run_round(host, port, clients, requests, max_tokens, prompt_words, tag):
    results, errors = [], []
    lock = threading.Lock()

    def client(c):
        for i in range(requests):
            prompt = f"Client {c} request {i} ({tag}): " + " ".join(
                ["the quick brown fox jumps over the lazy dog"] * max(1, prompt_words // 9))
            try:
                res = one_request(host, port, prompt, max_tokens)
                with lock:
                    results.append(res)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return results, errors, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="hybridgen-server binary to start")
    ap.add_argument("-m", "--model", help="model for --server")
    ap.add_argument("-t", "--threads", default="2", help="server CPU threads")
    ap.add_argument("--server-args", default="", help="more server flags, one string")
    ap.add_argument("--url", help="use a running server instead")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-words", type=int, default=45)
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    proc = None
    if args.url:
        m = re.match(r"http://([^:/]+):(\d+)", args.url)
        host, port = m.group(1), int(m.group(2))
    else:
        if not args.server or not args.model:
            ap.error("give --url, or --server and -m")
        cmd = [args.server, "-m", args.model, "-t", args.threads, "--port", "0",
               "--parallel", str(max(clients)), *args.server_args.split()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if not m:
            sys.exit(f"server did not start: {line!r}")
        host, port = m.group(1), int(m.group(2))
        print(f"server: {' '.join(cmd)}")
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        print(f"machine: {cpu}; load average at start {' '.join(load)}")
        print(f"{args.requests} streamed requests per client, {args.max_tokens} tokens each "
              f"(ignore_eos), prompts of ~{args.prompt_words} words, greedy\n")
        print("| clients | requests | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | "
              "TPOT p99 (ms) | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in clients:
            run_round(host, port, c, 1, 4, args.prompt_words, "warm-up")
            res, errs, wall = run_round(host, port, c, args.requests, args.max_tokens,
                                        args.prompt_words, "timed")
            tok = sum(r[2] for r in res)
            ttft = [r[0] * 1e3 for r in res]
            tpot = [r[1] * 1e3 for r in res if r[1] is not None]
            print(f"| {c} | {len(res)} | {tok / wall:.1f} | {percentile(ttft, 50):.0f} | "
                  f"{percentile(ttft, 99):.0f} | {percentile(tpot, 50):.1f} | "
                  f"{percentile(tpot, 99):.1f} | {len(errs)} |", flush=True)
            for e in errs[:3]:
                print(f"  error: {e}")
        with open("/proc/loadavg") as f:
            print(f"\nload average at the end: {' '.join(f.read().split()[:3])}")
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
