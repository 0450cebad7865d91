"""Loopback servers for the browser tests: result pages (HTML, PDF, slow, huge, redirecting, missing) and an
OpenAI-compatible summariser scripted to answer, fail or hang. Both record every request they get."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import zlib
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARTICLE = """<html><head><title>Eiffel Tower facts</title></head><body>
<nav><a href="/">Home</a> | <a href="/shop">Shop</a> | <a href="/login">Log in</a></nav>
<article><h1>The Eiffel Tower</h1>
<p>The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.</p>
<p>It was designed by the engineering company of Gustave Eiffel and built from 1887 to 1889.</p>
<p>The tower is 330 metres tall, about the same height as an 81-storey building.</p>
<p>It was the tallest man-made structure in the world until the Chrysler Building was finished in 1930.</p>
</article>
<footer>Copyright 2026 Example Travel Ltd. All rights reserved. Cookie settings.</footer>
</body></html>"""

MOVED = """<html><head><title>Moved page</title></head><body><article>
<p>The Statue of Liberty was a gift from the people of France to the United States in 1886.</p>
<p>Its copper skin was designed by Frederic Bartholdi and its frame by Gustave Eiffel.</p>
</article></body></html>"""

# The page servers run on loopback, which the browser refuses unless allowed (tools.search.browser.allow_private).
LOOPBACK_PAGES = ["127.0.0.0/8"]

PDF_LINES = ["Annual report of the Paris tower society.", "The tower received 6.3 million visitors in 2023."]


def make_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with a Helvetica text line per entry: objects, a compressed content stream and an
    exact cross-reference table, the minimum a strict reader accepts."""
    text = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    stream = zlib.compress(f"BT /F1 12 Tf 72 720 Td {text} ET".encode("latin-1"))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Server:
    def __init__(self, host: str, handler, port: int = 0):
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.httpd = server_class((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self.base = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.stop = threading.Event()   # ends slow/hanging handlers when the test is done

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class PageServer(_Server):
    """GET routes: /article.html, /report.pdf, /slow.html (trickles one byte per 0.05 s, forever),
    /huge.html (an article followed by an endless body), /redirect (302 to `redirect_to`, with a cookie),
    /moved.html, /image.png; anything else is a 404. `requests` holds (path, headers) per request."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.requests: list[tuple[str, dict]] = []
        self.redirect_to = ""
        self.pdf = make_pdf(PDF_LINES)
        outer = self

        class Handler(BaseHTTPRequestHandler):

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.do_GET()

            def do_GET(self):
                outer.requests.append((self.path, dict(self.headers)))
                route = getattr(outer, "_route_" + self.path.strip("/").replace(".", "_"), outer._route_missing)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up: what
                    route(self)                                                    # the deadline tests want

        super().__init__(host, Handler, port)

    def url(self, path: str) -> str:
        return self.base + path

    @staticmethod
    def _send(h, status: int, ctype: str, body: bytes, extra: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _route_article_html(self, h):
        self._send(h, 200, "text/html; charset=utf-8", ARTICLE.encode())

    def _route_moved_html(self, h):
        self._send(h, 200, "text/html; charset=utf-8", MOVED.encode())

    def _route_report_pdf(self, h):
        self._send(h, 200, "application/pdf", self.pdf)

    def _route_image_png(self, h):
        self._send(h, 200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)

    def _route_redirect(self, h):
        self._send(h, 302, "text/html", b"moved", {"Location": self.redirect_to, "Set-Cookie": "session=s3cret"})

    def _route_missing(self, h):
        self._send(h, 404, "text/html", b"<html><body><p>Not found</p></body></html>")

    def _route_slow_html(self, h):
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        while not self.stop.is_set():   # never idle long enough for a socket timeout to fire
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.05)

    def _route_huge_html(self, h):
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Connection", "close")
        h.end_headers()  # no length: the body ends when the connection does, i.e. never
        h.wfile.write(ARTICLE.replace("</body></html>", "").encode())
        filler = b"<p>" + b"filler text " * 5000 + b"</p>\n"
        while not self.stop.is_set():
            h.wfile.write(filler)


class SummariserServer(_Server):
    """POST /v1/chat/completions. Script items, one per request (then `default`): a string is the assistant
    message, an int is that HTTP status, "!hang" never answers, ("redirect", url) is a 302 to `url`."""

    def __init__(self, script: list | None = None, default="**Final Information**\n\nNothing helpful."):
        self.script = deque(script or [])
        self.default = default
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                outer.headers.append(dict(self.headers))
                reply = outer.script.popleft() if outer.script else outer.default
                try:
                    if reply == "!hang":
                        outer.stop.wait(30)
                    elif isinstance(reply, tuple):
                        self._send(302, b"", {"Location": reply[1]})
                    elif isinstance(reply, int):
                        self._send(reply, b'{"error": {"message": "summariser exploded"}}')
                    else:
                        msg = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
                        self._send(200, json.dumps(msg).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, code: int, data: bytes, extra: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        super().__init__("127.0.0.1", Handler)
        self.url = self.base + "/v1"

    @property
    def prompts(self) -> list[str]:
        return [r["messages"][-1]["content"] for r in self.requests]
