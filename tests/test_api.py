"""Every HTTP route through FastAPI's TestClient, with the local adapters behind it."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import yaml
from fastapi.testclient import TestClient

from shared.api import MAX_BODY_BYTES, create_api
from shared.config import Settings
from shared.context import set_context
from shared.handlers import request_cancel
from shared.records import ExperimentStatus, TrialRecord, TrialState
from tests.control_plane import local_context, tiny_spec

YAML = {"content-type": "application/yaml"}
"""A document's type (tests/test_web_edge.py: any other is 415)."""


@pytest.fixture
def ctx(tmp_path):
    context = local_context(tmp_path)
    set_context(context)
    yield context
    set_context(None)


@pytest.fixture
def client(ctx):
    return TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost")


def post(client, document, **headers):
    return client.post(
        "/api/experiments", content=json.dumps(document), headers={"content-type": "application/json", **headers}
    )


def test_post_accepts_and_answers_202_with_location_and_retry_after(client, ctx):
    response = post(client, tiny_spec())
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/api/experiments/{body['id']}"
    assert int(response.headers["retry-after"]) > 0
    assert body["status"] == "SUBMITTED" and body["progress"] == {"done": 0, "total": 3}
    assert ctx.store.get_experiment(body["id"]).name == "tiny-flights"
    assert ctx.events.count() == 1  # the first state-machine event is queued


