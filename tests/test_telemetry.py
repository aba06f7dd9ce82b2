"""shared.telemetry: what it costs off, how it picks exporters, how it treats a traceparent that crossed in,
and that a stuck exporter never holds up a step. The whole trace of a real experiment is in
test_telemetry_end_to_end.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.handlers import handle_event, submit_experiment
from shared.records import ExperimentEvent, ExperimentRecord
from shared.runner import LocalHost
from shared.spec import load_spec
from shared.telemetry import api, parse_traceparent, trace_id_of
from shared.telemetry import metrics as names
from shared.telemetry.links import transaction_link
from shared.telemetry.setup import compute_environment, entra_credential, telemetry_mode
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend
from tests.otlp_receiver import OtlpReceiver
from tests.telemetry_fixtures import otel  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# ------------------------------------------------------------------------------- the traceparent
def test_a_valid_traceparent_is_kept_and_its_trace_id_read():
    assert parse_traceparent(VALID) == VALID
    assert trace_id_of(VALID) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a version we do not parse
        VALID.upper(),
        VALID + "-extra",
        " " + VALID[:-1],
        VALID.replace("-", "_"),
        "00-4bf92f3577b34da6a3ce929d0e0e473\u0661-00f067aa0ba902b7-01",  # a non-ASCII digit
        "A" * 100_000,
        42,
        None,
        ["00"],
        {"traceparent": VALID},
    ],
)
def test_a_hostile_traceparent_is_dropped_from_an_event_and_a_record(hostile):
    body = json.dumps({"type": "poll", "experiment_id": "exp-1", "seq": 3, "traceparent": hostile})
    event = ExperimentEvent.model_validate_json(body)
    assert event.traceparent is None and event.seq == 3  # the event itself stands
    record = ExperimentRecord(id="exp-1", name="n", spec={}, traceparent=hostile)
    assert record.traceparent is None


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.hex()), st.integers(), st.none()))
def test_the_parser_never_raises_and_accepts_only_the_strict_form(value):
    parsed = parse_traceparent(value)
    if parsed is not None:
        assert parsed == value and len(value) == 55 and value.startswith("00-") and value == value.lower()


@given(st.from_regex(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fullmatch=True))
def test_every_well_formed_traceparent_with_nonzero_ids_is_accepted(value):
    nonzero = value[3:35] != "0" * 32 and value[36:52] != "0" * 16
    assert (parse_traceparent(value) == value) is nonzero


def test_a_step_whose_message_carries_a_hostile_traceparent_runs_as_a_new_trace(tmp_path, otel):  # noqa: F811
    ctx = local_context(tmp_path)
    ctx.backends["local"] = ScriptedBackend()
    submit_experiment(ctx, load_spec(tiny_spec()))
    message = ctx.events.receive(1, 30)[0]
    body = json.loads(message.body)
    body["traceparent"] = "00-" + "f" * 32 + "-" + "g" * 16 + "-01"
    assert handle_event(ctx, json.dumps(body)) == "provisioned"
    step = next(s for s in otel.spans.get_finished_spans() if s.name == "step provision")
    assert step.parent is None  # not an error, not a made-up parent: a trace of its own


# ------------------------------------------------------------------------------- off costs nothing
def test_off_no_opentelemetry_sdk_is_imported_by_the_app_or_a_step(tmp_path):
    script = f"""
import sys, json
import function_app
from shared.handlers import handle_event, submit_experiment
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend
ctx = local_context(__import__('pathlib').Path({str(tmp_path)!r}))
ctx.backends["local"] = ScriptedBackend()
record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
outcome = handle_event(ctx, ctx.events.receive(1, 30)[0].body)
loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "azure.monitor",
                                                   "azure.core.tracing.ext"))]
