"""HTTP for the tools: a page GET (the browser) and an API POST (the summariser and LLM judge), each under one
overall deadline and a size cap; the POST never follows redirects.

`http_get` (the browser's page fetch):
- Deadline: one wall-clock budget from connect to last byte. A watchdog shuts the socket down when it
  passes, so a server that trickles its headers or body a byte at a time is cut off there, not after
  n x (socket timeout). Name resolution is the one step it cannot interrupt.
- Size cap: at most `max_bytes` of body are read; the answer says when it was cut.
- Redirects (at most 5, http and https only) are followed by hand, each with a fresh request that carries
  only the fixed headers. Credentials written into the URL (`user:password@`) go as Basic auth to their own
  origin only, never to a host a redirect names; no cookies are kept.
- Addresses (`AddressPolicy`): the URLs come from search results, which the policy being trained can steer,
  so only public addresses are fetched. Each connection resolves its host once, refuses it when any address
  it resolves to is loopback, private, link-local, shared (CGNAT), multicast, reserved or unspecified (an
  IPv4-mapped IPv6 address is judged as the IPv4 address it maps), and connects to exactly the addresses it
  checked: a second DNS answer (rebinding) cannot switch it, and every redirect hop goes through the same
  check. Odd spellings (`0x7f000001`, `127.1`, `[::1]`, `user:pw@host`) are caught because the check sees
  the resolved address, not the text. The user's own page servers are let through by name or network.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

MAX_REDIRECTS = 5
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


class FetchError(Exception):
    """Why a page could not be fetched, in a few words (no credentials in it)."""


class AddressRefused(FetchError):
    """The URL's host is, or resolves to, an address the policy does not allow."""


# Name lookup and connecting, as module attributes so that tests can resolve invented names without DNS and
# prove that a refused address is never connected to.
_getaddrinfo = socket.getaddrinfo


