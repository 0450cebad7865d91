"""The HTTP side of `appo serve` (standard library only): a threaded server whose handlers check and
queue requests, and one worker that runs them through the agent one at a time.

Bounds: a body larger than `max_request_bytes` is refused unread (413); a request that finds the queue
full gets 503 at once, as does one whose deadline passed while it waited; a reply stops at its deadline
or tool budget (200, finish_reason "length", the reason in `appo.finish_reason`). Every error is JSON in
the OpenAI shape.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from appo.serve.agent import Agent, PromptTooLong
from appo.serve.protocol import RequestError, completion, error_body, parse_chat_request

log = logging.getLogger(__name__)
READ_TIMEOUT = 30.0   # seconds a client may take to send its request (a stalled client frees its thread)


@dataclass
class ServeLimits:
    deadline: float            # seconds per request from arrival
    max_request_bytes: int
    queue_size: int
    max_tool_calls: int        # the configured budget (tools.call_limit)


@dataclass
class _Job:
    raw: bytes
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 500
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


class AgentServer:
    """Serve an agent on host:port (port 0: a free one; see `.port`). The socket is bound at construction,
    so a taken port fails before the model loads; `serve_forever(agent, ...)` then answers requests."""

    def __init__(self, limits: ServeLimits, *, host: str = "127.0.0.1", port: int = 8000):
        self.limits = limits
        self.agent: Agent | None = None
        self.model_name, self.engine_name, self.tool_format = "", "", "tags"
        self.jobs: queue.Queue[_Job] = queue.Queue(maxsize=limits.queue_size)  # waiting, not running
        self.running = 0
        self.httpd = _http_server(host, port, self)
        self._worker = threading.Thread(target=self._work, name="appo-serve-worker", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    def serve_forever(self, agent: Agent, *, model_name: str, engine_name: str, tool_format: str = "tags") -> None:
        self.agent, self.model_name, self.engine_name, self.tool_format = agent, model_name, engine_name, tool_format
        self._worker.start()
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._worker.is_alive():  # serve_forever ran (shutdown would wait forever otherwise)
            self.httpd.shutdown()
        self.httpd.server_close()

    # --------------------------------------------------------------------------------------- work

    def submit(self, raw: bytes) -> _Job:
        """Queue a request, or answer it at once with 503 when `queue_size` requests already wait."""
        job = _Job(raw, time.monotonic())
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            job.status, job.body = 503, error_body(
                f"the server is busy: {self.limits.queue_size} requests are waiting in its queue "
                "(serve.queue_size); retry later", "server_overloaded", "queue_full")
            job.headers = {"Retry-After": "1"}
            job.done.set()
        return job

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            self.running = 1
            try:
                job.status, job.body = self._run(job)
            except RequestError as e:
                job.status, job.body, job.headers = e.status, e.body(), e.headers
            except Exception as e:  # noqa: BLE001 - the client gets a clean 500, the log the traceback
                log.exception("request failed")
                job.status, job.body = 500, error_body(f"internal error: {type(e).__name__}: {e}", "server_error")
            finally:
                self.running = 0
                job.done.set()

    def _run(self, job: _Job) -> tuple[int, dict]:
        limits = self.limits
        req = parse_chat_request(job.raw, limits.max_tool_calls, limits.deadline)
        deadline = job.arrived + (req.deadline or limits.deadline)
        if time.monotonic() >= deadline:
            raise RequestError(503, "the request's deadline passed while it waited in the queue; retry later",
                               "server_overloaded", "deadline_in_queue", headers={"Retry-After": "1"})
        try:
            reply = self.agent.reply(req.messages, temperature=req.temperature, top_p=req.top_p,
                                     max_tokens=req.max_tokens, max_tool_calls=req.max_tool_calls, seed=req.seed,
                                     deadline=deadline)
        except PromptTooLong as e:
            raise RequestError(400, str(e), code="context_length_exceeded", param="messages") from None
        log.info("reply: %d tool calls, %s, %.1f s", reply.tool_calls, reply.finish_reason, reply.seconds)
        return 200, completion(reply, self.model_name, self.engine_name, self.tool_format)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "appo"}]}


class _Handler(BaseHTTPRequestHandler):
    server_version = "appo-serve"
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT
    app: AgentServer  # set on the subclass made per server

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict, headers: dict | None = None, close: bool = False) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: RequestError, close: bool = False) -> None:
        self._send(e.status, e.body(), e.headers, close)

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._send(200, self.app.models())
        elif path in ("/health", "/v1/health"):
            self._send(200, {"status": "ok", "running": self.app.running, "waiting": self.app.jobs.qsize(),
                             "queue_size": self.app.limits.queue_size})
        elif path == "/v1/chat/completions":
            self._error(RequestError(405, "use POST for /v1/chat/completions", code="method_not_allowed"))
        else:
            self._error(RequestError(404, f"no route {path}; routes: POST /v1/chat/completions, GET /v1/models",
                                     code="not_found"))

    def do_POST(self):  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._error(RequestError(404, f"no route {path}; routes: POST /v1/chat/completions, GET /v1/models",
                                     code="not_found"), close=True)
            return
        cap = self.app.limits.max_request_bytes
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None or not length.isdigit():
            self._error(RequestError(411, "send the body with a Content-Length header", code="length_required"),
                        close=True)
            return
        if int(length) > cap:  # refused before reading a byte of it
            self._error(RequestError(413, f"the request body has {length} bytes, more than this server's "
                                          f"{cap} (serve.max_request_bytes)", code="request_too_large"), close=True)
            return
        try:
            raw = self.rfile.read(int(length))
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        job = self.app.submit(raw)
        job.done.wait()
        self._send(job.status, job.body, job.headers)


def _http_server(host: str, port: int, app: AgentServer) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"app": app})
    server_cls = ThreadingHTTPServer
    if ":" in host:  # an IPv6 address such as ::1
        server_cls = type("HTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_cls((host, port), handler)
    server.daemon_threads = True
    server.handle_error = _client_gone
    return server


def _client_gone(request, client_address) -> None:
    """A client that went away before its answer (a closed connection, a read timeout): one log line, where
    socketserver would print a traceback."""
    import sys

    log.info("connection from %s ended early: %s", client_address[0], sys.exc_info()[1])