print(json.dumps({{"telemetry": function_app.TELEMETRY, "outcome": outcome, "loaded": loaded}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"telemetry": "off", "outcome": "provisioned", "loaded": []}


def test_off_every_hook_is_a_no_op():
    api.deactivate()
    with api.span("x", parent=VALID) as span:
        assert span is None
    api.count(names.SUBMITTED)
    api.record(names.QUEUE_LAG, 1.0)
    assert api.current_traceparent() is None
    assert api.traceparent_for(VALID) == VALID  # a stored trace is passed on even by an instance with it off
    assert api.traceparent_for("junk") is None


# ------------------------------------------------------------------------------- choosing exporters
@pytest.mark.parametrize(
    ("environ", "mode"),
    [
        ({}, "off"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "otel"),
        ({"OTEL_TRACES_EXPORTER": "none"}, "off"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otel"),
        ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}, "azure"),
        ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x", "OTEL_TRACES_EXPORTER": "console"}, "azure"),
        ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x", "OTEL_SDK_DISABLED": "true"}, "off"),
    ],
)
def test_the_environment_picks_the_exporters(environ, mode):
    assert telemetry_mode(environ) == mode


def test_entra_authentication_as_infra_configures_it():
    from azure.identity import ManagedIdentityCredential

    assert entra_credential({}) is None  # the key in the connection string, where local auth is allowed
    assert isinstance(
        entra_credential({"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD"}), ManagedIdentityCredential
    )
    user_assigned = entra_credential({"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD;ClientId=abc"})
    assert isinstance(user_assigned, ManagedIdentityCredential)
    assert entra_credential({"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "junk;;=="}) is None


def test_the_compute_gets_the_trace_and_the_exporter_settings_and_nothing_else():
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "x",
        "HOME": "/h",
    }
    assert compute_environment(VALID, environ) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "x",
        "TRACEPARENT": VALID,
    }
    assert "TRACEPARENT" not in compute_environment("00-bad", environ)


def test_the_transaction_link_needs_a_component_and_a_trace():
    component = (
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg"
        "/providers/Microsoft.Insights/components/appi-x"
    )
    link = transaction_link(VALID, component)
    assert link and link.startswith("https://portal.azure.com/") and "4bf92f3577b34da6a3ce929d0e0e4736" in link
    assert transaction_link(None, component) is None
    assert transaction_link(VALID, "") is None
    assert transaction_link(VALID, "javascript:alert(1)//subscriptions/x") is None


# ------------------------------------------------------------------------------- logs
def test_log_records_carry_the_experiment_and_the_span(tmp_path, otel, caplog):  # noqa: F811
    from shared.telemetry.logs import install_record_factory

    install_record_factory()
    ctx = local_context(tmp_path)
    ctx.backends["local"] = LoggingBackend()
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    with caplog.at_level(logging.INFO):
        logging.getLogger("shared.handlers.machine").info("before")
        LocalHost(ctx).run(until=lambda: ctx.store.get_experiment(record.id).torn_down, timeout=60)
    spans = {f"{s.context.span_id:016x}": s for s in otel.spans.get_finished_spans()}
    inside = [r for r in caplog.records if r.experiment_id == record.id]
    assert inside, [r.getMessage() for r in caplog.records]
    for r in inside:
        assert r.span_id in spans and r.trace_id == trace_id_of(record.traceparent)
    outside = next(r for r in caplog.records if r.getMessage() == "before")
    assert (outside.experiment_id, outside.trace_id) == ("-", "-")


class LoggingBackend(ScriptedBackend):
    """Logs in every step, as the real backends do."""

    def _call(self, method, record):
        logging.getLogger("shared.backends.test").info("%s of %s", method, record.id)
        super()._call(method, record)


# ------------------------------------------------------------------------------- never blocking
def test_an_exporter_stuck_on_its_endpoint_never_holds_up_a_step(tmp_path):
    """The OTLP exporter's endpoint takes requests and answers none: the steps go on while the export of
    their spans waits (batching on a background thread), however many spans pile up."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    receiver = OtlpReceiver().start()
    receiver.hold()
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=30),
            schedule_delay_millis=1,
            max_export_batch_size=1,
            max_queue_size=64,
        )
    )
    api.activate(provider, MeterProvider(), "otel")
    try:
        ctx = local_context(tmp_path)
        ctx.backends["local"] = ScriptedBackend(polls=[RunStateRunning()])
        record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
        waited = threading.Event()
        for _ in range(200):  # until the exporter is inside a request the endpoint holds
            if receiver.requests:
                break
            waited.wait(0.05)
        assert receiver.requests == 1
        host = LocalHost(ctx)
        steps = 0
        for _ in range(40):  # PROVISION, SUBMIT_RUN, then POLLs (each sends the next): 40 steps, 100s of spans
            steps += host.step()
        assert steps == 40
        assert receiver.requests == 1, "every step ran while the one export request was still unanswered"
        assert ctx.store.get_experiment(record.id).status.value == "RUNNING"
    finally:
        api.deactivate()
        receiver.release()
        provider.shutdown()
        receiver.stop()


def RunStateRunning():  # noqa: N802
    from shared.ports import RunState

    return RunState.RUNNING


# ------------------------------------------------------------------------------- the compute hop
def test_an_azureml_sweep_carries_the_experiment_trace_in_its_trials_environment():
    from shared.backends.azureml.sweep_job import build_sweep_job

    spec = load_spec(tiny_spec(compute={"backend": "azureml"}))
    job = build_sweep_job(spec, "exp-1", code_dir=ROOT, traceparent=VALID)
    assert job.trial.environment_variables["TRACEPARENT"] == VALID
    assert "TRACEPARENT" not in build_sweep_job(spec, "exp-1", code_dir=ROOT).trial.environment_variables


def test_a_vm_gets_the_otel_settings_but_never_a_connection_string():
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "APPLICATIONINSIGHTS_CONNECTION_STRING": "Key=x"}
    assert compute_environment(VALID, environ, prefixes=("OTEL_",)) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "TRACEPARENT": VALID,
    }


def test_a_sweep_re_drive_keeps_the_experiment_in_its_own_trace(tmp_path, otel):  # noqa: F811
    """The timer's sweep runs in a trace of its own (its host invocation); the event it re-sends for a
    stalled experiment carries the experiment's trace, not the sweep's."""
    from shared.handlers import sweep

    ctx = local_context(tmp_path, stall_seconds=0)
    ctx.backends["local"] = ScriptedBackend()
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    ctx.events.delete(ctx.events.receive(1, 30)[0])  # the first event is lost
    with api.span("sweep"):
        report = sweep(ctx)
    assert report["redriven"] == [record.id]
    resent = json.loads(ctx.events.receive(1, 30)[0].body)
    assert trace_id_of(resent["traceparent"]) == trace_id_of(record.traceparent)
    sweep_span = next(s for s in otel.spans.get_finished_spans() if s.name == "sweep")
    assert f"{sweep_span.context.trace_id:032x}" != trace_id_of(record.traceparent)


# ------------------------------------------------------------------------------- the Azure way
def test_the_distro_exports_with_the_managed_identity_to_an_ingestion_that_refuses_keys(tmp_path):
    """APPLICATIONINSIGHTS_CONNECTION_STRING + Authorization=AAD, as infra/ sets them: Microsoft's distro sends
    the steps' spans with a bearer token from the managed identity (App Service's token endpoint, stood in
    locally), to an ingestion that refuses the key alone; the step's operation id is the experiment's trace."""
    from tests.appinsights_ingestion import Ingestion

    ingestion = Ingestion(tmp_path).start()
    script = f"""
