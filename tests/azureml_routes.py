"""The REST routes of the local AzureML stand-in (:mod:`tests.azureml_server`), one function each.

Each handler takes the stand-in, the path's match, the query and the JSON body and returns ``(status,
headers, body)``, answering as AzureML's services do: the management front end (workspace, compute,
datastores, versioned assets, jobs), the discovery document, run history (children, run data), the
dataset data plane (output URIs) and MLflow tracking (a trial's run and metric history). Also here: the
stand-in's model of a sweep and its trials (:class:`Sweep`, :class:`Child`) and :func:`validate_job`.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.azureml_server import AzureMLStandIn

WS = r"/subscriptions/(?P<sub>[^/]+)/resource[gG]roups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"  # noqa: E501


@dataclass
class Child:
    """A trial of a sweep as the stand-in reports it: status over time, properties, its model's files."""

    name: str
    statuses: list[str]
    properties: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    metric: str = "accuracy"
    history: dict[int, float] = field(default_factory=dict)  # the running mean per fold
    params: dict[str, str] = field(default_factory=dict)
    draw: dict[str, Any] = field(default_factory=dict)  # what HyperDrive drew: recorded on the parent
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def mlflow_run(self) -> dict[str, Any]:
        """The trial's MLflow run, as MLflow's REST API returns it (run id = job name)."""
        start = int(dt.datetime.fromisoformat(self.created).timestamp() * 1000)
        finished = self.statuses[0] in {"Completed", "Failed", "Canceled"}
        metrics = [{"key": self.metric, "value": v, "step": s, "timestamp": start + s} for s, v in self.history.items()]
        return {
            "info": {
                "run_id": self.name,
                "run_uuid": self.name,
                "experiment_id": "1",
                "status": {"Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED"}.get(
                    self.statuses[0], "RUNNING"
                ),
                "start_time": start,
                **({"end_time": start + 60_000} if finished else {}),
                "lifecycle_stage": "active",
            },
            "data": {
                "metrics": metrics[-1:] if metrics else [],
                "params": [{"key": k, "value": v} for k, v in self.params.items()],
                "tags": [],
            },
        }


@dataclass
class Sweep:
    statuses: list[str]
    children: list[tuple[int, Child]]  # (appears at the parent's n-th GET, child)
    properties: dict[str, str] = field(default_factory=dict)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(status: int, code: str, message: str) -> tuple[int, dict[str, str], Any]:
    return status, {}, {"error": {"code": code, "message": message}}


ROUTES: list[tuple[str, str, Callable[..., Any]]] = []


def route(method: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, pattern, fn))
        return fn

    return register


