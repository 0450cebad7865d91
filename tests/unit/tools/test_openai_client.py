"""The chat client (browser summariser, LLM judge) against loopback servers (issue 25): one deadline for the
whole request, so a server trickling its answer cannot hold a call past it, and a cut-short answer is a
ChatError, never an uncaught IncompleteRead."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appo.tools.openai_client import ChatClient, ChatError

REPLY = json.dumps({"choices": [{"message": {"role": "assistant", "content": "forty-two"}}]}).encode()


@pytest.fixture()
def server():
    stop = threading.Event()
    mode = {"kind": "ok"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            kind = mode["kind"]
            try:
                if kind == "trickle-headers":   # a status line, then one header byte per 0.05 s, forever
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for byte in itertools.cycle(b"X-Slow: 1\r\n"):
                        if stop.wait(0.05):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(REPLY) + (100 if kind == "short" else 0)))
                self.end_headers()
                if kind == "trickle-body":
                    for byte in REPLY:
                        if stop.wait(0.05):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                else:
                    self.wfile.write(REPLY)   # "short": 100 bytes fewer than announced, then the connection ends
            except (BrokenPipeError, ConnectionResetError):
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", mode
    stop.set()
    httpd.shutdown()
    httpd.server_close()


def _complete(url, timeout=1.0):
    return ChatClient(url, "sk-test", "m").complete("q", temperature=0.0, max_tokens=8, timeout=timeout)


def test_a_plain_answer_is_read(server):
    url, _ = server
    assert _complete(url) == "forty-two"


@pytest.mark.parametrize("kind", ["trickle-headers", "trickle-body"])
def test_a_trickling_server_is_cut_off_at_the_deadline(server, kind):
    url, mode = server
    mode["kind"] = kind
    started = time.monotonic()
    with pytest.raises(ChatError, match=r"no answer within 1s"):
        _complete(url, timeout=1.0)
    assert time.monotonic() - started < 1.6


def test_an_answer_cut_short_is_a_chat_error(server):
    url, mode = server
    mode["kind"] = "short"
    with pytest.raises(ChatError, match="connection failed|malformed"):
        _complete(url)