import json, pathlib
from shared.telemetry.setup import configure, flush
mode = configure("rapids-hpo-control")
from shared.handlers import handle_event, submit_experiment
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend
ctx = local_context(pathlib.Path({str(tmp_path / "home")!r}))
ctx.backends["local"] = ScriptedBackend()
record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
handle_event(ctx, ctx.events.receive(1, 30)[0].body)
flush(20)
print(json.dumps({{"mode": mode, "traceparent": record.traceparent}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        APPLICATIONINSIGHTS_CONNECTION_STRING=(
            f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={ingestion.ingestion_endpoint}"
        ),
        APPLICATIONINSIGHTS_AUTHENTICATION_STRING="Authorization=AAD",
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
        IDENTITY_ENDPOINT=ingestion.identity_endpoint,
        IDENTITY_HEADER=ingestion.identity_header,
        REQUESTS_CA_BUNDLE=str(ingestion.ca_file),
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
        )
    finally:
        ingestion.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["mode"] == "azure"
    assert ingestion.tokens, "the exporter asked the managed identity for a token"
    names = {e.get("data", {}).get("baseData", {}).get("name") for e in ingestion.envelopes}
    assert "step provision" in names, (names, ingestion.refused, done.stderr[-2000:])
    step = next(e for e in ingestion.envelopes if e["data"]["baseData"].get("name") == "step provision")
    assert step["tags"]["ai.operation.id"] == trace_id_of(report["traceparent"])
    assert step["data"]["baseData"]["properties"]["rapids_hpo.experiment.id"]
