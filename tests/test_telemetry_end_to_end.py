"""One experiment, one trace: POST to COMPLETED on the local backend over Azurite, with a real driver
process and Dask LocalCluster. The control plane runs in this process with telemetry into memory (the
SDK's in-memory exporter and metric reader); the driver, another process, exports over OTLP/HTTP (the
real exporter) to a local receiver (tests/otlp_receiver.py). Both halves must make one trace."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.config import Settings
from shared.context import Context, set_context
from shared.records import ExperimentStatus
from shared.runner import LocalHost
from shared.telemetry import metrics as names
from shared.telemetry import trace_id_of
from tests.control_plane import tiny_spec
from tests.otlp_receiver import OtlpReceiver
from tests.telemetry_fixtures import otel  # noqa: F401  (the fixture)

STEPS = {"step provision", "step submit_run", "step poll", "step finalize", "step teardown"}


@pytest.mark.azurite
@pytest.mark.slow
def test_one_experiment_is_one_trace_from_submit_to_completed(tmp_path, azurite, otel, monkeypatch):  # noqa: F811
    receiver = OtlpReceiver().start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)  # the driver's environment
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1000")
    settings = Settings(
        storage_connection_string=azurite, storage_account_name="", home=tmp_path, poll_seconds=1, stall_seconds=900
    )
    ctx = Context.from_settings(settings)
    set_context(ctx)
    try:
        answer = TestClient(create_api(context=ctx), base_url="http://localhost").post(
            "/api/experiments", content=json.dumps(tiny_spec()), headers={"content-type": "application/json"}
        )
        assert answer.status_code == 202, answer.text
        experiment_id = answer.json()["id"]
        host = LocalHost(ctx, visibility_timeout=30, sweep_interval=3600)
        assert host.run(until=lambda: ctx.store.get_experiment(experiment_id).torn_down, timeout=240)
        record = ctx.store.get_experiment(experiment_id)
        assert record.status is ExperimentStatus.COMPLETED, record.error
        page = TestClient(create_api(context=ctx), base_url="http://localhost").get(
            f"/api/ui/experiments/{experiment_id}"
        )
    finally:
        set_context(None)
        receiver.stop()
    trace_id = trace_id_of(record.traceparent)
    assert trace_id and trace_id in page.text  # the dashboard shows the experiment's trace id

    here = [s for s in otel.spans.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    by_id = {s.context.span_id: s for s in here}
    names_here = Counter(s.name for s in here)
    assert set(names_here) >= STEPS, names_here
    assert names_here["submit experiment"] == 1
    # The submit request is the root: FastAPI's server span, then the submit, then every step below it.
    roots = [s for s in here if s.parent is None]
    assert len(roots) == 1 and roots[0].name.startswith("POST"), [s.name for s in roots]
    for span in here:
        if span.name.startswith("step "):
            assert span.parent is not None and span.parent.span_id in by_id, f"{span.name} lost its parent"
            assert span.attributes["rapids_hpo.experiment.id"] == experiment_id
            assert span.attributes["rapids_hpo.backend"] == "local"
    # The queue hop keeps the parent: each step's parent is the step (or submit) that sent its message.
    provision = next(s for s in here if s.name == "step provision")
    assert by_id[provision.parent.span_id].name == "submit experiment"
    submit_run = next(s for s in here if s.name == "step submit_run")
    assert by_id[submit_run.parent.span_id].name == "step provision"
    transitions = {(s.attributes.get("rapids_hpo.status.from"), s.attributes.get("rapids_hpo.status.to")) for s in here}
    assert ("FINALIZING", "COMPLETED") in transitions and ("PROVISIONING", "RUNNING") in transitions
    # Azure SDK calls (Tables, Queues, Blobs on Azurite) are child spans of the steps (azure-core's plugin).
    sdk = [s for s in here if s.name.startswith(("TableClient.", "QueueClient.", "BlobClient."))]
    assert sdk and all(s.parent is not None and s.parent.span_id in by_id for s in sdk)
    assert any(by_id[s.parent.span_id].name.startswith("step ") for s in sdk)

    # The compute hop keeps the parent: the driver's spans are in the same trace, under SUBMIT_RUN.
    driver = [s for s in receiver.spans if s.trace_id == trace_id]
    driver_names = Counter(s.name for s in driver)
    assert driver_names["hpo driver"] == 1, driver_names
    root = next(s for s in driver if s.name == "hpo driver")
    assert root.parent_id == f"{submit_run.context.span_id:016x}"
    trials = [s for s in driver if s.name.startswith("trial ")]
    assert sorted(s.attributes["rapids_hpo.trial.number"] for s in trials) == [0, 1, 2]
    assert all(s.parent_id == root.span_id for s in trials)
    folds = [s for s in driver if s.name.startswith("fold ")]
    trial_ids = {s.span_id for s in trials}
    assert folds and all(f.parent_id in trial_ids for f in folds)
    assert {"refit", "model upload", "data check"} <= set(driver_names)
    assert {s.service for s in driver} == {"rapids-hpo-driver"}

    # Metrics, with their attributes: from the control plane (memory) and from the driver (OTLP).
    points = otel.collect()
    assert ({"rapids_hpo.backend": "local"}, 1.0) in points[names.SUBMITTED]
    assert ({"rapids_hpo.status": "COMPLETED", "rapids_hpo.backend": "local"}, 1.0) in points[names.ENDED]
    steps = {a["rapids_hpo.step"] for a, _ in points[names.STEP_DURATION]}
    assert {"provision", "submit_run", "poll", "finalize", "teardown"} <= steps
    assert {a["rapids_hpo.step"] for a, _ in points[names.QUEUE_LAG]} >= {"provision", "poll"}
    finished = [(a, v) for name, a, v in receiver.metrics if name == names.TRIALS_FINISHED]
    assert finished and all(a["rapids_hpo.backend"] == "local" and a["rapids_hpo.trial.state"] for a, _ in finished)
    assert sum(v for _, v in finished) >= 3
