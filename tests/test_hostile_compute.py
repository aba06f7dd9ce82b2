"""A hostile compute (issue 20): with nothing but one experiment's SAS, it writes what it likes into its
area; the real POLL and TEARDOWN steps run on Azurite. Every other experiment must still list, render and
sweep; the hostile one ends FAILED with a reason and its credential revoked; memory stays bounded."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import tracemalloc
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.api import create_api
from shared.backends.arm import RetrySettings
from shared.backends.vmcluster import VMClusterBackend
from shared.backends.vmcluster.network import make_network_client
from shared.backends.vmcluster.vm_teardown import make_compute_client
from shared.bounded import MAX_TEXT
from shared.config import DRIVER_OUTCOME_ARTIFACT, Settings
from shared.context import Context
from shared.handlers import handle_event, sweep, sweep_orphans
from shared.queues.azure import AzureQueueService
from shared.records import EventType, ExperimentEvent, ExperimentRecord, ExperimentStatus
from shared.store import AzureStore
from shared.store.compute import ComputeStore
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.test_vmcluster import _spec_document

pytestmark = pytest.mark.azurite
MIB = 1024 * 1024


@pytest.fixture
def ctx(azure_store: AzureStore, azurite: str, arm: FakeArm, tmp_path: Path) -> Context:
    """The control plane on Azurite (store and queues), its vmcluster backend on the ARM stand-in."""
    settings = Settings(
        storage_connection_string=azurite, storage_account_name="", home=tmp_path, poll_seconds=1, stall_seconds=900
    )
    context = Context(settings=settings, store=azure_store, queues=AzureQueueService(azurite))
    credential = StaticTokenCredential(arm.token)
    retry = RetrySettings(attempts=2, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)
    context.backends["vmcluster"] = VMClusterBackend(
        azure_store,
        settings,
        compute_client_factory=lambda sub: make_compute_client(sub, credential, arm.base_url, polling_interval=0),
        network_client_factory=lambda sub: make_network_client(sub, credential, arm.base_url, polling_interval=0),
        retry=retry,
    )
    return context


def running(
    ctx: Context, experiment_id: str, sections: dict[str, Any] | None = None, **spec_changes: Any
) -> tuple[ExperimentRecord, ComputeStore]:
    """A vmcluster experiment RUNNING on a (stand-in) head node, and the store its compute holds: its SAS only.
    ``spec_changes`` go into ``limits``, ``sections`` replace whole sections of the spec."""
    spec = _spec_document(tiny=True)
    spec["limits"].update(spec_changes)
    spec.update(sections or {})
    handle = {
        "kind": "vmcluster",
        "area": True,
        "cluster_id": "0badc0de",
        "scheduler_vm": "dask-0badc0de-scheduler",
        "scheduler_address": "tls://10.0.0.4:8786",
        "submitted_at": datetime.now(UTC).isoformat(),
        "n_workers": 2,
    }
    record = ExperimentRecord(
        id=experiment_id,
        name=experiment_id,
        spec=spec,
        backend="vmcluster",
        status=ExperimentStatus.RUNNING,
        started_at=datetime.now(UTC),
        backend_state=handle,
        event_seq=3,
    )
    record = ctx.store.create_experiment(record)
    credential = ctx.store.issue_compute_credential(experiment_id, timedelta(hours=1))
    return record, ComputeStore.from_json(credential.to_json())


def step(ctx: Context, event_type: EventType, experiment_id: str) -> str:
    record = ctx.store.get_experiment(experiment_id)
    event = ExperimentEvent(type=event_type, experiment_id=experiment_id, seq=record.event_seq)
    return handle_event(ctx, event.model_dump_json())


def poll_and_teardown(ctx: Context, experiment_id: str) -> ExperimentRecord:
    """POLL once, then TEARDOWN (the event the FAILED transition sent) as the host would run them."""
    step(ctx, EventType.POLL, experiment_id)
    record = ctx.store.get_experiment(experiment_id)
    assert record.status is ExperimentStatus.FAILED, record.status
    step(ctx, EventType.TEARDOWN, experiment_id)
    return ctx.store.get_experiment(experiment_id)


def assert_contained(ctx: Context, hostile: ExperimentRecord, compute: ComputeStore, bystander: str) -> None:
    """The hostile experiment ended FAILED with a reason, torn down, its SAS dead; the bystander lists,
    renders and sweeps."""
    assert hostile.status is ExperimentStatus.FAILED and isinstance(hostile.error, str) and hostile.error
    assert hostile.torn_down
    with pytest.raises(HttpResponseError):  # the area is gone: the SAS reaches nothing
        compute.area.put("trials/0000000000.json", b"{}")
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    listed: set[str] = set()
    token: str | None = None
    while True:  # every page (the generated tests leave many experiments behind)
        page = client.get("/api/experiments", params={"limit": 200, **({"page_token": token} if token else {})})
        assert page.status_code == 200 and not page.json()["unreadable"], page.text
        listed |= {item["id"] for item in page.json()["items"]}
        if (token := page.json()["next_page_token"]) is None:
            break
    assert listed >= {hostile.id, bystander}
    for path in (f"/api/experiments/{bystander}", f"/api/experiments/{hostile.id}", "/api/health", "/api/ui"):
        assert client.get(path).status_code == 200, path
    assert client.get(f"/api/ui/experiments/{hostile.id}").status_code == 200
    sweep(ctx, stall_seconds=0)
    sweep_orphans(ctx)


# ------------------------------------------------------------------------- the reproduced findings
def test_an_outcome_with_a_dict_error_fails_only_its_own_experiment(ctx: Context) -> None:
    running(ctx, "exp-bystander")
    record, compute = running(ctx, "exp-hostile")
    compute.put_artifact(
        record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps({"status": "FAILED", "error": {"x": True}}).encode()
    )
    hostile = poll_and_teardown(ctx, record.id)
    assert "outcome" in (hostile.error or "")
    assert_contained(ctx, hostile, compute, "exp-bystander")


def _trial(experiment_id: str, number: int, **fields: Any) -> dict[str, Any]:
    """A trial document as the driver writes one (JSON, so a test can put anything in any field)."""
    return {
        "experiment_id": experiment_id,
        "number": number,
        "params": {"n_estimators": 5, "max_depth": 3},
        "state": "COMPLETED",
        "value": 0.8,
        "started_at": datetime.now(UTC).isoformat(),
        **fields,
    }


def _put_trial(compute: ComputeStore, document: dict[str, Any] | str, number: int | None = None) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    name = number if number is not None else json.loads(text)["number"]
    compute.area.put(f"trials/{name:010d}.json", text.encode())


def test_a_forged_trial_with_non_numeric_fold_scores_is_refused_and_fails_the_run(ctx: Context) -> None:
    running(ctx, "exp-bystander")
    record, compute = running(ctx, "exp-hostile")
    _put_trial(compute, _trial(record.id, 0, metrics={"fold_scores": {"accuracy": ["x", {"y": 1}]}}))
    _put_trial(compute, _trial(record.id, 1, metrics={"fold_scores": "not a mapping"}))
    hostile = poll_and_teardown(ctx, record.id)
    assert "trials/0000000000.json" in (hostile.error or "") and ctx.store.list_trials(record.id) == []
    assert_contained(ctx, hostile, compute, "exp-bystander")


def test_forged_step_reports_are_refused_and_fail_only_their_run(ctx: Context) -> None:
    """A trial record's steps (``trial.report_every``: rounds, trees or percent) are as bounded as its folds."""
    running(ctx, "exp-bystander")
    record, compute = running(ctx, "exp-hostile")
    _put_trial(compute, _trial(record.id, 0, step_unit="epochs", intermediate={"10": 0.5}))
    _put_trial(compute, _trial(record.id, 1, step_unit="round", intermediate={"10001": 0.5}))
    _put_trial(compute, _trial(record.id, 2, step_unit="round", intermediate={"ten": 0.5}))
    hostile = poll_and_teardown(ctx, record.id)
    assert "trials/0000000000.json" in (hostile.error or "") and ctx.store.list_trials(record.id) == []
    assert_contained(ctx, hostile, compute, "exp-bystander")


