"""The browser fetches public addresses only (issue 25, SSRF): loopback, private, link-local, multicast and
unspecified addresses are refused whatever form the URL gives them, after every redirect, and for every
address a name resolves to, checked where the connection is made so that a second resolution cannot switch
it; `tools.search.browser.allow_private` lets a user's own page server through.

Only loopback servers are ever connected to. Names that resolve to private, link-local or multicast addresses
come from a test resolver, and the connector is replaced so that a refused address would fail the test
rather than be connected to."""

from __future__ import annotations

import socket
import time

import pytest

from appo.config import BrowserConfig, ConfigError
from appo.tools import web_fetch
from appo.tools.pages import PageReader

from .browse_servers import PageServer

SECRET = "The Eiffel Tower"  # what the internal service's page holds


def _reader(*allow: str) -> PageReader:
    return PageReader(BrowserConfig(page_timeout=5.0, allow_private=list(allow)))


def _read(reader: PageReader, url: str):
    return reader.read(url, time.monotonic() + 30)


@pytest.fixture()
def internal():
    with PageServer("127.0.0.1") as server:
        yield server


def _refused(page, server=None) -> bool:
    return (not page.text and "refused" in page.error and "allow_private" in page.error
            and (server is None or not server.requests))


@pytest.mark.parametrize("form", ["127.0.0.1", "localhost", "0x7f000001", "2130706433", "127.1",
                                  "user:pw@127.0.0.1", "LocalHost", "[::ffff:127.0.0.1]"])
def test_loopback_in_any_form_is_refused(internal, form):
    page = _read(_reader(), f"http://{form}:{internal.port}/article.html")
    assert _refused(page, internal), (page.error, page.text[:80], internal.requests)


def test_ipv6_loopback_is_refused():
    with PageServer("::1") as server:
        page = _read(_reader(), server.url("/article.html"))
        assert _refused(page, server), page.error


def test_a_redirect_to_an_internal_address_is_refused(internal):
    with PageServer("127.0.0.2") as own:
        own.redirect_to = internal.url("/article.html")
        page = _read(_reader("127.0.0.2"), own.url("/redirect"))   # the user's own server is allowed
        assert own.requests and _refused(page, internal), page.error


def test_the_allow_list_lets_the_users_own_server_through(internal):
    for entry in ("127.0.0.1", "127.0.0.0/8", "localhost"):
        host = "localhost" if entry == "localhost" else "127.0.0.1"
        page = _read(_reader(entry), f"http://{host}:{internal.port}/article.html")
        assert SECRET in page.text, (entry, page.error)
    served = len(internal.requests)
    page = _read(_reader("127.0.0.2"), internal.url("/article.html"))  # allowing one host allows no other
    assert _refused(page) and len(internal.requests) == served


def test_a_bad_allow_list_entry_fails_at_start_up():
    with pytest.raises(ConfigError, match=r"tools.search.browser.allow_private: 'not a host!'"):
        _reader("not a host!")


class _Resolver:
    """getaddrinfo for invented names; records each lookup."""

    def __init__(self, table: dict[str, list]):
        self.table, self.calls = table, []

    def __call__(self, host, port, *args, **kwargs):
        self.calls.append(host)
        answers = self.table[host]
        addresses = answers.pop(0) if isinstance(answers[0], list) else answers
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in addresses]


def _no_connect(address, timeout):
    raise AssertionError(f"connected to {address}")


@pytest.mark.parametrize("addresses", [["169.254.169.254"], ["10.0.0.5"], ["172.16.3.4"], ["192.168.1.1"],
                                       ["100.64.0.1"], ["224.0.0.1"], ["0.0.0.0"], ["fe80::1"], ["fd00::1"],
                                       ["::"], ["ff02::1"], ["::ffff:10.0.0.1"],
                                       ["93.184.216.34", "192.168.1.1"]])  # one bad address among good ones
def test_names_resolving_to_internal_addresses_are_refused_without_connecting(monkeypatch, addresses):
    resolver = _Resolver({"site.test": addresses})
    monkeypatch.setattr(web_fetch, "_getaddrinfo", resolver)
    monkeypatch.setattr(web_fetch, "_connect", _no_connect)
    page = _read(_reader(), "http://site.test/page.html")
    assert resolver.calls == ["site.test"] and _refused(page), page.error


def test_the_address_checked_is_the_address_connected_to(monkeypatch, internal):
    # DNS rebinding: the first answer is the allowed server, every later one the internal service on the
    # same port. A fetch that resolved again to connect would reach the internal service.
    with PageServer("127.0.0.2", port=internal.port) as own:
        resolver = _Resolver({"pages.test": [["127.0.0.2"]] + [["127.0.0.1"]] * 5})
        monkeypatch.setattr(web_fetch, "_getaddrinfo", resolver)
        page = _read(_reader("127.0.0.2"), f"http://pages.test:{internal.port}/article.html")
        assert SECRET in page.text and own.requests and not internal.requests, page.error
        own.redirect_to = f"http://pages.test:{internal.port}/moved.html"  # resolved again: now internal
        page = _read(_reader("127.0.0.2"), f"http://pages.test:{internal.port}/redirect")
        assert _refused(page, internal), page.error


def test_a_host_name_idna_cannot_encode_is_a_page_error():
    page = _read(_reader(), "http://" + "a" * 70 + ".example/page.html")
    assert page.error == "connection failed: not a valid host name", page.error
