"""``function_app.py`` in Azure's own Python worker (``azure-functions-runtime`` on Python 3.13, the app's pinned
``requirements.txt``), started and driven over gRPC by the host stand-in (:mod:`tests.functions_host`), the
way a Flex Consumption instance starts it: a placeholder worker, then the environment reload with the app.

The in-process tests (tests/test_function_app.py) stay for speed; these see what only the worker checks:
indexing of the deployed package, binding types, return values, and the messages as the host shapes them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functions_host import REQUIRED_ENV, ROOT, FunctionsHost, WorkerError, deploy_package, missing

pytestmark = [pytest.mark.azurite]

EXPECTED = {"http_app_func", "experiment_requests", "experiment_requests_trusted", "experiment_events", "sweep"}


def require_worker() -> None:
    reason = missing()
    if reason is not None:
        if os.environ.get(REQUIRED_ENV):
            pytest.fail(f"{REQUIRED_ENV} is set and the Functions worker cannot run: {reason}")
        pytest.skip(reason)


def azureml_spec(**changes: Any) -> dict[str, Any]:
    """A spec a hosted deployment accepts: the azureml backend on the bundled data."""
    document: dict[str, Any] = {
        "name": "worker-test",
        "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
        "trial": {"model": "random_forest", "cv_folds": 2},
        "search_space": {"n_estimators": {"type": "choice", "values": [10, 20]}},
        "sampling_algorithm": {"type": "random", "seed": 1},
        "limits": {"max_total_trials": 2, "max_concurrent_trials": 1},
        "objective": {"primary_metric": "accuracy", "goal": "maximize"},
        "compute": {"backend": "azureml"},
    }
    document.update(changes)
    return document


def app_settings(azurite: str, home: Path) -> dict[str, str]:
    """The app settings a Flex Consumption instance gets (WEBSITE_SITE_NAME turns hosted mode on)."""
    return {
        "AzureWebJobsStorage": azurite,
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "WEBSITE_SITE_NAME": "rapids-hpo-test",
        "WEBSITE_HOSTNAME": "rapids-hpo-test.azurewebsites.net",
        "RAPIDS_HPO_HOME": str(home),
        "AZURE_SUBSCRIPTION_ID": "sub-1",
        "AZURE_RESOURCE_GROUP": "rg-1",
        "AZUREML_WORKSPACE": "ws-1",
    }


def b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deploy_package(ROOT, tmp_path_factory.mktemp("wwwroot"))


@pytest.fixture(scope="module")
def host(azurite: str, package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionsHost]:
    require_worker()
    with FunctionsHost(package, app_settings(azurite, tmp_path_factory.mktemp("home"))) as running:
        yield running


def test_the_deployed_package_is_what_funcignore_leaves(package: Path) -> None:
    assert (package / "function_app.py").exists() and (package / "shared" / "api.py").exists()
    assert (package / "requirements.txt").exists() and (package / "host.json").exists()
    assert (package / "gpu_jobs").is_dir()  # uploaded to AzureML as job code
    for excluded in ("tests", "docs", "infra", ".venv", ".venv-functions", ".git", "requirements-dev.txt"):
        assert not (package / excluded).exists(), excluded


def test_the_worker_indexes_the_app_on_python_313(host: FunctionsHost) -> None:
    assert set(host.functions) == EXPECTED
    assert host.worker_metadata.runtime_name == "python"
    assert host.worker_metadata.runtime_version.startswith("3.13")
    requests = host.functions["experiment_requests"].bindings["message"]
    assert (requests["type"], requests["queueName"]) == ("queueTrigger", "experiment-requests")
    assert host.functions["sweep"].bindings["timer"]["type"] == "timerTrigger"


def test_http_as_the_host_forwards_it(host: FunctionsHost) -> None:
    assert host.http("GET", "/api/health").status == 200
    assert host.http("GET", "/api/health", key=False).status == 401  # authLevel function: the host refuses
    posted = host.http("POST", "/api/experiments", json.dumps(azureml_spec()), {"Content-Type": "application/json"})
    assert posted.status == 202, posted.body
    experiment = posted.json()["id"]
    assert posted.headers["location"] == f"/api/experiments/{experiment}"
    status = host.http("GET", f"/api/experiments/{experiment}")
    assert status.status == 200 and status.json()["status"] == "SUBMITTED"
    local = host.http(
        "POST",
        "/api/experiments",
        json.dumps(azureml_spec(compute={"backend": "local"})),
        {"Content-Type": "application/json"},
    )
    assert local.status == 422 and "compute.backend" in local.body.decode()  # hosted mode: WEBSITE_SITE_NAME


def test_queue_messages_as_the_host_delivers_them(host: FunctionsHost) -> None:
    """Base64 as stored; a body's ``id`` replaces ``message.id`` (the host's metadata merge), and nothing
    depends on it: an envelope is keyed by its own id, a bare spec by the real message id."""
    envelope = {"id": "exp-worker-1", "spec": azureml_spec(name="by-envelope")}
    host.queue("experiment_requests", b64(envelope), message_id="msg-a")
    assert "request exp-worker-1 -> experiment exp-worker-1" in host.log_tail(20_000)  # message.id was replaced
    host.queue("experiment_requests", b64(envelope), message_id="msg-b", dequeue_count=2)
    bare = azureml_spec(name="bare-spec")
    host.queue("experiment_requests", b64(bare), message_id="msg-c")
    host.queue("experiment_requests", b64(bare), message_id="msg-c", dequeue_count=2)  # redelivered
    listed = host.http("GET", "/api/experiments?limit=100").json()
    names = [item["name"] for item in listed["items"]]
    assert names.count("by-envelope") == 1 and names.count("bare-spec") == 1, names

    refused = host.queue("experiment_requests", b64({"id": "exp-worker-bad", "spec": {"name": "x"}}))
    assert refused.result.status == host.protos.StatusResult.Success  # final: dead-lettered, not retried
    assert host.http("GET", "/api/experiments/exp-worker-bad").json()["status"] == "FAILED"
    assert "dead-lettered without retries" in host.log_tail(20_000)
    with pytest.raises(WorkerError, match="not base64"):
        host.queue("experiment_requests", json.dumps(bare))  # sent without base64: the host never runs it


def test_the_timer_runs_in_the_worker(host: FunctionsHost) -> None:
    response = host.timer("sweep")
    assert response.result.status == host.protos.StatusResult.Success
    assert re.search(r"sweep: ", host.log_tail(20_000))


# ------------------------------------------------------------------------------------------ what only the worker sees
def broken_variant(package: Path, tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the deployed package whose function_app.py has ``old`` replaced by ``new`` (once, exactly)."""
    variant = deploy_package(package, tmp_path / "variant")
    source = (variant / "function_app.py").read_text()
    assert source.count(old) == 1, f"function_app.py no longer contains {old!r}: update the variant"
    (variant / "function_app.py").write_text(source.replace(old, new))
    return variant


