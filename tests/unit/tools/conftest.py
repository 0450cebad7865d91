"""Fixtures for the tool tests: real sandboxes (skipped with the reason when bubblewrap is missing) and a
loopback TCP listener that sandboxed code must not be able to reach."""

from __future__ import annotations

import shutil
import socket
import threading

import pytest

from appo.config import PythonToolConfig


def _python_tool(timeout: float, **overrides):
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")
    from appo.tools.python import PythonTool

    return PythonTool(PythonToolConfig(**overrides), timeout=timeout, result_max_chars=2000)


@pytest.fixture(scope="session")
def sandboxed():
    """A sandboxed python tool with room for imports (numpy, sympy)."""
    return _python_tool(timeout=8.0, memory_mb=256)


@pytest.fixture(scope="session")
def quick():
    """A sandboxed python tool with a short wall-clock limit, for code that never ends by itself."""
    return _python_tool(timeout=0.6)


@pytest.fixture()
def listener():
    """A TCP server on 127.0.0.1 counting the connections it accepts; yields (port, accepted list)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


class FakeProvider:
    """A loopback HTTP server speaking a search provider's wire format. `replies` is consumed one per
    request: (status, body) where body is a dict (sent as JSON), a str (sent raw), or ('sleep', s)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        self.replies: list = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                import json
                import time

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                provider.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                status, reply = provider.replies.pop(0) if provider.replies else (200, {})
                if isinstance(reply, tuple):
                    time.sleep(reply[1])
                    reply = {}
                raw = json.dumps(reply).encode() if isinstance(reply, dict) else reply.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def provider():
    p = FakeProvider()
    yield p
    p.close()
