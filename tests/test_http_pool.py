"""The shared Azure SDK transport: proxies, CA bundles and netrc in the environment are still honoured;
the bundle is read once, and with no proxy or netrc ``requests`` stops re-reading the environment per call."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.core.rest import HttpRequest

from shared import http_pool
from tests.tls import mint_certificate


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


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server with a self-signed certificate: its URL and the certificate (a CA bundle)."""
    cert, key = mint_certificate(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), Proxy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


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


def test_a_ca_bundle_in_the_environment_is_trusted_without_reading_it_per_call(
    fresh_transport: None, tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, bundle = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))

    assert send(f"{url}/trusted") == 200
    assert not http_pool.pooled_transport().session.trust_env


def test_without_the_bundle_the_self_signed_server_is_refused(
    fresh_transport: None, tls_server: tuple[str, Path]
) -> None:
    url, _ = tls_server

    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        send(f"{url}/untrusted")
