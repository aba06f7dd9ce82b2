"""Through Azure's Python worker (tests/functions_host.py): with ``PYTHON_ENABLE_OPENTELEMETRY`` the worker
attaches the trace context the host sends with each invocation, so an experiment submitted from the request
queue or over HTTP starts its trace under the host's invocation span; a step, whose host invocation is a trace
of its own, joins the experiment's trace (its message's traceparent) and links to the host's span. The app's
spans leave the worker process over OTLP (the real exporter) for a local receiver."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient, QueueMessage

from shared.config import QUEUE_EVENTS
from tests.functions_host import ROOT, FunctionsHost, deploy_package
from tests.otlp_receiver import OtlpReceiver
from tests.test_functions_worker import app_settings, azureml_spec, b64, require_worker

pytestmark = [pytest.mark.azurite]


def _message_of(queue: QueueClient, experiment_id: str, timeout_s: float = 30.0) -> QueueMessage:
    """The first message on ``queue`` for ``experiment_id``, past any that earlier tests left on the session's
    Azurite (over 32 of them hid it when only the first batch was read)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for message in queue.receive_messages(messages_per_page=32, visibility_timeout=60):
            with contextlib.suppress(ValueError, AttributeError):  # another test's message, in another shape
                if json.loads(base64.b64decode(message.content)).get("experiment_id") == experiment_id:
                    return message
        time.sleep(0.2)
    raise AssertionError(f"no message for {experiment_id} on {queue.queue_name} within {timeout_s} s")


REQUEST_INVOCATION = "00-" + "a1" * 16 + "-" + "b2" * 8 + "-01"
STEP_INVOCATION = "00-" + "c3" * 16 + "-" + "d4" * 8 + "-01"
CALLER = "00-" + "e5" * 16 + "-" + "f6" * 8 + "-01"
"""A W3C-aware caller's span (a client, API Management): its ``traceparent`` header reaches FastAPI."""
HTTP_INVOCATION = "00-" + "17" * 16 + "-" + "28" * 8 + "-01"
"""The host's span for an HTTP request that came without a ``traceparent`` (a browser, curl)."""


def wait_for(receiver: OtlpReceiver, name: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [s for s in receiver.spans if s.name == name]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no span {name!r}; got {sorted({s.name for s in receiver.spans})}")


def test_the_worker_gives_each_invocation_the_hosts_trace_and_steps_join_the_experiments(
    azurite: str, tmp_path: Path
) -> None:
    require_worker()
    receiver = OtlpReceiver().start()
    settings = {
        **app_settings(azurite, tmp_path / "home"),
        "PYTHON_ENABLE_OPENTELEMETRY": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    events = QueueClient.from_connection_string(azurite, QUEUE_EVENTS)
    try:
        with FunctionsHost(deploy_package(ROOT, tmp_path / "wwwroot"), settings) as host:
            envelope = {"id": "exp-otel-worker", "spec": azureml_spec(name="traced")}
            host.queue("experiment_requests", b64(envelope), traceparent=REQUEST_INVOCATION)
            # The PROVISION message the submit sent, as stored; delivered again as stale (seq 999) so the step
            # runs without AzureML, under a host invocation of another trace.
            provision = _message_of(events, "exp-otel-worker")
            body = json.loads(base64.b64decode(provision.content))
            body["seq"] = 999
            host.queue("experiment_events", b64(body), traceparent=STEP_INVOCATION)
            answer = host.http(
                "POST",
                "/api/experiments",
                json.dumps(azureml_spec(name="traced-http")),
                {"content-type": "application/json", "traceparent": CALLER},
            )
            assert answer.status == 202, answer.body
            plain = host.http(
                "POST",
                "/api/experiments",
                json.dumps(azureml_spec(name="traced-host")),
                {"content-type": "application/json"},
                traceparent=HTTP_INVOCATION,
            )
            assert plain.status == 202, plain.body
            wait_for(receiver, "step provision")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                any(s.parent_id == parent for s in receiver.spans) for parent in ("f6" * 8, "28" * 8)
            ):
                time.sleep(0.2)
            wait_for(receiver, "submit experiment")
    finally:
        receiver.stop()

    spans = receiver.spans
    request = next(s for s in spans if s.name == "experiment request")
    assert (request.trace_id, request.parent_id) == ("a1" * 16, "b2" * 8)  # under the host's invocation
    submit = next(s for s in spans if s.name == "submit experiment" and s.trace_id == "a1" * 16)
    assert submit.parent_id == request.span_id
    assert body["traceparent"] == f"00-{submit.trace_id}-{submit.span_id}-01"  # the message carries it
    step = next(s for s in spans if s.name == "step provision")
    assert (step.trace_id, step.parent_id) == (submit.trace_id, submit.span_id)  # the experiment's trace
    assert ("c3" * 16, "d4" * 8) in step.links  # and the host's invocation, linked
    assert step.attributes["rapids_hpo.outcome"] == "stale"
    # Over HTTP: FastAPI's request span continues the caller's traceparent header (the submit under it).
    http_root = next(s for s in spans if s.trace_id == "e5" * 16 and s.parent_id == "f6" * 8)
    assert http_root.name.startswith("POST")
    http_submit = next(s for s in spans if s.name == "submit experiment" and s.trace_id == "e5" * 16)
    assert http_submit.parent_id in {s.span_id for s in spans if s.trace_id == "e5" * 16}
    # Without a traceparent header: the request span is a child of the host's invocation, not a new trace.
    under_host = next(s for s in spans if s.trace_id == "17" * 16 and s.parent_id == "28" * 8)
    assert under_host.name.startswith("POST")
    assert any(s.name == "submit experiment" and s.trace_id == "17" * 16 for s in spans)