def _connect(address: tuple, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")


def _internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_multicast or not ip.is_global


class AddressPolicy:
    """Which hosts may be connected to: every public address, plus the `allow` entries (host names, IP
    addresses or CIDR networks) even when they are internal. Raises ValueError naming a bad entry."""

    def __init__(self, allow: list[str] | tuple[str, ...] = ()):
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            text = str(entry).strip().lower()
            try:
                self.networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not _HOSTNAME.match(text.rstrip(".")):
                raise ValueError(f"'{entry}' is neither a host name, an IP address nor a network like 10.0.0.0/8")
            self.names.add(text.rstrip("."))

    def addresses(self, host: str, port: int) -> list[tuple]:
        """The socket addresses to connect to for `host`; raises AddressRefused (or OSError when the name
        does not resolve)."""
        try:
            infos = _getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except UnicodeError:  # a label IDNA cannot encode (too long, empty)
            raise FetchError("connection failed: not a valid host name") from None
        named = host.lower().rstrip(".") in self.names
        allowed = []
        for family, _, _, _, address in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(address[0].split("%")[0])
            if _internal(ip) and not named and not any(ip in net for net in self.networks):
                raise AddressRefused(f"refused: {host} is an internal address ({ip}); only public addresses are "
                                     "fetched unless tools.search.browser.allow_private lists the host")
            allowed.append(address)
        if not allowed:
            raise FetchError(f"connection failed: {host} has no IP address")
        return allowed

    def create_connection(self, host_port: tuple[str, int], timeout: float, source_address=None) -> socket.socket:
        """http.client's connection factory: connect to the checked addresses themselves, never to the name."""
        host, port = host_port
        error: OSError | None = None
        for address in self.addresses(host, port):
            try:
                return _connect(address, timeout)
            except OSError as e:
                error = e
        raise error


PUBLIC_ONLY = AddressPolicy()


@dataclass
class HttpResponse:
    status: int
    content_type: str      # lower-case media type without parameters ("" when absent)
    charset: str           # from the Content-Type parameters ("" when absent)
    body: bytes
    url: str               # after redirects
    truncated: bool        # the body was cut at max_bytes
    location: str | None = None  # where a redirect points (http_get follows it)


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _basic_auth(parts: urllib.parse.SplitResult) -> str:
    if parts.username is None:
        return ""
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _Watchdog:
    """Shuts a connection's socket down at the deadline; a blocked read then returns at once. It holds the
    socket itself: http.client drops `conn.sock` once a response that ends with the connection begins."""

    def __init__(self, seconds: float):
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            fired = self.fired
        if fired:  # the deadline passed while connecting
            self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
        self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # already closed by the reader
                self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def http_get(url: str, *, timeout: float, max_bytes: int, headers: dict[str, str],
             policy: AddressPolicy = PUBLIC_ONLY) -> HttpResponse:
    """GET `url` within `timeout` seconds in all, from the addresses `policy` allows; raises FetchError."""
    deadline = time.monotonic() + timeout
    first = urllib.parse.urlsplit(url)
    origin, auth = _origin(first), _basic_auth(first)
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        send = dict(headers)
        if auth and _origin(parts) == origin:
            send["Authorization"] = auth
        resp = _exchange("GET", url, None, send, deadline, timeout, max_bytes, policy)
        if resp.location is None:
            return resp
        url = urllib.parse.urljoin(url, resp.location)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def http_post(url: str, body: bytes, *, timeout: float, max_bytes: int, headers: dict[str, str]) -> HttpResponse:
    """POST to an API endpoint the user configured (any address), within `timeout` seconds in all, without
    following redirects (a 3xx is returned as it is); raises FetchError."""
    return _exchange("POST", url, body, headers, time.monotonic() + timeout, timeout, max_bytes, None)


def _exchange(method: str, url: str, body: bytes | None, headers: dict[str, str], deadline: float,
              timeout: float, max_bytes: int, policy: AddressPolicy | None) -> HttpResponse:
    """One request and its answer by the monotonic `deadline`; `location` is set on a redirect (body unread)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL (scheme {parts.scheme!r})")
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"no complete answer within {timeout:g}s")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = cls(parts.hostname, parts.port, timeout=left)  # .port raises ValueError when out of range
    except (http.client.InvalidURL, ValueError):  # a port that is not a number
        raise FetchError("not a valid URL (bad port)") from None
    if policy is not None:
        conn._create_connection = policy.create_connection
    watchdog = _Watchdog(left)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.connect()
        watchdog.watch(conn.sock)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        location = resp.getheader("Location")
        if resp.status in _REDIRECT_CODES and location and method == "GET":
            return HttpResponse(resp.status, "", "", b"", url, False, location)
        data, truncated = _read(resp, max_bytes)
        if watchdog.fired:
            raise FetchError(f"no complete answer within {timeout:g}s")
        media = (resp.getheader("Content-Type") or "").split(";")
        params = dict(p.strip().lower().partition("=")[::2] for p in media[1:] if "=" in p)
        return HttpResponse(resp.status, media[0].strip().lower(), params.get("charset", "").strip('"'),
                            data, url, truncated)
    except FetchError:
        raise
    except (OSError, http.client.HTTPException) as e:
        if watchdog.fired or isinstance(e, TimeoutError):
            raise FetchError(f"no complete answer within {timeout:g}s") from None
        raise FetchError(f"connection failed: {type(e).__name__}") from None
    finally:
        watchdog.cancel()
        conn.close()


def _read(resp: http.client.HTTPResponse, max_bytes: int) -> tuple[bytes, bool]:
    """At most max_bytes of the body; read1 returns after a single receive, so the watchdog's shutdown
    ends the loop promptly."""
    chunks, size = [], 0
    while size < max_bytes:
        chunk = resp.read1(min(_CHUNK, max_bytes - size))
        if not chunk:
            if resp.length:  # the connection ended before the announced Content-Length
                raise http.client.IncompleteRead(b"".join(chunks), resp.length)
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), not resp.isclosed()
