"""The local server is not a web target (issue 20): each rule of the web edge as a hostile page tries it.

A page in the user's browser can send a request to ``http://127.0.0.1:7071`` (CSRF), or rebind its own
name to that address (DNS rebinding); neither may store, cancel or read anything. The rules, each tried
here on its own (the others passed): the ``Host`` header names this server (421), a state-changing request
comes from this server's own origin (403), carries a JSON or YAML document (415) and the key (401).
The browser's side of the same attacks is ``tests/test_web_edge_browser.py``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.api import create_api
from shared.api_guard import DOCUMENT_TYPES, EdgePolicy
from shared.auth.principal import KEY_HOLDER
from shared.cli.server_keys import key_file, read_key, remove_keys, write_key
from shared.config import Settings
from shared.dashboard.docs import api_docs
from shared.records import ExperimentStatus
from tests.control_plane import local_context, tiny_spec
from tests.dashboard_data import make_experiment
from tests.test_end_to_end import free_port, served

ROOT = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1:7071"
KEY = "k-web-edge"
RUNNING = "exp-20261204100000-cccccc"
AUTH = {"x-functions-key": KEY}
JSON = {"content-type": "application/json", **AUTH}


@pytest.fixture
def ctx(tmp_path):
    context = local_context(tmp_path)
    make_experiment(context.store, RUNNING, trials=2, running=1, status=ExperimentStatus.RUNNING)
    return context


@pytest.fixture
def client(ctx) -> TestClient:
    """The app as ``serve`` builds it: a key, bound to loopback."""
    return TestClient(create_api(context=ctx, function_key=KEY, bound_host="127.0.0.1"), base_url=BASE)


def stored(ctx) -> int:
    return len(ctx.store.list_experiments(limit=200)[0])


def submit(client: TestClient, **headers: str) -> httpx.Response:
    return client.post("/api/experiments", content=json.dumps(tiny_spec()), headers={**JSON, **headers})


def refused(response: httpx.Response, status: int, loc: str) -> None:
    assert response.status_code == status, response.text
    assert [e["loc"] for e in response.json()["errors"]] == [loc], response.text


def test_the_legitimate_requests_pass(client, ctx):
    assert submit(client).status_code == 202
    assert client.get("/api/health", headers=AUTH).status_code == 200
    assert client.get("/api/ui", params={"code": KEY}).status_code == 200
    assert client.delete(f"/api/experiments/{RUNNING}", headers=AUTH).status_code == 202
    assert stored(ctx) == 2


# --------------------------------------------------------------- 415: a document, never a form or text
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
        "application/jsonp",
        "application/json-seq",
        "",
        None,
    ],
)
def test_a_submit_without_a_document_type_is_415(client, ctx, content_type):
    headers = dict(AUTH) if content_type is None else {**AUTH, "content-type": content_type}
    response = client.post("/api/experiments", content=json.dumps(tiny_spec()), headers=headers)
    refused(response, 415, "header.content-type")
    assert stored(ctx) == 1


@pytest.mark.parametrize("content_type", [*sorted(DOCUMENT_TYPES), "Application/JSON; charset=UTF-8"])
def test_each_document_type_is_accepted(client, content_type):
    assert submit(client, **{"content-type": content_type}).status_code == 202


def test_a_delete_with_a_body_needs_a_document_type(client, ctx):
    response = client.request("DELETE", f"/api/experiments/{RUNNING}", content=b"x=1", headers=AUTH)
    refused(response, 415, "header.content-type")
    assert ctx.store.get_experiment(RUNNING).status is ExperimentStatus.RUNNING


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(media=st.from_regex(r"\A[a-z]{1,12}/[a-z0-9.+-]{1,20}\Z"))
def test_any_other_media_type_is_415(client, ctx, media):
    response = client.post("/api/experiments", content=b"{}", headers={**AUTH, "content-type": media})
    assert response.status_code == (422 if media in DOCUMENT_TYPES else 415)
    assert stored(ctx) == 1


# ----------------------------------------------------------------- 421: the Host names this server
@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",
        "attacker.example:7071",
        "127.0.0.1.attacker.example",
        "localhost.attacker.example",
        "localhost@attacker.example",
        "0.0.0.0:7071",
        "10.0.0.5:7071",
        "[fd00::1]:7071",
        "127.0.0.1:7071, attacker.example",
        "",
    ],
)
def test_an_untrusted_host_is_421_on_every_route(client, ctx, host):
    headers = {"host": host}
    refused(client.get("/api/health", headers={**AUTH, **headers}), 421, "header.host")
    refused(client.get("/api/ui", params={"code": KEY}, headers=headers), 421, "header.host")
    refused(submit(client, **headers), 421, "header.host")
    refused(client.delete(f"/api/experiments/{RUNNING}", headers={**AUTH, **headers}), 421, "header.host")
    assert stored(ctx) == 1 and ctx.store.get_experiment(RUNNING).status is ExperimentStatus.RUNNING


@pytest.mark.parametrize(
    "host", ["127.0.0.1:7071", "localhost", "LOCALHOST:9", "localhost.", "[::1]:7071", "127.8.9.1"]
)
def test_loopback_hosts_are_trusted(client, host):
    assert client.get("/api/health", headers={**AUTH, "host": host}).status_code == 200


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.from_regex(r"\A[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\Z"))
def test_no_other_name_is_trusted(client, name):
    octets = name.split(".")
    loopback_ip = len(octets) == 4 and octets[0] == "127" and all(re.fullmatch(r"0|[1-9]\d{0,2}", o) for o in octets)
    trusted = name == "localhost" or (loopback_ip and all(int(o) <= 255 for o in octets))
    status = client.get("/api/health", headers={**AUTH, "host": f"{name}:7071"}).status_code
    assert status == (200 if trusted else 421)


def test_the_bound_host_and_configured_hosts_are_trusted(ctx):
    ctx.settings = Settings(**{**ctx.settings.__dict__, "trusted_hosts": ("hpo.lab.example",)})
    app = create_api(context=ctx, function_key=KEY, bound_host="10.1.2.3")
    client = TestClient(app, base_url="http://10.1.2.3:7071")
    assert client.get("/api/health", headers=AUTH).status_code == 200
    assert client.get("/api/health", headers={**AUTH, "host": "HPO.lab.example:443"}).status_code == 200
    assert client.get("/api/health", headers={**AUTH, "host": "lab.example"}).status_code == 421


def test_in_azure_the_function_app_host_name_is_trusted(monkeypatch, tmp_path):
    monkeypatch.setenv("WEBSITE_SITE_NAME", "hpo-func")
    monkeypatch.setenv("WEBSITE_HOSTNAME", "hpo-func.azurewebsites.net")
    monkeypatch.setenv("RAPIDS_HPO_ALLOWED_HOSTS", "hpo.contoso.example, api.contoso.example")
    settings_ = Settings.from_env()
    assert settings_.hosted
    policy = EdgePolicy.of(settings_)
    for host in (
        "hpo-func.azurewebsites.net",
        "hpo-func",
        "HPO.contoso.example",
        "api.contoso.example:443",
        "localhost",
    ):
        assert policy.trusts_host(host), host
    for host in ("hpo-func.azurewebsites.net.attacker.example", "other.azurewebsites.net", "contoso.example"):
        assert not policy.trusts_host(host), host


# ------------------------------------------------- 403: state changes come from this server's own origin
@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://attacker.example"},
        {"origin": "http://127.0.0.1:8000"},  # another local port: same site, another origin
        {"origin": "https://127.0.0.1"},
        {"origin": "file://"},
        {"origin": "null"},  # a sandboxed frame or a data: page
        {"origin": "http://127.0.0.1:7071.attacker.example"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"sec-fetch-site": "same-site", "origin": "http://127.0.0.1:7071"},
    ],
)
def test_a_cross_origin_state_change_is_403(client, ctx, headers):
    refused(submit(client, **headers), 403, "header.origin")
    refused(client.delete(f"/api/experiments/{RUNNING}", headers={**AUTH, **headers}), 403, "header.origin")
    assert stored(ctx) == 1 and ctx.store.get_experiment(RUNNING).status is ExperimentStatus.RUNNING


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://127.0.0.1:7071"},
        {"origin": "HTTP://127.0.0.1:7071"},
        {"sec-fetch-site": "same-origin", "origin": "http://127.0.0.1:7071"},
        {"sec-fetch-site": "none"},  # typed by the user
    ],
)
def test_the_servers_own_origin_may_change_state(client, headers):
    assert submit(client, **headers).status_code == 202


def test_a_cross_site_read_is_not_refused_by_origin(client):
    """Reads change nothing, and a cross-origin page cannot read the answer (no CORS headers, and the key)."""
    response = client.get("/api/health", headers={**AUTH, "sec-fetch-site": "cross-site", "origin": "http://x"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


# ----------------------------------------------------------------------- 401: the key, on every route
def test_every_route_needs_the_key(client, ctx):
    documented = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    paths = [p for p in documented if "{" not in p] + ["/api/openapi.json", "/api/docs"]
    assert {"/api/health", "/api/experiments", "/api/ui", "/api/openapi.json", "/api/docs"} <= set(paths)
    for path in paths:
        refused(client.get(path), 401, "header.x-functions-key")
        refused(client.get(path, headers={"x-functions-key": KEY + "x"}), 401, "header.x-functions-key")
    for path in (f"/api/experiments/{RUNNING}", f"/api/ui/experiments/{RUNNING}", f"/api/experiments/{RUNNING}/trials"):
        refused(client.get(path), 401, "header.x-functions-key")
        assert client.get(path, params={"code": KEY}).status_code == 200
    assert client.head("/api/health").status_code == 401
    refused(client.post("/api/experiments", json=tiny_spec()), 401, "header.x-functions-key")
    refused(client.delete(f"/api/experiments/{RUNNING}"), 401, "header.x-functions-key")
    assert stored(ctx) == 1 and ctx.store.get_experiment(RUNNING).status is ExperimentStatus.RUNNING


# ------------------------------------------------------------------ HEAD /api/health answers like GET
def test_head_health_answers_like_get_without_a_body(client, ctx, monkeypatch):
    got, head = client.get("/api/health", headers=AUTH), client.head("/api/health", headers=AUTH)
    assert (got.status_code, head.status_code) == (200, 200)
    assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]

    def down(**_: object) -> None:
        raise ConnectionError("store down")

    monkeypatch.setattr(ctx.store, "list_experiments", down)
    head = client.head("/api/health", headers=AUTH)
    assert head.status_code == 503 and head.content == b""


# ------------------------------------------------------------------------ the dashboard's nonce CSP
def _script_policy(response: httpx.Response) -> str:
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    return policy["script-src"]


def test_dashboard_scripts_run_by_nonce_only(client):
    pages = [client.get(f"/api/ui/experiments/{RUNNING}", params={"code": KEY}) for _ in range(2)]
    nonces = []
    for page in pages:
        script_src = _script_policy(page)
        assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
        assert script_src.startswith("'nonce-") and script_src.endswith("'")
        nonce = script_src.removeprefix("'nonce-").removesuffix("'")
        assert len(nonce) >= 16
        assert page.text.count("<script") == page.text.count(f'<script nonce="{nonce}">') == 1
        nonces.append(nonce)
    assert nonces[0] != nonces[1]  # one per response
    index = client.get("/api/ui", params={"code": KEY})
    assert "<script" not in index.text and _script_policy(index) == "'none'"


# ------------------------------------------------------- serve: a key per start, hosted beyond loopback
# Starts `rapids-hpo serve` twice as processes (~35 s under load); the edge's rules are the in-process tests above.
@pytest.mark.slow
def test_serve_makes_a_key_per_start_and_the_cli_finds_it(tmp_path):
    keys = []
    for start in range(2):
        (tmp_path / str(start)).mkdir()
        with served(tmp_path / str(start)) as server:
            url = str(server.base_url)
            key = read_key(url)
            assert key and len(key) >= 32
            path = key_file(url)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            log = (tmp_path / str(start)).glob("serve-*.log")
            assert sum(text.count(key) for text in (p.read_text() for p in log)) >= 1
            assert httpx.get(f"{url}/api/health").status_code == 401
            env = {**os.environ, "RAPIDS_HPO_API_URL": url, "PYTHONPATH": str(ROOT)}
            listed = subprocess.run(
                [sys.executable, "-m", "shared.cli", "list"],
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert listed.returncode == 0, listed.stderr
            logs = list((tmp_path / str(start)).glob("serve-*.log"))
            printed = sum(p.read_text().count(key) for p in logs)
            ui = httpx.get(f"{url}/api/ui", params={"code": key}, headers={"Authorization": "Bearer not-for-logs"})
            assert ui.status_code == 200
            for _ in range(100):  # the line is written as the response ends, just after the client has it
                text = "".join(p.read_text() for p in logs)
                if "GET /api/ui 200" in text:
                    break
                time.sleep(0.05)
            assert re.search(r"GET /api/health 401 \d+\.\dms", text), text
            assert re.search(r"GET /api/experiments 200 \d+\.\dms", text) and "GET /api/ui 200" in text
            assert text.count(key) == printed and "not-for-logs" not in text
            keys.append(key)
        assert not path.exists()  # removed on shutdown
    assert keys[0] != keys[1]


def test_the_access_log_cannot_be_flooded_or_forged_and_times_streams_to_the_end(caplog):
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from shared.access_log import MAX_PATH_CHARS, AccessLog

    inner = FastAPI()

    @inner.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]))

    @inner.get("/boom")
    def boom() -> None:
        raise RuntimeError("no")

    client = TestClient(AccessLog(inner), raise_server_exceptions=False)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="rapids_hpo.access"):
        assert client.get("/stream?code=secret").text == "ab"
        client.get("/boom")
        client.get("/x%0a2026-01-01 GET /forged 200 1.0ms" + "y" * 1000)
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"GET /stream 200 \d+\.\dms", lines[0]) and "secret" not in "".join(lines)
    assert lines[1].startswith("GET /boom 500 ")
    assert "\n" not in lines[2] and "\\n" in lines[2] and len(lines[2]) < MAX_PATH_CHARS + 30


def test_serve_beyond_loopback_switches_hosted_rules_on(tmp_path):
    port = free_port()
    env = {**os.environ, "RAPIDS_HPO_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--host", "0.0.0.0", "--port", str(port), "--no-workers"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            key = read_key(url)
            if key:
                try:
                    if httpx.get(f"{url}/api/health", headers={"x-functions-key": key}).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            if process.poll() is not None:
                raise AssertionError(process.stdout.read() if process.stdout else "serve exited")
            time.sleep(0.1)
        assert key is not None
        answer = httpx.post(f"{url}/api/experiments", json=tiny_spec(), headers={"x-functions-key": key})
        assert answer.status_code == 422, answer.text
        assert [e["loc"] for e in answer.json()["errors"]] == ["compute.backend"]
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = process.stdout.read() if process.stdout else ""
    assert "hosted rules" in output


def test_the_api_docs_run_by_nonce_and_fetch_the_document_with_the_key(client):
    docs = client.get("/api/docs", params={"code": KEY})
    script_src = _script_policy(docs)
    assert "'unsafe-inline'" not in script_src and script_src.startswith("'nonce-")
    nonce = script_src.split()[0].removeprefix("'nonce-").removesuffix("'")
    inline = docs.text.count("<script>") + docs.text.count(f'<script nonce="{nonce}">')
    assert docs.text.count("<script") == inline + docs.text.count("<script src=") and docs.text.count("<script>") == 0
    assert f"url: '/api/openapi.json?code={KEY}'" in docs.text
    assert client.get("/api/openapi.json", params={"code": KEY}).json()["openapi"].startswith("3.")
    hostile = "x'});alert(1);//</script>"
    page = bytes(api_docs(KEY_HOLDER, code=hostile).body).decode()
    assert "url: '/api/openapi.json?code=x%27%7D%29%3Balert%281%29%3B%2F%2F%3C%2Fscript%3E'" in page


def test_the_api_docs_load_swagger_ui_from_this_app_not_a_cdn(client):
    """Offline and under a CSP naming only this origin: every script, style and icon is served here, from
    the fastapi-offline package, with the key passed on (the Functions host requires it on each request)."""
    docs = client.get("/api/docs", params={"code": KEY})
    policy = docs.headers["content-security-policy"]
    assert "http" not in policy and "cdn" not in docs.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert len(sources) == 3 and all(s.startswith("/api/docs/assets/") and s.endswith(f"code={KEY}") for s in sources)
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source
    bundle = client.get("/api/docs/assets/swagger-ui-bundle.js", params={"code": KEY})
    assert bundle.headers["content-type"].startswith("text/javascript") and b"SwaggerUIBundle" in bundle.content
    for name in ("redoc.standalone.js", "..%2Fcore.py", "__init__.py"):
        assert client.get(f"/api/docs/assets/{name}", params={"code": KEY}).status_code == 404
    refused(client.get("/api/docs/assets/swagger-ui.css"), 401, "header.x-functions-key")


@pytest.mark.parametrize(
    ("bound", "host", "trusted"),
    [
        ("fd00::5", "[fd00::5]:7071", True),
        ("[fd00::5]", "[FD00::5]", True),
        ("fd00::5", "[fd00::6]:7071", False),
        ("hpo-box", "HPO-BOX:7071", True),
        ("0.0.0.0", "0.0.0.0:7071", False),  # every interface is no host name
        ("::", "[::]:7071", False),
    ],
)
def test_the_bound_host_in_each_spelling(ctx, bound, host, trusted):
    assert EdgePolicy.of(ctx.settings, bound_host=bound).trusts_host(host) is trusted


def test_the_key_file_is_the_users_alone_and_follows_no_link(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPIDS_HPO_STATE_DIR", str(tmp_path / "state"))
    url = "http://127.0.0.1:7071"
    assert key_file("http://127.0.0.1:7071/api") == key_file(url) != key_file("http://127.0.0.1:7072")
    assert key_file("HTTP://LOCALHOST/") == key_file("http://localhost:80")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    key_file(url).parent.mkdir(parents=True)
    key_file(url).symlink_to(victim)  # planted before serve starts
    (written,) = write_key([url, url], "s3cret")
    assert victim.read_text() == "untouched" and not written.is_symlink()
    assert read_key(url + "/") == "s3cret" and stat.S_IMODE(written.stat().st_mode) == 0o600
    remove_keys([written])
    assert read_key(url) is None