def test_infinite_durations_are_refused_and_the_cost_ledger_lists_everyone(ctx: Context) -> None:
    running(ctx, "exp-bystander")
    record, compute = running(ctx, "exp-hostile")
    _put_trial(compute, json.dumps(_trial(record.id, 0, duration_s=float("inf"))))  # JSON "Infinity"
    _put_trial(compute, json.dumps(_trial(record.id, 1)).replace('"value": 0.8', '"value": 1e400'))
    assert "Infinity" in compute.area.get("trials/0000000000.json").decode()
    hostile = poll_and_teardown(ctx, record.id)
    assert "finite" in (hostile.error or "")
    listed = TestClient(create_api(context=ctx), base_url="http://localhost").get(
        "/api/experiments", params={"status": "RUNNING"}
    )
    assert listed.status_code == 200 and [i["id"] for i in listed.json()["items"]] == ["exp-bystander"]
    assert_contained(ctx, hostile, compute, "exp-bystander")


def test_extreme_finite_values_are_kept_and_the_charts_draw_what_they_can(ctx: Context) -> None:
    record, compute = running(ctx, "exp-hostile")
    _put_trial(compute, _trial(record.id, 0, value=1e308, intermediate={"1": -1e308, "2": 1e308}))
    _put_trial(compute, _trial(record.id, 1, value=-1e308, params={"n_estimators": 2**63 - 1, "max_depth": 3}))
    _put_trial(compute, _trial(record.id, 2, value=0.5, intermediate={"1": 0.4, "2": 0.5}))
    compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps({"status": "FAILED", "error": "x"}).encode())
    hostile = poll_and_teardown(ctx, record.id)
    assert sorted(t.number for t in ctx.store.list_trials(record.id)) == [0, 1, 2]
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    for chart in ("history", "intermediate", "parallel"):
        svg = client.get(f"/api/experiments/{record.id}/plots/{chart}.svg")
        assert svg.status_code == 200, (chart, svg.text)
        assert "left out" in svg.text, chart
    assert client.get(f"/api/ui/experiments/{record.id}").status_code == 200
    assert hostile.status is ExperimentStatus.FAILED


