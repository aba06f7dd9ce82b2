"""The web edge from a real browser (issue 20): pages of another origin attack ``rapids-hpo serve``.

Debian's chromium (Playwright) opens a page on a second local HTTP server, ``http://attacker.test:PORT``
(``--host-resolver-rules`` maps the name to 127.0.0.1), which tries a form POST with ``text/plain``, a
``no-cors`` ``text/plain`` fetch, a JSON fetch (preflighted) and a cancel (DELETE); then a page whose
origin is ``http://attacker.test:SERVER_PORT`` while the name resolves to the server (the state a DNS
rebinding reaches) tries the same-origin requests that allows. Each attack knows the key (``?code=``),
as if it had leaked: the origin, content-type and host rules must hold on their own. The server must
store no experiment and cancel nothing.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.records import ExperimentStatus
from tests.control_plane import local_context, tiny_spec
from tests.dashboard_data import make_experiment
from tests.test_dashboard_browser import ARGS, CHROMIUM
from tests.test_end_to_end import free_port, served

RUNNING = "exp-20261204110000-dddddd"
ATTACKER = "attacker.test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev requirement")

ATTACKS = """
async (target) => {
  const spec = JSON.stringify(SPEC);
  const outcome = async (request) => {
    try { const r = await request(); return r.type === 'opaque' ? 'opaque' : r.status; }
    catch (e) { return 'blocked'; }
  };
  const form = document.createElement('form');  // the classic CSRF: a form needs no script's permission
  form.method = 'POST'; form.enctype = 'text/plain'; form.target = 'sink';
  form.action = target + '/api/experiments?code=' + KEY;
  const field = document.createElement('input');
  field.name = spec.slice(0, -1) + ',"x":"'; field.value = '"}';  // name=value is the JSON document
  form.appendChild(field); document.body.appendChild(form);
  const frame = document.createElement('iframe'); frame.name = 'sink'; document.body.appendChild(frame);
  form.submit();
  return {
    no_cors_text: await outcome(() => fetch(target + '/api/experiments?code=' + KEY,
      {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body: spec})),
    cors_json: await outcome(() => fetch(target + '/api/experiments?code=' + KEY,
      {method: 'POST', headers: {'Content-Type': 'application/json'}, body: spec})),
    cancel: await outcome(() => fetch(target + '/api/experiments/RUNNING?code=' + KEY, {method: 'DELETE'})),
  };
}
"""
REBOUND = """
async () => {
  const spec = JSON.stringify(SPEC);
  const status = async (request) => { try { return (await request()).status; } catch (e) { return 'blocked: ' + e; } };
  return {
    submit: await status(() => fetch('/api/experiments?code=' + KEY,
      {method: 'POST', headers: {'Content-Type': 'application/json'}, body: spec})),
    cancel: await status(() => fetch('/api/experiments/RUNNING?code=' + KEY, {method: 'DELETE'})),
    read: await status(() => fetch('/api/experiments?code=' + KEY)),
  };
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[int, str, object, object]]:
    """``serve`` with one running experiment; yields its port, its key, the context and a client."""
    home = tmp_path_factory.mktemp("edge")
    ctx = local_context(home)
    make_experiment(ctx.store, RUNNING, trials=3, running=1, status=ExperimentStatus.RUNNING)
    with served(home) as client:
        yield client.base_url.port, client.headers["x-functions-key"], ctx, client


@pytest.fixture(scope="module")
def attacker_site() -> Iterator[int]:
    """A second local HTTP server (another origin) with an empty page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>cute cats</title><p>nothing to see"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield site.server_address[1]
    site.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        rules = f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1"
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, rules])
        yield instance
        instance.close()


def script(template: str, key: str) -> str:
    return template.replace("SPEC", json.dumps(tiny_spec())).replace("KEY", json.dumps(key)).replace("RUNNING", RUNNING)


def test_pages_of_another_origin_cannot_submit_cancel_or_rebind(server, attacker_site, browser):
    port, key, ctx, client = server
    context = browser.new_context()
    page = context.new_page()
    answers: dict[str, list[int]] = {}
    page.on("response", lambda r: answers.setdefault(f"{r.request.method} {r.url.split('?')[0]}", []).append(r.status))

    # 1. another origin (cross-site) on a second local server
    page.goto(f"http://{ATTACKER}:{attacker_site}/")
    target = f"http://127.0.0.1:{port}"
    result = page.evaluate(script(ATTACKS, key), target)
    page.wait_for_timeout(500)  # the form's answer lands in its frame
    assert result == {"no_cors_text": "opaque", "cors_json": "blocked", "cancel": "blocked"}
    # what the server answered to the requests the browser did send: the origin rule refused them
    assert answers[f"POST {target}/api/experiments"] == [403, 403]  # the form and the no-cors fetch
    # the JSON POST and the DELETE never left the browser: their preflight got no CORS grant (a DELETE
    # cannot be sent no-cors); tests/test_web_edge.py sends them as a browser would have, and gets 403
    assert f"DELETE {target}/api/experiments/{RUNNING}" not in answers

    # 2. DNS rebinding: the attacker's name now resolves to the server; same-origin requests follow
    rebound = f"http://{ATTACKER}:{port}"
    landing = page.goto(f"{rebound}/api/ui?code={key}")  # even the dashboard is refused under that name
    assert landing is not None and landing.status == 421
    assert page.evaluate(script(REBOUND, key)) == {"submit": 421, "cancel": 421, "read": 421}
    context.close()

    listed = client.get("/api/experiments").json()["items"]
    assert [item["id"] for item in listed] == [RUNNING]
    assert ctx.store.get_experiment(RUNNING).status is ExperimentStatus.RUNNING
