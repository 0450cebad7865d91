"""Hostile or broken search servers, against real loopback sockets: a server that trickles its answer,
one that sends a huge body, and one that redirects to another host to collect the API key."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appo.config import SearchToolConfig, ToolsConfig
from appo.tools.base import ToolCall
from appo.tools.registry import build_search_tool

KEY = "serper-secret-789"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", KEY)


class RawServer:
    """A TCP server on 127.0.0.1 that reads one HTTP request per connection and hands the socket to
    `answer(conn)`; counts the bytes it managed to send."""

    def __init__(self, answer):
        self.answer = answer
        self.sent = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/search"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        head, body = data.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(4096)
        try:
            self.answer(self, conn)
        except OSError:
            pass  # the client hung up: what a capped or timed-out client does
        finally:
            conn.close()

    def send(self, conn, data: bytes):
        conn.sendall(data)
        self.sent += len(data)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _tool(url: str, timeout: float = 10.0, **search):
    cfg = ToolsConfig(timeout=timeout, search=SearchToolConfig(backend="serper", url=url, retry_backoff=0.01,
                                                               **search))
    return build_search_tool(cfg)


ANSWER = json.dumps({"organic": [{"snippet": "Paris is the capital."}]}).encode()


def _trickle_body(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(ANSWER))
    for byte in ANSWER:  # one byte every 0.2 s: never idle for a whole request_timeout
        server.send(conn, bytes([byte]))
        time.sleep(0.2)


def _trickle_headers(server, conn):
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 200:
        server.send(conn, bytes([byte]))
        time.sleep(0.2)


@pytest.mark.parametrize("answer", [_trickle_body, _trickle_headers], ids=["body", "headers"])
def test_a_trickling_server_is_cut_at_the_request_deadline(answer):
    server = RawServer(answer)
    try:
        tool = _tool(server.url, timeout=10.0, request_timeout=1.0)
        t0 = time.monotonic()
        result = tool(ToolCall("search", "capital of france"))
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert not result.ok and "did not answer within 1s" in result.text
    assert elapsed < 2.5, f"the call took {elapsed:.1f}s with request_timeout=1"


def test_the_call_deadline_bounds_retries_of_a_trickling_server():
    server = RawServer(_trickle_body)
    try:
        tool = build_search_tool(ToolsConfig(timeout=1.5, retry_count=5, search=SearchToolConfig(
            backend="serper", url=server.url, request_timeout=1.0, retry_backoff=0.01)))
        t0 = time.monotonic()
        result = tool(ToolCall("search", "q"))
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert not result.ok and elapsed < 3.0, (elapsed, result.text)


def _huge_declared(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400000000\r\n\r\n")
    for _ in range(400_000_000 >> 16):
        server.send(conn, b" " * (1 << 16))


def _huge_streamed(server, conn):
    # No Content-Length: the body runs until the server closes, so only counting while reading can cap it.
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    for _ in range(400_000_000 >> 16):
        server.send(conn, b" " * (1 << 16))


@pytest.mark.parametrize("answer", [_huge_declared, _huge_streamed], ids=["declared", "streamed"])
def test_a_huge_answer_is_refused_at_the_cap(answer):
    server = RawServer(answer)
    try:
        result = _tool(server.url, max_response_mb=1)(ToolCall("search", "q"))
        time.sleep(0.2)
    finally:
        server.close()
    assert not result.ok and "cap" in result.text and "max_response_mb" in result.text
    assert server.sent < 64 << 20, f"the client read {server.sent} bytes with a 1 MB cap"


class Recorder(ThreadingHTTPServer):
    """Records every request (any method) it gets, with its headers."""

    def __init__(self, host: str, status: int = 200, location: str | None = None):
        self.seen: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.seen.append({"method": self.command, "headers": dict(self.headers)})
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(ANSWER)))
                self.end_headers()
                self.wfile.write(ANSWER)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args):
                pass

        super().__init__((host, 0), Handler)
        self.url = f"http://{host}:{self.server_address[1]}/search"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_host_is_not_followed_and_gets_no_key(status):
    thief = Recorder("127.0.0.2")
    redirector = Recorder("127.0.0.1", status=status, location=thief.url)
    try:
        result = _tool(redirector.url)(ToolCall("search", "q"))
    finally:
        redirector.close()
        thief.close()
    assert redirector.seen and redirector.seen[0]["headers"].get("X-Api-Key") == KEY
    assert thief.seen == [], f"the other host got {thief.seen}"
    assert not result.ok and f"HTTP {status}" in result.text and "redirect" in result.text
    assert "127.0.0.2" in result.text and KEY not in result.text


def test_a_normal_answer_still_works_through_the_new_client():
    server = Recorder("127.0.0.1")
    try:
        result = _tool(server.url)(ToolCall("search", "capital"))
    finally:
        server.close()
    assert result.ok and result.text == "Page 1: Paris is the capital."