def test_a_trial_numbered_past_the_budget_cannot_block_poll_or_teardown(ctx: Context) -> None:
    running(ctx, "exp-bystander")
    record, compute = running(ctx, "exp-hostile")
    compute.area.put("trials/99999999999.json", json.dumps(_trial(record.id, 99999999999)).encode())
    hostile = poll_and_teardown(ctx, record.id)
    assert "trials/99999999999.json" in (hostile.error or "")
    assert_contained(ctx, hostile, compute, "exp-bystander")


def test_a_100000_character_error_is_clipped_and_the_status_message_fits_the_queue(ctx: Context) -> None:
    running(ctx, "exp-bystander")
    record, compute = running(ctx, f"exp-long-{uuid.uuid4().hex[:6]}")  # the status queue outlives a test
    outcome = {"status": "FAILED", "error": "é" * 100_000}  # 200,000 bytes of UTF-8
    compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps(outcome, ensure_ascii=False).encode())
    hostile = poll_and_teardown(ctx, record.id)
    assert len(hostile.error or "") <= MAX_TEXT and "characters cut" in (hostile.error or "")
    sent = [json.loads(m.body) for m in ctx.status_queue.receive(max_messages=32)]  # Azurite's queue: 64 KB
    assert [m["error"] for m in sent if m["id"] == record.id] == [hostile.error] and hostile.status_emitted
    assert_contained(ctx, hostile, compute, "exp-bystander")


# ----------------------------------------------------------------------------- quotas and memory
_WARM: list[bool] = []


def _traced_peak(ctx: Context, call: Any) -> tuple[Any, int]:
    """``call()`` and the peak of Python memory it allocated (tracemalloc: every thread). What a first
    poll, teardown and listing import (the ARM SDK's models: tens of MiB) is imported before, once per
    process, by a benign run."""
    if not _WARM:
        record, compute = running(ctx, f"exp-warm-{uuid.uuid4().hex[:6]}")
        compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, b'{"status": "FAILED", "error": "warm-up"}')
        poll_and_teardown(ctx, record.id)
        TestClient(create_api(context=ctx), base_url="http://localhost").get("/api/experiments")
        _WARM.append(True)
    tracemalloc.start()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
        print(f"{getattr(call, '__name__', 'call')}: tracemalloc peak {peak / MIB:.1f} MiB")  # the figure, with -s
        return result, peak
    finally:
        tracemalloc.stop()


def _many_trials(ctx: Context, count: int, size: int, budget: int) -> None:
    record, compute = running(ctx, "exp-hostile", max_total_trials=budget, max_concurrent_trials=1)
    padding = "x" * size
    for number in range(count):
        _put_trial(compute, _trial(record.id, number, error=padding))
    hostile, peak = _traced_peak(ctx, lambda: poll_and_teardown(ctx, record.id))
    assert ctx.store.list_trials(record.id) == [] and peak < 16 * MIB, peak / MIB
    assert_contained(ctx, hostile, compute, "exp-bystander")
    assert "the compute wrote" in (hostile.error or "")


