"""Azure Functions entry point (Python v2 model): bindings only; the logic lives in ``shared``.

- HTTP: the FastAPI app (``shared.api``) behind ``AsgiFunctionApp``: at auth level FUNCTION (the key) in
  ``RAPIDS_HPO_AUTH=key`` mode, ANONYMOUS for the host in ``entra`` mode, where every route checks the
  caller's Entra ID principal and app role itself (``shared.auth``).
- Queue ``experiment-requests``: specs from other services (Event Grid, Logic Apps, scripts).
- Queue ``experiment-requests-trusted``: specs from the one service whose send role is assigned on this queue
  only; its envelope may name the submitter (``submitted_by``), which the shared queue refuses.
- Queue ``experiment-events``: the state machine's internal events.
- Timer: the sweep that re-drives stalled experiments and tears down finished ones' compute.

Heavy SDKs (azure-ai-ml, dask) are imported inside the handlers that need them, not here: cold start.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared.api import create_api
from shared.auth import AuthSettings
from shared.config import QUEUE_EVENTS, QUEUE_REQUESTS, QUEUE_TRUSTED_REQUESTS, Settings
from shared.context import get_context
from shared.handlers import handle_event, sweep, sweep_orphans, take_request_message
from shared.telemetry import host_trace
from shared.telemetry.asgi import HostTraceASGI
from shared.telemetry.setup import configure

TELEMETRY = configure("rapids-hpo-control")
"""Application Insights (Entra ID), OTLP or console as the app settings say, else off: no SDK imported.
Set before the app is built, so FastAPI's own request spans use the same providers."""

SWEEP_SCHEDULE = "0 */5 * * * *"
"""Every five minutes (NCRONTAB, with seconds)."""

AUTH = AuthSettings.from_env()
SETTINGS = Settings.from_env()
"""Read from the environment once, here, the edge (the queue and timer triggers' context reads them too)."""
app = func.AsgiFunctionApp(
    app=HostTraceASGI(
        create_api(settings=SETTINGS, auth=AUTH)
    ),  # a request without a traceparent continues the host's invocation
    http_auth_level=func.AuthLevel.ANONYMOUS if AUTH.mode == "entra" else func.AuthLevel.FUNCTION,
)


@app.function_name("experiment_requests")
@app.queue_trigger(arg_name="message", queue_name=QUEUE_REQUESTS, connection="AzureWebJobsStorage")
def experiment_requests(message: func.QueueMessage, context: func.Context = None) -> None:
    """A spec sent by another service. An invalid one is final: recorded FAILED when it names an id, moved
    to the poison queue once, not retried; a transient failure (storage) raises, and the host retries it.
    (``context``: the host's invocation, for its trace context; the worker always passes it.)"""
    with host_trace(context):
        record = take_request_message(get_context(), message.get_body(), message_id=message.id)
        if record is not None:
            logging.info("request %s -> experiment %s (%s)", message.id, record.id, record.status)


@app.function_name("experiment_requests_trusted")
@app.queue_trigger(arg_name="message", queue_name=QUEUE_TRUSTED_REQUESTS, connection="AzureWebJobsStorage")
def experiment_requests_trusted(message: func.QueueMessage) -> None:
    """A spec from the trusted sender: as ``experiment_requests``, and the envelope's ``submitted_by`` is
    recorded as the experiment's owner (the queue's send role vouches for the sender)."""
    record = take_request_message(
        get_context(),
        message.get_body(),
        message_id=message.id,
        trusted_sender=True,
        queue_name=QUEUE_TRUSTED_REQUESTS,
    )
    if record is not None:
        logging.info("trusted request %s -> experiment %s (%s)", message.id, record.id, record.status)


@app.function_name("experiment_events")
@app.queue_trigger(arg_name="message", queue_name=QUEUE_EVENTS, connection="AzureWebJobsStorage")
def experiment_events(message: func.QueueMessage, context: func.Context = None) -> None:
    """One state-machine step: a span of its experiment's trace, linked to the host's invocation."""
    with host_trace(context):
        outcome = handle_event(get_context(), message.get_body().decode("utf-8"))
        logging.info("event %s: %s", message.id, outcome)


@app.function_name("sweep")
@app.timer_trigger(arg_name="timer", schedule=SWEEP_SCHEDULE, run_on_startup=False, use_monitor=True)
def sweep_timer(timer: func.TimerRequest, context: func.Context = None) -> None:
    """Re-drive experiments whose events were lost; tear down compute of finished ones."""
    with host_trace(context):
        report = sweep(get_context())
        logging.info("sweep: %s", report)
        deleted = sweep_orphans(get_context())
        if deleted:
            logging.warning("sweep deleted orphaned Azure resources: %s", deleted)