def local_settings(tmp_path: Path) -> dict[str, str]:
    return {"RAPIDS_HPO_HOME": str(tmp_path / "home"), "WEBSITE_SITE_NAME": "rapids-hpo-test"}


def test_a_queue_parameter_of_the_wrong_type_fails_indexing(package: Path, tmp_path: Path) -> None:
    require_worker()
    old = "def experiment_events(message: func.QueueMessage,"
    variant = broken_variant(package, tmp_path, old, old.replace("QueueMessage", "HttpRequest"))
    with pytest.raises(WorkerError) as failed, FunctionsHost(variant, local_settings(tmp_path)):
        pass
    assert failed.value.step == "FunctionEnvironmentReloadRequest" and "FunctionLoadError" in str(failed.value)
    assert "experiment_events" in failed.value.message and "message" in failed.value.message


def test_a_queue_function_returning_a_value_fails_each_invocation(package: Path, tmp_path: Path) -> None:
    from shared.records import EventType, ExperimentEvent

    require_worker()
    variant = broken_variant(
        package, tmp_path, '    logging.info("event %s: %s", message.id, outcome)\n', "    return outcome\n"
    )
    event = ExperimentEvent(type=EventType.POLL, experiment_id="exp-nowhere").model_dump_json()
    with FunctionsHost(variant, local_settings(tmp_path)) as host:
        assert set(host.functions) == EXPECTED  # it indexes: the fault shows only when it runs
        with pytest.raises(WorkerError, match=r"RuntimeError.*without a \$return binding"):
            host.queue("experiment_events", base64.b64encode(event.encode()).decode())


