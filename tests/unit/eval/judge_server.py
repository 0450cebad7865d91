"""A loopback OpenAI-compatible `/v1/chat/completions` server for judge tests.

Replies are scripted per request: a string is returned as the assistant message, an int is sent as that
HTTP status with an error body, None sends a 200 whose JSON has no `choices`, and "!garbage" sends a body
that is not JSON. Once the script runs out, `default` is used. Every request body and header is recorded.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, script: list | None = None, default: str | int | None = "Correct",
                 by_pred: dict[str, str] | None = None):
        self.script = deque(script or [])
        self.default = default
        self.by_pred = by_pred or {}   # predicted answer -> reply (checked before the script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests.append({"path": self.path, **body})
                    outer.headers.append(dict(self.headers))
                    reply = outer._next(body["messages"][-1]["content"])
                if isinstance(reply, int):
                    self._send(reply, b'{"error": {"message": "server exploded"}}')
                elif reply is None:
                    self._send(200, b'{"object": "chat.completion"}')
                elif reply == "!garbage":
                    self._send(200, b"<html>not json")
                else:
                    msg = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
                    self._send(200, json.dumps(msg).encode())

            def _send(self, code: int, data: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def _next(self, prompt: str):
        for pred, reply in self.by_pred.items():
            if f"Predicted answer: {pred}\n" in prompt:
                return reply
        return self.script.popleft() if self.script else self.default

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