def test_more_trials_than_the_spec_allows_are_refused_unread(ctx: Context) -> None:
    running(ctx, "exp-bystander")
    _many_trials(ctx, count=40, size=64 * 1024, budget=2)


@pytest.mark.slow
def test_forty_trials_of_megabytes_are_refused_unread(ctx: Context) -> None:
    """The reproduction: 40 trials of 3.9 MiB each, the spec allowing 2 (then 40: each is over the size)."""
    running(ctx, "exp-bystander")
    _many_trials(ctx, count=40, size=int(3.9 * MIB), budget=2)


async def _asgi_get(app: Any, path: str, sink: Any) -> int:
    """Send ``GET path`` to an ASGI ``app`` as a server would; the body goes to ``sink`` as it streams."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    status: list[int] = []
    requested, done = [False], asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not requested[0]:
            requested[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client stays connected until the whole body came
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            sink.write(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    return status[0]


def _model_round_trip(ctx: Context, files: int, size: int) -> None:
    """Model blobs of ``size`` bytes are ingested as streams and served as a streamed zip, each in a
    small fraction of their size."""
    record, compute = running(ctx, "exp-model")
    block = os.urandom(64 * 1024) * 16  # a MiB that deflates (a model's bytes do, somewhat)
    for index in range(files):
        blob = compute.area.container.get_blob_client(f"artifacts/model/part-{index}.bin")
        blob.upload_blob(iter([block] * (size // MIB)), overwrite=True)
    compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps({"status": "FAILED", "error": "x"}).encode())
    _, peak = _traced_peak(ctx, lambda: poll_and_teardown(ctx, record.id))
    assert peak < min(size, 32 * MIB), peak / MIB  # under one blob's size
    names = ctx.store.list_artifacts(record.id, "model/")
    assert len(names) == files

    def download() -> int:
        """GET /model through the ASGI app itself (TestClient would buffer the whole body), into a file."""
        with tempfile.TemporaryFile() as sink:
            status = asyncio.run(_asgi_get(create_api(context=ctx), f"/api/experiments/{record.id}/model", sink))
            assert status == 200
            total = sink.tell()
            sink.seek(0)
            with zipfile.ZipFile(sink) as archive:
                assert archive.testzip() is None
                assert [i.file_size for i in archive.infolist()] == [size] * files
        return total

    total, peak = _traced_peak(ctx, download)
    assert total > 0 and peak < min(size, 32 * MIB), peak / MIB


@pytest.mark.slow  # three 256 MiB model blobs through Azurite: 18 s at load 5; CI runs it
def test_model_files_are_copied_and_served_as_streams(ctx: Context) -> None:
    _model_round_trip(ctx, files=2, size=24 * MIB)


@pytest.mark.slow
def test_three_model_blobs_of_256_mib_stay_out_of_memory(ctx: Context) -> None:
    """The reproduction: three 256 MiB model blobs (a /model download peaked at 1.5 GiB RSS)."""
    _model_round_trip(ctx, files=3, size=256 * MIB)


# ------------------------------------------------------------------------- generated hostile output
_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12).filter(
    lambda s: s not in {".", ".."}
)
_NAMES = st.tuples(
    st.sampled_from(["trials/", "artifacts/driver/", "artifacts/plots/", "artifacts/model/", "artifacts/", "x/"]),
    st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join),
).map("".join)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
_TRIALISH = st.builds(
    lambda number, fields: {**_trial("exp-gen", number), **fields},
    st.integers(-5, 10**12),
    st.dictionaries(
        st.sampled_from(["value", "params", "metrics", "intermediate", "folds", "error", "duration_s", "state"]),
        _JSON,
        max_size=3,
    ),
)
_CONTENT = (
    _JSON.map(lambda v: json.dumps(v).encode())
    | _TRIALISH.map(lambda v: json.dumps(v).encode())
    | st.integers(0, 600_000).map(lambda n: b"{" * n)
)


def _generated(ctx: Context, blobs: list[tuple[str, bytes]]) -> None:
    experiment_id = f"exp-gen-{uuid.uuid4().hex[:8]}"
    record, compute = running(ctx, experiment_id)
    for name, data in blobs:
        compute.area.put(name, data.replace(b"exp-gen", experiment_id.encode(), 1))
    hostile, peak = _traced_peak(ctx, lambda: poll_and_teardown(ctx, record.id))
    assert peak < 16 * MIB, peak / MIB
    assert_contained(ctx, hostile, compute, "exp-bystander")


@given(blobs=st.lists(st.tuples(_NAMES, _CONTENT), min_size=1, max_size=4))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_generated_output_is_contained(ctx: Context, bystander: None, blobs: list[tuple[str, bytes]]) -> None:
    _generated(ctx, blobs)


@pytest.mark.slow
@given(blobs=st.lists(st.tuples(_NAMES, _CONTENT), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_generated_output_is_contained_many(ctx: Context, bystander: None, blobs: list[tuple[str, bytes]]) -> None:
    _generated(ctx, blobs)


@pytest.fixture
def bystander(ctx: Context) -> None:
    running(ctx, "exp-bystander")


def test_a_stored_record_that_does_not_validate_harms_only_itself(ctx: Context) -> None:
    """The state a dict ``error`` left before this fix (written past validation here): everyone else still
    lists, the dashboard and health answer, both sweeps run, and its own events revoke its credential."""
    from tests.conformance.test_store import write_raw_record

    running(ctx, "exp-bystander")
    record, compute = running(ctx, "exp-bad")
    write_raw_record(ctx.store, record.id, {"error": {"x": True}})
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    listed = client.get("/api/experiments")
    assert listed.status_code == 200, listed.text
    assert [i["id"] for i in listed.json()["items"]] == ["exp-bystander"]
    assert [u["id"] for u in listed.json()["unreadable"]] == ["exp-bad"]
    assert client.get("/api/health").status_code == 200
    index = client.get("/api/ui")
    assert index.status_code == 200 and "exp-bad" in index.text and "exp-bystander" in index.text
    alone = client.get("/api/experiments/exp-bad")
    assert alone.status_code == 500 and "does not validate" in alone.text
    assert sweep(ctx, stall_seconds=0)["unreadable"] == ["exp-bad"]
    assert sweep_orphans(ctx) == []
    event = ExperimentEvent(type=EventType.TEARDOWN, experiment_id="exp-bad", seq=3)
    assert handle_event(ctx, event.model_dump_json()) == "unreadable record"
    with pytest.raises(HttpResponseError):  # its compute's SAS reaches nothing now
        compute.area.put("trials/0000000000.json", b"{}")


def test_a_model_location_the_compute_wrote_is_never_passed_on(ctx: Context) -> None:
    """The compute names where its model lives (a trial's ``model_uri``, the outcome's best): a path in its
    area, which teardown deletes, or a link of an attacker's. The record, the trials and the API link only
    the model the control plane ingested."""
    record, compute = running(ctx, "exp-model-link")
    lure = "https://attacker.example/model.zip"
    _put_trial(compute, _trial(record.id, 0, value=0.9, model_uri=lure))
    compute.area.put("artifacts/model/model.pkl", b"a model")
    best = {"number": 0, "value": 0.9, "params": {"n_estimators": 5, "max_depth": 3}, "model_uri": lure}
    outcome = {"status": "COMPLETED", "reason": "max_total_trials", "trials_done": 1, "best": best}
    compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps(outcome).encode())
    finished = _finished(ctx, record.id)
    assert finished.status is ExperimentStatus.COMPLETED, (finished.status, finished.error)
    assert finished.best is not None and finished.best.model_uri == f"/api/experiments/{record.id}/model"
    assert [t.model_uri for t in ctx.store.list_trials(record.id)] == [None]
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    assert lure not in client.get(f"/api/experiments/{record.id}").text
    assert lure not in client.get(f"/api/experiments/{record.id}/trials").text


def test_without_an_ingested_model_there_is_no_model_link(ctx: Context) -> None:
    record, compute = running(ctx, "exp-no-model")
    lure = "file:///tmp/rapids-hpo-refit-1/model"
    _put_trial(compute, _trial(record.id, 0, value=0.9, model_uri=lure))
    best = {"number": 0, "value": 0.9, "params": {"n_estimators": 5, "max_depth": 3}, "model_uri": lure}
    outcome = {"status": "COMPLETED", "reason": "max_total_trials", "trials_done": 1, "best": best}
    compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps(outcome).encode())
    finished = _finished(ctx, record.id)
    assert finished.status is ExperimentStatus.COMPLETED, (finished.status, finished.error)
    assert finished.best is not None and finished.best.model_uri is None, finished.best


def _finished(ctx: Context, experiment_id: str) -> ExperimentRecord:
    """POLL (which reads the outcome), then FINALIZE, as the host runs them."""
    step(ctx, EventType.POLL, experiment_id)
    step(ctx, EventType.FINALIZE, experiment_id)
    return ctx.store.get_experiment(experiment_id)
