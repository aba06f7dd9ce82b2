"""``function_app.py`` driven the way the Functions host drives it: bindings from ``get_functions()``,
triggers called through ``get_user_function()`` with ``azure.functions`` request/message objects."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import azure.functions as func
import pytest

import function_app
from shared.config import QUEUE_EVENTS, QUEUE_REQUESTS, QUEUE_TRUSTED_REQUESTS
from shared.context import set_context
from shared.queues import poison_queue_name
from shared.records import ExperimentStatus
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend

FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}  # once per app object


def bindings(name: str) -> list[dict]:
    return json.loads(FUNCTIONS[name].get_function_json())["bindings"]


@pytest.fixture
def ctx(tmp_path):
    context = local_context(tmp_path)
    context.backends["local"] = ScriptedBackend()
    set_context(context)
    yield context
    set_context(None)


def host_context() -> SimpleNamespace:
    return SimpleNamespace(
        invocation_id="test-invocation",
        function_name="http_app_func",
        function_directory=".",
        trace_context=None,
        retry_context=None,
        thread_local_storage=SimpleNamespace(invocation_id="test-invocation"),
    )


def call_http(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> func.HttpResponse:
    request = func.HttpRequest(method=method, url=f"http://localhost{path}", body=body, headers=headers or {})
    handler = FUNCTIONS["http_app_func"].get_user_function()
    return asyncio.run(handler(request, host_context()))


def test_bindings_are_what_the_host_expects():
    (http,) = [b for b in bindings("http_app_func") if b["type"] == "httpTrigger"]
    assert http["authLevel"] == "FUNCTION"
    (requests,) = bindings("experiment_requests")
    assert (requests["type"], requests["queueName"], requests["connection"]) == (
        "queueTrigger",
        QUEUE_REQUESTS,
        "AzureWebJobsStorage",
    )
    (trusted,) = bindings("experiment_requests_trusted")
    assert (trusted["type"], trusted["queueName"]) == ("queueTrigger", QUEUE_TRUSTED_REQUESTS)
    (events,) = bindings("experiment_events")
    assert (events["type"], events["queueName"]) == ("queueTrigger", QUEUE_EVENTS)
    (timer,) = bindings("sweep")
    assert timer["type"] == "timerTrigger" and timer["schedule"] == function_app.SWEEP_SCHEDULE


def test_http_trigger_serves_the_api(ctx):
    response = call_http(
        "POST", "/api/experiments", json.dumps(tiny_spec()).encode(), {"content-type": "application/json"}
    )
    assert response.status_code == 202
    experiment_id = json.loads(response.get_body())["id"]
    assert response.headers["location"] == f"/api/experiments/{experiment_id}"
    status = call_http("GET", f"/api/experiments/{experiment_id}")
    assert status.status_code == 200 and json.loads(status.get_body())["status"] == "SUBMITTED"
    bad = call_http("POST", "/api/experiments", b"{}", {"content-type": "application/json"})
    assert bad.status_code == 422


def test_queue_triggers_drive_an_experiment_to_completion(ctx):
    request = FUNCTIONS["experiment_requests"].get_user_function()
    events = FUNCTIONS["experiment_events"].get_user_function()
    request(func.QueueMessage(id="msg-1", body=json.dumps(tiny_spec()).encode()))
    (record,), _ = ctx.store.list_experiments()
    delivered = 0
    while ctx.events.count() and delivered < 20:
        (message,) = ctx.events.receive(1, 30)
        if ctx.store.get_experiment(record.id).status is ExperimentStatus.RUNNING:
            from shared.records import TrialRecord, TrialState

            ctx.store.put_trial(
                TrialRecord(experiment_id=record.id, number=0, params={}, state=TrialState.COMPLETED, value=0.9)
            )
        events(func.QueueMessage(id=message.id, body=message.body.encode()))
        ctx.events.delete(message)
        delivered += 1
    final = ctx.store.get_experiment(record.id)
    assert final.status is ExperimentStatus.COMPLETED and final.torn_down


def test_request_trigger_dead_letters_bad_input_once_instead_of_five_retries(ctx):
    """Issue 20: an invalid request can never succeed, so the trigger records it FAILED, moves it to the
    poison queue itself and returns (the host deletes it): no four more deliveries failing alike."""
    request = FUNCTIONS["experiment_requests"].get_user_function()
    body = json.dumps({"id": "exp-x", "spec": {"name": "x"}})
    assert request(func.QueueMessage(id="msg-2", body=body.encode())) is None  # not raised: not retried
    assert ctx.store.get_experiment("exp-x").status is ExperimentStatus.FAILED
    [poisoned] = ctx.queues.queue(poison_queue_name(QUEUE_REQUESTS)).receive(5, 30)
    assert poisoned.body == body


def test_the_trusted_senders_queue_records_whom_the_envelope_names_and_the_shared_one_refuses_it(ctx):
    """The trusted queue's trigger records ``submitted_by`` as the owner; the same envelope on the shared
    queue is refused there (FAILED, dead-lettered to that queue's poison queue), and a bad one on the trusted
    queue goes to the trusted queue's own poison queue."""
    named = {"kind": "service", "object_id": "0b6c51a2-4b2d-4b61-9d44-5a1b8c7a6f10", "app_id": None, "name": "adf"}
    named["tenant_id"] = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    trusted = FUNCTIONS["experiment_requests_trusted"].get_user_function()
    envelope = {"id": "exp-trusted-1", "spec": tiny_spec(), "submitted_by": named}
    trusted(func.QueueMessage(id="msg-t1", body=json.dumps(envelope).encode()))
    record = ctx.store.get_experiment("exp-trusted-1")
    assert record.submitted_by is not None and record.submitted_by.object_id == named["object_id"]
    shared_queue = FUNCTIONS["experiment_requests"].get_user_function()
    shared_queue(func.QueueMessage(id="msg-t2", body=json.dumps({**envelope, "id": "exp-trusted-2"}).encode()))
    assert ctx.store.get_experiment("exp-trusted-2").status is ExperimentStatus.FAILED
    assert len(ctx.queues.queue(poison_queue_name(QUEUE_REQUESTS)).receive(5, 30)) == 1
    trusted(func.QueueMessage(id="msg-t3", body=b'{"id": "exp-trusted-3", "spec": {"name": "x"}}'))
    [poisoned] = ctx.queues.queue(poison_queue_name(QUEUE_TRUSTED_REQUESTS)).receive(5, 30)
    assert "exp-trusted-3" in poisoned.body


def test_timer_trigger_runs_the_sweep(ctx):
    timer = FUNCTIONS["sweep"].get_user_function()
    request = FUNCTIONS["experiment_requests"].get_user_function()
    request(func.QueueMessage(id="msg-3", body=json.dumps(tiny_spec()).encode()))
    (message,) = ctx.events.receive(1, 30)
    ctx.events.delete(message)  # lost
    ctx.settings = ctx.settings.__class__(**{**ctx.settings.__dict__, "stall_seconds": 0})
    timer(SimpleNamespace(past_due=False))
    assert ctx.events.count() == 1  # re-driven