def resource(ws: AzureMLStandIn, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out.update(id=f"{ws.prefix}/{kind}/{name}", name=name, type=f"Microsoft.MachineLearningServices/workspaces/{kind}")
    out.setdefault("systemData", {"createdAt": now(), "createdBy": "stand-in", "lastModifiedAt": now()})
    return out


@route("GET", WS)
def _workspace(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    host = ws.url.removeprefix("https://")
    return (
        200,
        {},
        {
            "id": ws.prefix,
            "name": ws.ws,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": "westeurope",
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": str(uuid.uuid4())},
            "properties": {
                "friendlyName": ws.ws,
                "workspaceId": "00000000-0000-0000-0000-000000000001",
                "discoveryUrl": f"{ws.url}/discovery",
                "mlFlowTrackingUri": f"azureml://{host}/mlflow/v1.0{ws.prefix}",
                "storageAccount": f"/subscriptions/{ws.sub}/resourceGroups/{ws.rg}/providers/"
                f"Microsoft.Storage/storageAccounts/{ws.account}",
                "provisioningState": "Succeeded",
            },
        },
    )


@route("GET", r"/discovery")
def _discovery(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    keys = ("api", "catalog", "experimentation", "gallery", "history", "hyperdrive", "labeling", "modelmanagement")
    return 200, {}, {**{k: ws.url for k in keys}, "pipelines": ws.url, "studio": ws.url}


# -- compute
@route("GET", WS + r"/computes/(?P<name>[^/]+)")
def _get_compute(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    found = ws.computes.get(m["name"])
    if found is None:
        return error(404, "ResourceNotFound", f"compute {m['name']} not found")
    return 200, {}, found


@route("PUT", WS + r"/computes/(?P<name>[^/]+)")
def _put_compute(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    props = (body or {}).get("properties") or {}
    if props.get("computeType") != "AmlCompute" or not (props.get("properties") or {}).get("vmSize"):
        return error(400, "BadRequest", "an AmlCompute with properties.properties.vmSize is required")
    status = 200 if m["name"] in ws.computes else 201
    stored = resource(ws, "computes", m["name"], body)
    stored["properties"]["provisioningState"] = "Creating"
    stored["properties"]["properties"].update(allocationState="Steady", currentNodeCount=0, targetNodeCount=0)
    ws.computes[m["name"]] = stored
    done = stored["properties"]
    headers = ws.operation(lambda: done.update(provisioningState="Succeeded"), q.get("api-version", ""))
    return status, headers, stored


@route("GET", r"/operations/(?P<op>[0-9a-f]+)")
def _operation(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    operation = ws._operations.get(m["op"])
    if operation is None:
        return error(404, "NotFound", "no such operation")
    operation[0] += 1
    if operation[0] < 2:  # InProgress on the first poll, as ARM's operations usually are
        return 200, {"Retry-After": "1"}, {"status": "InProgress"}
    operation[1]()
    return 200, {}, {"status": "Succeeded"}


# -- versioned assets: code, environments, models
ASSET = WS + r"/(?P<kind>codes|environments|models|data)/(?P<name>[^/]+)/versions"


@route("GET", ASSET)
def _list_versions(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    prefix = f"{m['kind']}/{m['name']}/"
    found = [a for key, a in ws.assets.items() if key.startswith(prefix)]
    if "hash" in q:
        found = [a for a in found if (a["properties"].get("properties") or {}).get("hash_sha256") == q["hash"]]
    return 200, {}, {"value": found}


@route("GET", WS + r"/(?P<kind>codes|environments|models|data)/(?P<name>[^/]+)")
def _get_container(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    versions = [key for key in ws.assets if key.startswith(f"{m['kind']}/{m['name']}/")]
    if not versions:
        return error(404, "ResourceNotFound", f"{m['kind']} {m['name']} not found")
    latest = max(versions, key=lambda key: int(key.rsplit("/", 1)[1]) if key.rsplit("/", 1)[1].isdigit() else 0)
    return 200, {}, resource(ws, m["kind"], m["name"], {"properties": {"latestVersion": latest.rsplit("/", 1)[1]}})


@route("GET", ASSET + r"/(?P<version>[^/]+)")
def _get_version(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    found = ws.assets.get(f"{m['kind']}/{m['name']}/{m['version']}")
    if found is None:
        return error(404, "ResourceNotFound", f"{m['kind']} {m['name']}:{m['version']} not found")
    return 200, {}, found


@route("PUT", ASSET + r"/(?P<version>[^/]+)")
def _put_version(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    key = f"{m['kind']}/{m['name']}/{m['version']}"
    status = 200 if key in ws.assets else 201
    if m["kind"] == "models" and ((body or {}).get("properties") or {}).get("modelType") == "mlflow_model":
        flavors = ws.mlflow_flavors(body["properties"].get("modelUri", ""))
        if flavors is None:
            return error(400, "UserError", "no MLmodel file at the model's path: not an MLflow model")
        body = copy.deepcopy(body)
        body["properties"]["flavors"] = flavors
    stored = resource(ws, f"{m['kind']}/{m['name']}/versions", m["version"], body or {})
    stored["properties"]["provisioningState"] = "Succeeded"
    ws.assets[key] = stored
    return status, {}, stored


@route("POST", ASSET + r"/(?P<version>[^/]+)/startPendingUpload")
def _pending_upload(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    """A SAS URL of a fresh folder in the datastore's container (in Azurite), as AzureML hands out."""
    folder = f"LocalUpload/{uuid.uuid4().hex}"
    blob_uri, sas_uri = ws._sas_for(folder)
    return (
        200,
        {},
        {
            "blobReferenceForConsumption": {
                "blobUri": blob_uri,
                "storageAccountArmId": f"/subscriptions/{ws.sub}/resourceGroups/{ws.rg}/providers/"
                f"Microsoft.Storage/storageAccounts/{ws.account}",
                "credential": {"credentialType": "SAS", "sasUri": sas_uri},
            },
            "pendingUploadId": (body or {}).get("pendingUploadId") or uuid.uuid4().hex,
            "pendingUploadType": "TemporaryBlobReference",
        },
    )


# -- datastores
def _datastore(ws: AzureMLStandIn) -> dict[str, Any]:
    return resource(
        ws,
        "datastores",
        "workspaceblobstore",
        {
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": ws.account,
                "containerName": ws.container,
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
                "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
            }
        },
    )


@route("GET", WS + r"/datastores")
def _list_datastores(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    return 200, {}, {"value": [_datastore(ws)]}


@route("POST", WS + r"/datastores/(?P<name>[^/]+)/listSecrets")
def _datastore_secrets(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    """A container SAS (what AzureML returns for an expirable secret)."""
    sas = ws._sas_for("")[1].split("?", 1)[1]
    return 200, {}, {"secretsType": "Sas", "sasToken": sas}


@route("GET", WS + r"/datastores/(?P<name>[^/]+)")
def _get_datastore(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    if m["name"] != "workspaceblobstore":
        return error(404, "ResourceNotFound", f"datastore {m['name']} not found")
    return 200, {}, _datastore(ws)


# -- jobs
def validate_job(body: Any) -> list[str]:
    """Problems of a job PUT body against the REST models azure-ai-ml ships (``JobBase``)."""
    from azure.ai.ml._restclient.arm_ml_service.models import JobBase

    from tests import arm_schema

    # AzureML parses enum values case-insensitively, and azure-ai-ml itself sends e.g. goal "maximize".
    return [str(p) for p in arm_schema.check(body, JobBase, enum_casing=False)]


def _job_view(ws: AzureMLStandIn, name: str) -> dict[str, Any]:
    """The job as a GET returns it: the stored body with the status of the script's current step."""
    job = copy.deepcopy(ws.jobs[name])
    sweep = ws.sweeps.get(name)
    if sweep is not None:
        job["properties"]["status"] = sweep.statuses[0]
        job["properties"]["properties"] = {**(job["properties"].get("properties") or {}), **sweep.properties}
    return job


def _caller_claims(ws: AzureMLStandIn) -> dict[str, Any]:
    """The claims of the bearer token the stand-in accepts (the only caller it lets in)."""
    payload = ws.token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def identity_problem(ws: AzureMLStandIn, properties: dict[str, Any]) -> str | None:
    """What AzureML refuses in the identity a job declares (``properties.identity``), or None.

    ``UserIdentity`` reaches data on behalf of the submitting user, a flow Entra allows for user principals
    only: a service principal or managed identity caller (token ``idtyp: app``) cannot use it. ``Managed``
    runs as the compute's managed identity: the compute must exist and have one (the stand-in refuses
    upfront what Azure would fail when the job starts). No identity (AML token) is AzureML's default."""
    identity = (properties.get("identity") or {}).get("identityType")
    if identity == "UserIdentity" and _caller_claims(ws).get("idtyp") == "app":
        return (
            "UserIdentity needs a user principal to act on behalf of; the caller is a service principal or managed "
            "identity: use the compute's managed identity (identityType Managed)"
        )
    if identity == "Managed":
        compute = str(properties.get("computeId") or "").rsplit("/", 1)[-1]
        found = ws.computes.get(compute)
        if found is None:
            return f"compute {compute!r} does not exist"
        if not (found.get("identity") or {}).get("type"):
            return f"compute {compute} has no managed identity for a job with identityType Managed"
    return None


@route("PUT", WS + r"/jobs/(?P<name>[^/]+)")
def _put_job(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    problems = validate_job(body)
    if problems:
        return error(400, "UserError", "the job body does not match the REST models: " + "; ".join(problems))
    refused = identity_problem(ws, body["properties"])
    if refused is not None:
        return error(400, "UserError", refused)
    if m["name"] in ws.jobs:
        return error(409, "Conflict", f"job {m['name']} exists and cannot be changed")
    stored = resource(ws, "jobs", m["name"], body)
    props = stored["properties"]
    props["services"] = {"Studio": {"jobServiceType": "Studio", "endpoint": f"{ws.url}/studio/{m['name']}"}}
    ws.jobs[m["name"]] = stored
    ws.sweeps.setdefault(m["name"], Sweep(["NotStarted"], []))
    return 201, {}, _job_view(ws, m["name"])


@route("GET", WS + r"/jobs/(?P<name>[^/]+)")
def _get_job(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    name = m["name"]
    if name in ws.children:
        return 200, {}, ws.child_job(name)
    if name not in ws.jobs:
        return error(404, "UserError", f"job {name} not found")
    ws.advance(name)
    return 200, {}, _job_view(ws, name)


@route("POST", WS + r"/jobs/(?P<name>[^/]+)/cancel")
def _cancel_job(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    sweep = ws.sweeps.get(m["name"])
    if m["name"] not in ws.jobs or sweep is None:
        return error(404, "UserError", f"job {m['name']} not found")
    if sweep.statuses[0] not in {"Completed", "Failed", "Canceled"}:
        sweep.statuses = ["CancelRequested", "Canceled"]
        for _, child in sweep.children:
            if child.statuses[0] not in {"Completed", "Failed", "Canceled"}:
                child.statuses = ["Canceled"]
    location = f"{ws.url}/operations/{uuid.uuid4().hex}"
    return 202, {"Location": location, "Retry-After": "1"}, None


# -- run history (the children of a sweep, run metadata for downloads)
HISTORY = r"/history/v1\.0" + WS


def _run(ws: AzureMLStandIn, child: Child, parent: str) -> dict[str, Any]:
    return {
        "runId": child.name,
        "parentRunId": parent,
        "rootRunId": parent,
        "displayName": child.name,
        "status": child.statuses[0],
        "createdUtc": child.created,
        "lastModifiedUtc": now(),
        "properties": child.properties,
        "tags": {},
        "experimentId": str(uuid.uuid5(uuid.NAMESPACE_URL, parent)),
        "runType": "azureml.scriptrun",
    }


@route("GET", HISTORY + r"/runs/(?P<name>[^/]+)/children")
def _children(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    sweep = ws.sweeps.get(m["name"])
    if sweep is None:
        return error(404, "UserError", f"run {m['name']} not found")
    runs = [_run(ws, c, m["name"]) for _, c in sweep.children if c.name in ws.children]
    return 200, {}, {"value": runs, "continuationToken": None, "nextLink": None}


def output_path(run: str, output: str) -> str:
    return f"azureml/{run}/{output}/"


@route("POST", HISTORY + r"/rundata")
def _run_data(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    name = (body or {}).get("runId", "")
    child = ws.children.get(name)
    if child is not None:  # a trial of a sweep: its one output is the model
        parent = next(p for p, s in ws.sweeps.items() if any(c.name == name for _, c in s.children))
        run, outputs = _run(ws, child, parent), ["model"]
    elif name in ws.jobs and name in ws.sweeps:  # a job of its own (a command job): the outputs it declared
        job = _job_view(ws, name)["properties"]
        run = _run(ws, Child(name, [job["status"]], created=now()), "")
        run.update(parentRunId=None, rootRunId=name)
        outputs = list(job.get("outputs") or {})
    else:
        return error(404, "UserError", f"run {name} not found")
    run["outputs"] = {
        output: {
            "assetId": f"azureml://locations/westeurope/workspaces/{ws.ws}/data/{name}-{output}/versions/1",
            "type": "uri_folder",
        }
        for output in outputs
    }
    return 200, {}, {"runMetadata": run}


@route("POST", r"/data/v1\.0" + WS + r"/dataversion/batchGetResolvedUris")
def _resolve_uris(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    values = {}
    for asset_id in (body or {}).get("values") or []:
        found = re.search(r"/data/(?P<run>.+)-(?P<output>[^-/]+)/versions/", asset_id)
        if found:
            path = output_path(found["run"], found["output"])
            uri = f"azureml://subscriptions/{ws.sub}/resourcegroups/{ws.rg}/workspaces/{ws.ws}/datastores/workspaceblobstore/paths/{path}"
            values[asset_id] = {"uri": uri, "type": "UriFolder"}
    return 200, {}, {"values": values}


# -- MLflow tracking (the trials' metrics): the REST API of an MLflow server, under the workspace's URI
MLFLOW = r"/mlflow/v[12]\.0" + WS + r"/api/2\.0/mlflow"


@route("GET", MLFLOW + r"/runs/get")
def _mlflow_run(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    child = ws.children.get(q.get("run_id", ""))
    if child is None:
        return 404, {}, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"run {q.get('run_id')} not found"}
    return 200, {}, {"run": child.mlflow_run()}


@route("GET", MLFLOW + r"/metrics/get-history")
def _mlflow_history(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    child = ws.children.get(q.get("run_id", ""))
    if child is None:
        return 404, {}, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"run {q.get('run_id')} not found"}
    key = q.get("metric_key", "")
    points = [
        {"key": key, "value": value, "step": step, "timestamp": 1_700_000_000_000 + step}
        for step, value in sorted(child.history.items())
        if child.metric == key
    ]
    return 200, {}, {"metrics": points}
