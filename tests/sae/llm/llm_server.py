"""Real HTTP servers for the OpenAI backend's tests.

- LlamaServer: llama.cpp's OpenAI-compatible server (xllamacpp) over the shipped SmolLM2 GGUF, in a child
  process so a test can stop it and start it again on the same port.
- FaultyProxy: a small HTTP proxy in a thread that answers scripted failures (503, 429 with Retry-After, ...)
  to the first requests, then forwards to the real server; it counts what it did, and can hold requests until
  several are in flight at once (to see whether clients send side by side).

Run as a module, it is the child process: `python -m tests.sae.llm.llm_server GGUF PORT [API_KEY]`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """llama.cpp's server on 127.0.0.1:`port` in a child process; `base_url` ends in /v1."""

    def __init__(self, gguf: Path, api_key: str | None = None, port: int | None = None):
        self.gguf = gguf
        self.api_key = api_key
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 60.0) -> LlamaServer:
        args = [sys.executable, "-m", "tests.sae.llm.llm_server", str(self.gguf), str(self.port)]
        if self.api_key:
            args.append(self.api_key)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama.cpp test server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the llama.cpp test server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def serve(gguf: str, port: int, api_key: str | None) -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.n_parallel = 4
    params.n_ctx = 4 * 2048
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    params.verbosity = 0
    params.hostnames = ["127.0.0.1"]
    params.port = port
    if api_key:
        params.api_keys = [api_key]
    server = xllamacpp.Server(params)  # noqa: F841 (serves while referenced)
    sys.stdin.read()  # until the parent closes our stdin or terminates us


class FaultyProxy:
    """Answers `failures` [(status, headers), ...] to the first POSTs, then forwards to `upstream`. With `gather`
    above 1, a forwarded request waits (up to `gather_s`) until `gather` requests are in flight together, once."""

    def __init__(self, upstream: str, failures: list[tuple[int, dict[str, str]]] = (), gather: int = 1,
                 gather_s: float = 60.0):
        target = urllib.parse.urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.failures = list(failures)
        self.failed = 0  # failures answered
        self.forwarded = 0  # requests passed to the upstream server
        self.authorization: list[str | None] = []  # the Authorization header of every request
        self.in_flight = self.peak_in_flight = 0  # forwarded requests not yet answered: now, and at most
        lock = threading.Lock()
        met = threading.Event()  # set once `gather` requests were in flight together, or the wait gave up
        gathered = threading.Barrier(gather, action=met.set, timeout=gather_s) if gather > 1 else None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    proxy.authorization.append(self.headers.get("Authorization"))
                    failure = proxy.failures.pop(0) if proxy.failures else None
                    if failure:
                        proxy.failed += 1
                    else:
                        proxy.forwarded += 1
                        proxy.in_flight += 1
                        proxy.peak_in_flight = max(proxy.peak_in_flight, proxy.in_flight)
                if failure:
                    status, headers = failure
                    self.reply(status, json.dumps({"error": {"message": f"injected {status}"}}).encode(), headers)
                    return
                if gathered is not None and not met.is_set():
                    try:
                        gathered.wait()
                    except threading.BrokenBarrierError:  # too few came within gather_s: go on without them
                        met.set()
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                headers = {"Content-Type": "application/json"}
                if self.headers.get("Authorization"):
                    headers["Authorization"] = self.headers["Authorization"]
                conn.request("POST", self.path, body, headers)
                response = conn.getresponse()
                answer = response.read()
                conn.close()
                with lock:
                    proxy.in_flight -= 1
                self.reply(response.status, answer, {})

            def reply(self, status: int, body: bytes, headers: dict[str, str]):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