def test_a_module_missing_from_requirements_fails_indexing(package: Path, tmp_path: Path) -> None:
    """dask is in the dev venv (the in-process tests import it fine) but not in requirements.txt."""
    require_worker()
    variant = broken_variant(package, tmp_path, "import logging\n", "import logging\n\nimport dask  # noqa: F401\n")
    with pytest.raises(WorkerError) as failed, FunctionsHost(variant, local_settings(tmp_path)):
        pass
    assert "ModuleNotFoundError" in str(failed.value) and "dask" in failed.value.message


def test_the_timers_first_run_imports_no_sdk_it_does_not_use(package: Path, tmp_path: Path) -> None:
    """A fresh instance's first timer run (``-X importtime`` in the worker): only the orphan finders are built,
    so neither azure-ai-ml nor the azureml backend is imported; nor is either imported to index the app. (The
    registry imports each backend package for its compute section: ``shared.backends.azureml`` and its
    ``section`` are light; the backend's modules behind its lazy ``__getattr__`` are what must stay out.)"""
    require_worker()
    with FunctionsHost(package, local_settings(tmp_path), import_profile=True) as host:
        indexed = host.imports_since(0)
        assert "shared.api" in indexed  # function_app.py itself is loaded from its path, not imported by name
        offset = host.log_size()
        host.timer("sweep")
        first_run = host.imports_since(offset)
    assert "shared.backends.vmcluster.backend" in first_run, "the orphan finder is built on the first run"
    everything = {**indexed, **first_run}
    azureml_modules = {m for m in everything if m.startswith("shared.backends.azureml")}
    assert azureml_modules <= {"shared.backends.azureml", "shared.backends.azureml.section"}, azureml_modules
    for heavy in ("azure.ai.ml", "mlflow", "dask"):
        assert not [m for m in everything if m == heavy or m.startswith(heavy + ".")], heavy


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_an_experiment_completes_through_the_worker(azurite: str, package: Path, tmp_path: Path) -> None:
    """Submit over HTTP; the host delivers each ``experiment-events`` message from Azurite (as stored: base64) to
    the worker until the experiment completes. The azureml backend runs in the worker with the real azure-ai-ml
    and MLflow against the AzureML stand-in, authenticated as the Function App is (its managed identity's
    token endpoint); its sweep runs as the deployment's compute identity."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import QueueClient

    from shared.backends.azureml import CHECK_OUTPUT, check_job_name_for, job_name_for
    from shared.backends.azureml.refit_job import refit_job_name_for
    from tests.azureml_server import AzureMLStandIn, Child
    from tests.fakes.azureml import PASSED
    from tests.rbac import AzureMLNames, function_app_rbac

    require_worker()
    uai = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aml"
    client_id = "00000000-0000-0000-0000-0000000000e2"  # a GUID, as Entra's are
    roles = function_app_rbac("sub-1", "rg-1", azureml=AzureMLNames("ws-1", "aml"))  # ARM's check, as deployed
    with AzureMLStandIn.on_azurite(
        azurite, subscription="sub-1", resource_group="rg-1", workspace="ws-1", rbac=roles
    ) as workspace:
        settings = {
            **app_settings(azurite, tmp_path / "home"),
            **workspace.environ(),
            **workspace.managed_identity_environ(),
            "RAPIDS_HPO_POLL_SECONDS": "0",
            "RAPIDS_HPO_INSTANCE_ID": "st-e2e",
            "AZUREML_COMPUTE_IDENTITY_ID": uai,
            "AZUREML_COMPUTE_IDENTITY_CLIENT_ID": client_id,
        }
        events = QueueClient.from_connection_string(azurite, "experiment-events")  # no decode policy: as stored
        try:
            events.create_queue()
        except ResourceExistsError:
            events.clear_messages()  # what the module's other tests left
        with FunctionsHost(package, settings) as host:
            register = {"register_model": {"name": "rapids-hpo-e2e"}}
            posted = host.http(
                "POST",
                "/api/experiments",
                json.dumps(azureml_spec(output=register)),
                {"Content-Type": "application/json"},
            )
            assert posted.status == 202, posted.body
            experiment = posted.json()["id"]
            job = job_name_for(experiment)
            mlmodel = b"flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n"
            files = {"model.joblib": b"best", "mlflow/MLmodel": mlmodel, "mlflow/model.pkl": b"pickled"}
            best = Child(
                f"{job}_0",
                ["Running", "Completed"],
                history={1: 0.8, 2: 0.84},
                draw={"n_estimators": 10},
                params={"engine": "cuml"},
            )
            other = Child(f"{job}_1", ["Completed"], history={1: 0.7, 2: 0.71}, draw={"n_estimators": 20})
            workspace.script(job, ["Preparing", "Running", "Completed"], [(1, best), (2, other)])
            verdict = {CHECK_OUTPUT: {"data_check.json": PASSED}}  # the data check's node, scripted
            workspace.script_command_job(check_job_name_for(experiment), ["Completed"], verdict)
            refit = refit_job_name_for(experiment)  # the best trial's refit, scripted: it saves the model
            workspace.script_command_job(refit, ["Running", "Completed"], {"model": files})

            delivered = 0
            for _ in range(60):  # until the queue is drained (teardown included) and the experiment COMPLETED
                message = next(iter(events.receive_messages(max_messages=1, visibility_timeout=30)), None)
                if message is None:
                    status = host.http("GET", f"/api/experiments/{experiment}").json()
                    if status["status"] == "COMPLETED":
                        break
                    time.sleep(0.2)
                    continue
                host.queue(
                    "experiment_events", message.content, message_id=message.id, dequeue_count=message.dequeue_count
                )
                events.delete_message(message)
                delivered += 1
            else:
                raise AssertionError(f"not completed after {delivered} events: {status}; log:\n{host.log_tail()}")
            assert [h["status"] for h in status["history"]] == [
                "SUBMITTED",
                "PROVISIONING",
                "RUNNING",
                "FINALIZING",
                "COMPLETED",
            ]
            trials = host.http("GET", f"/api/experiments/{experiment}/trials").json()
            model = host.http("GET", f"/api/experiments/{experiment}/model")

        assert status["best"]["number"] == 0 and status["best"]["value"] == pytest.approx(0.84)
        assert len(trials["items"] if isinstance(trials, dict) else trials) == 2
        assert model.status == 200
        check, sweep, refit_put = workspace.calls("PUT", "/jobs/")
        assert check.body["properties"]["jobType"] == "Command" and sweep.body["properties"]["jobType"] == "Sweep"
        assert refit_put.path.endswith(refit) and "gpu_jobs.refit_job" in refit_put.body["properties"]["command"]
        for put in (check, sweep, refit_put):
            assert put.body["properties"]["identity"] == {"identityType": "Managed", "clientId": client_id}
        cluster = workspace.computes["rapids-gpu"]
        assert (
            uai in cluster["identity"]["userAssignedIdentities"] and cluster["tags"]["rapids-hpo.instance"] == "st-e2e"
        )
        registered = workspace.assets["models/rapids-hpo-e2e/1"]["properties"]
        assert registered["tags"]["rapids-hpo.instance"] == "st-e2e"
        assert workspace.calls("GET", "/msi/token"), "the worker authenticated as a managed identity"
        assert workspace.unrouted == []


# ------------------------------------------------------------------------------------------ the lock
def test_requirements_txt_is_a_full_lock_of_requirements_in() -> None:
    """Every line of requirements.txt pins one exact version, and every requirement of requirements.in that
    applies on the Function App's Python is met by those pins: an edit of requirements.in without `make lock`
    (or an unpinned line) fails here, before Azure's remote build would resolve something else."""
    from packaging.requirements import Requirement

    lock_text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    python = re.search(r"on Python (3\.\d+)\.\d+", lock_text)
    assert python, "requirements.txt names the Python it was locked on (make lock)"
    pins: dict[str, str] = {}
    for line in lock_text.splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==" and not requirement.marker, line
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    environment = {"python_version": python.group(1), "python_full_version": f"{python.group(1)}.0"}
    for raw in (ROOT / "requirements.in").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.txt: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {line}"
    assert pins["azure-functions-runtime"] and pins["azure-functions"].startswith("2.")