def test_post_accepts_yaml(client):
    response = client.post(
        "/api/experiments", content=yaml.safe_dump(tiny_spec()), headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 202


def test_idempotency_key_returns_the_same_experiment(client, ctx):
    first = post(client, tiny_spec(), **{"Idempotency-Key": "abc"})
    second = post(client, tiny_spec(), **{"Idempotency-Key": "abc"})
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(ctx.store.list_experiments()[0]) == 1


def test_invalid_spec_is_422_naming_each_field(client, ctx):
    document = tiny_spec(limits={"max_total_trials": 2, "max_concurrent_trials": 5})
    document["search_space"]["max_dpth"] = {"type": "choice", "values": [3]}
    response = post(client, document)
    assert response.status_code == 422
    locs = {e["loc"] for e in response.json()["errors"]}
    assert "search_space.max_dpth" in locs and any(loc.startswith("limits") for loc in locs)
    assert ctx.store.list_experiments()[0] == []  # nothing stored


@pytest.mark.parametrize("body", [b"{not json", b"name: [unclosed", b"\xff\xfe"])
def test_unparseable_body_is_422(client, body):
    response = client.post("/api/experiments", headers=YAML, content=body)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_empty_body_is_422(client):
    assert client.post("/api/experiments", headers=YAML, content=b"  ").status_code == 422


def test_too_large_body_is_413(client):
    response = client.post("/api/experiments", headers=YAML, content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_get_unknown_experiment_is_404(client):
    response = client.get("/api/experiments/exp-missing")
    assert response.status_code == 404 and "exp-missing" in response.json()["detail"]
    assert client.get("/api/experiments/exp-missing/trials").status_code == 404
    assert client.get("/api/experiments/exp-missing/model").status_code == 404
    assert client.delete("/api/experiments/exp-missing").status_code == 404


def test_get_shows_status_progress_best_and_timings(client, ctx):
    experiment_id = post(client, tiny_spec()).json()["id"]
    response = client.get(f"/api/experiments/{experiment_id}")
    assert response.status_code == 200 and "retry-after" in response.headers
    body = response.json()
    assert body["timings"]["created_at"] and body["best"] is None and body["error"] is None
    assert body["links"]["trials"] == f"/api/experiments/{experiment_id}/trials"


def test_list_filters_by_status_and_pages(client, ctx):
    ids = [post(client, tiny_spec(name=f"e{i}")).json()["id"] for i in range(5)]
    request_cancel(ctx, ids[0])
    page = client.get("/api/experiments", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_page_token"]
    seen = [i["id"] for i in page["items"]]
    while page["next_page_token"]:
        page = client.get("/api/experiments", params={"limit": 2, "page_token": page["next_page_token"]}).json()
        seen += [i["id"] for i in page["items"]]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    cancelling = client.get("/api/experiments", params={"status": "CANCELLING"}).json()["items"]
    assert [i["id"] for i in cancelling] == [ids[0]]
    assert client.get("/api/experiments", params={"status": "BOGUS"}).status_code == 422
    assert client.get("/api/experiments", params={"limit": 0}).status_code == 422


def test_trials_and_model_routes(client, ctx):
    experiment_id = post(client, tiny_spec()).json()["id"]
    assert client.get(f"/api/experiments/{experiment_id}/trials").json() == []
    ctx.store.put_trial(
        TrialRecord(
            experiment_id=experiment_id, number=0, params={"max_depth": 4}, state=TrialState.COMPLETED, value=0.8
        )
    )
    trials = client.get(f"/api/experiments/{experiment_id}/trials").json()
    assert trials[0]["value"] == 0.8 and trials[0]["state"] == "COMPLETED"
    missing = client.get(f"/api/experiments/{experiment_id}/model")
    assert missing.status_code == 404 and "no model yet" in missing.json()["detail"]
    ctx.store.put_artifact(experiment_id, "model/model.json", b'{"trees": []}')
    ctx.store.put_artifact(experiment_id, "model/metrics.json", b'{"accuracy": 0.8}')
    response = client.get(f"/api/experiments/{experiment_id}/model")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["metrics.json", "model.json"]
        assert archive.read("model.json") == b'{"trees": []}'


def test_trials_come_in_pages_with_folds_on_request(client, ctx):
    """Issue 20: one GET /trials answered 149 MiB. Pages are small by default (TRIALS_PAGE), the next one
    is named (Link, X-Next-After), fold detail comes with folds=true, and the CLI's reader follows pages."""
    from shared.api import TRIALS_PAGE
    from shared.cli.remote import all_trials
    from shared.records import FoldResult

    experiment_id = post(client, tiny_spec(limits={"max_total_trials": 250, "max_concurrent_trials": 2})).json()["id"]
    fold = FoldResult(step=1, scores={"accuracy": 0.8})
    for number in range(TRIALS_PAGE + 30):
        trial = TrialRecord(experiment_id=experiment_id, number=number, params={}, state="COMPLETED", folds=[fold])
        ctx.store.put_trial(trial)
    base = f"/api/experiments/{experiment_id}/trials"
    first = client.get(base)
    assert [t["number"] for t in first.json()] == list(range(TRIALS_PAGE))
    assert all(t["folds"] == [] for t in first.json())
    after = first.headers["X-Next-After"]
    assert after == str(TRIALS_PAGE - 1) and f"after={after}" in first.headers["Link"]
    rest = client.get(base, params={"after": after, "folds": "true"})
    assert [t["number"] for t in rest.json()] == list(range(TRIALS_PAGE, TRIALS_PAGE + 30))
    assert rest.json()[0]["folds"][0]["scores"] == {"accuracy": 0.8} and "X-Next-After" not in rest.headers
    assert client.get(base, params={"limit": 1001}).status_code == 422
    numbers = [t["number"] for t in all_trials(client, f"/api/experiments/{experiment_id}", page=50)]
    assert numbers == list(range(TRIALS_PAGE + 30))


def test_delete_cancels_and_finished_experiments_conflict(client, ctx):
    experiment_id = post(client, tiny_spec()).json()["id"]
    response = client.delete(f"/api/experiments/{experiment_id}")
    assert response.status_code == 202 and response.json()["status"] == "CANCELLING"
    assert client.delete(f"/api/experiments/{experiment_id}").status_code == 202  # idempotent
    record = ctx.store.get_experiment(experiment_id)
    ctx.store.update_experiment(record.model_copy(update={"status": ExperimentStatus.COMPLETED}))
    conflict = client.delete(f"/api/experiments/{experiment_id}")
    assert conflict.status_code == 409 and "COMPLETED" in conflict.json()["detail"]


def test_health_and_openapi(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["storage"] == "local"
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    assert {
        "/api/experiments",
        "/api/experiments/{experiment_id}",
        "/api/experiments/{experiment_id}/trials",
        "/api/experiments/{experiment_id}/model",
        "/api/health",
    } <= set(paths)
    assert "delete" in paths["/api/experiments/{experiment_id}"]


def test_a_blocked_store_call_does_not_block_other_requests(ctx):
    """Handlers run in the thread pool (issue 9): while one request waits on the store, others are served."""
    import threading
    import time

    import httpx
    import uvicorn

    from shared.api import create_api as make_api

    release, entered = threading.Event(), threading.Event()
    original = ctx.store.get_experiment

    def slow_get(experiment_id):
        if experiment_id == "exp-slow":
            entered.set()
            release.wait(30)
        return original(experiment_id)

    ctx.store.get_experiment = slow_get
    server = uvicorn.Server(uvicorn.Config(make_api(context=ctx), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        blocked = threading.Thread(target=httpx.get, args=(f"{base}/api/experiments/exp-slow",), kwargs={"timeout": 30})
        blocked.start()
        assert entered.wait(10)
        for _ in range(3):  # served while the first request still holds its thread
            assert httpx.post(f"{base}/api/experiments", json=tiny_spec(), timeout=5).status_code == 202
            assert httpx.get(f"{base}/api/health", timeout=5).status_code == 200
        assert blocked.is_alive()
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)


def test_an_unreachable_store_is_503_with_retry_after(ctx):
    from azure.core.exceptions import ServiceResponseError

    def unreachable(experiment_id):
        raise ServiceResponseError("Connection aborted: reset by peer")

    ctx.store.get_experiment = unreachable
    response = TestClient(create_api(context=ctx), base_url="http://localhost", raise_server_exceptions=False).get(
        "/api/experiments/exp-1"
    )
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "storage unavailable" in response.json()["detail"]


def test_the_context_dependency_builds_the_context_off_the_loop_once_then_returns_it_on_the_loop(tmp_path, monkeypatch):
    import asyncio
    import threading

    from shared import context as context_module
    from shared.api import api_context

    monkeypatch.setenv("RAPIDS_HPO_HOME", str(tmp_path))
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    set_context(None)
    built_in: list[str] = []
    real = context_module.Context.from_settings

    def from_settings(settings):
        built_in.append(threading.current_thread().name)
        return real(settings)

    monkeypatch.setattr(context_module.Context, "from_settings", from_settings)
    try:
        first = asyncio.run(api_context())
        again = asyncio.run(api_context())
    finally:
        set_context(None)

    assert first is again and first.settings.home == tmp_path
    assert len(built_in) == 1 and built_in[0] != threading.main_thread().name


def test_the_experiment_says_what_the_data_check_learned_once_it_passed(client, ctx):
    """``data_check`` in GET /experiments/{id}: absent before the check ran, the report after, and absent
    again for a file the compute wrote that is no report (it is read as untrusted, never a 500)."""
    from shared.config import DATA_CHECK_ARTIFACT

    experiment_id = post(client, tiny_spec()).json()["id"]
    assert client.get(f"/api/experiments/{experiment_id}").json()["data_check"] is None
    check = {"task": "binary", "task_reason": "inferred: 2 distinct values", "classes": 2, "rows": 500, "features": 9}
    ctx.store.put_artifact(experiment_id, DATA_CHECK_ARTIFACT, json.dumps(check).encode())
    shown = client.get(f"/api/experiments/{experiment_id}").json()["data_check"]
    assert shown == {**check, "rows_dropped_missing_target": 0}
    listed = client.get("/api/experiments").json()["items"][0]
    assert listed["id"] == experiment_id and listed["data_check"] is None  # one read per page item: not listed
    for bad in (b"{not json", json.dumps({**check, "rows": -1}).encode(), json.dumps({"task": "x" * 10**5}).encode()):
        ctx.store.put_artifact(experiment_id, DATA_CHECK_ARTIFACT, bad)
        answer = client.get(f"/api/experiments/{experiment_id}")
        assert answer.status_code == 200 and answer.json()["data_check"] is None
