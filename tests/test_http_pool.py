"""The shared Azure SDK transport: proxies, CA bundles and netrc in the environment are still honoured;
with none of them, ``requests`` stops re-reading the environment on every call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from azure.core.rest import HttpRequest

from shared import http_pool


class Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself and remembers the request line."""

    seen: list[str] = []

    def do_GET(self) -> None:
        Proxy.seen.append(self.requestline)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Proxy.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fresh_transport(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No proxy, CA bundle or netrc in the environment; a transport built anew by the test."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setattr(http_pool, "_transport", None)
    yield
    http_pool._transport = None


def send(url: str) -> int:
    return http_pool.pooled_transport().send(HttpRequest("GET", url)).status_code


def test_a_proxy_in_the_environment_is_used(fresh_transport: None, proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)

    assert send("http://storage.invalid/devstoreaccount1/queue") == 200
    assert Proxy.seen == ["GET http://storage.invalid/devstoreaccount1/queue HTTP/1.1"]
    assert http_pool.pooled_transport().session.trust_env


def test_a_netrc_file_keeps_the_environment_read(fresh_transport: None, tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine storage.invalid login a password b\n")

    assert http_pool.pooled_transport().session.trust_env


def test_without_proxy_bundle_or_netrc_the_environment_is_not_read_per_call(
    fresh_transport: None, proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = http_pool.pooled_transport()
    assert not transport.session.trust_env
    monkeypatch.setenv("HTTP_PROXY", proxy)  # set after the transport was built: not looked at

    assert send(f"{proxy}/direct") == 200
    assert Proxy.seen == ["GET /direct HTTP/1.1"]  # reached directly, not as a proxy request
