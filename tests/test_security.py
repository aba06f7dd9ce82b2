"""The trust boundary as a hostile client tries it (issue 10): each test names the finding it covers.

Every refusal is a 4xx whose body names the field, and nothing is stored for a refused request.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.api import MAX_BODY_BYTES, create_api
from shared.cli.serve import serve_settings
from shared.config import EXPERIMENT_ID_PATTERN
from shared.handlers import InvalidRequest, handle_request_message
from shared.records import ExperimentStatus
from shared.spec import MAX_DEPTH, SpecError, SpecPolicy, load_spec
from tests.control_plane import tiny_spec

ROOT = Path(__file__).resolve().parents[1]
YAML = {"content-type": "application/yaml"}
"""A document's type (tests/test_web_edge.py: any other is 415)."""


@pytest.fixture
def client(ctx):
    return TestClient(create_api(context=ctx), base_url="http://localhost")


@pytest.fixture
def hosted(ctx):
    ctx.settings = replace(ctx.settings, hosted=True, data_hosts=(".data.example.org",))
    return ctx


def hosted_spec(uri: str) -> dict:
    document = tiny_spec(compute={"backend": "azureml", "compute_name": "gpu-cluster"})
    document["dataset"] = {**document["dataset"], "uri": uri}
    return document


def stored(ctx) -> int:
    return len(ctx.store.list_experiments()[0])


def refused(response, status: int, loc: str, fragment: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert any(e["loc"] == loc and fragment in e["msg"] for e in body["errors"]), body
    return body


# ------------------------------------------------------------------ 1. the API never reads the server
@pytest.mark.parametrize(
    "body",
    [
        json.dumps(str(ROOT / "examples" / "flights-rf.yaml")),  # a JSON string naming a path
        str(ROOT / "examples" / "flights-rf.yaml"),  # a one-line YAML "path"
        "examples/flights-rf.yaml",
        json.dumps(str(ROOT / "local.settings.json.example")),
    ],
)
def test_a_body_naming_a_server_path_is_never_read(client, ctx, body):
    response = client.post("/api/experiments", headers=YAML, content=body)
    answer = refused(response, 422, "body", "never a file name")
    assert "IsEncrypted" not in response.text and "Values" not in response.text  # nothing read, nothing echoed
    assert answer["detail"].startswith("the spec must be a mapping")
    assert stored(ctx) == 0


# --------------------------------------------------------- 2. one strict parser for HTTP, queue, CLI
DUPLICATE_YAML = "name: a\nname: b\n"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
)
HOSTILE_DOCUMENTS = {
    "duplicate YAML key": (DUPLICATE_YAML.encode(), 422, "duplicate key 'name'"),
    "duplicate JSON key": (b'{"name": "a", "name": "b"}', 422, "duplicate key 'name'"),
    "not UTF-8": (b"name: \xff\xfe\n", 422, "not UTF-8"),
    "alias bomb": (ALIAS_BOMB.encode(), 422, "expands to more than"),
    "recursive alias": (b"a: &a [*a]\n", 422, "contains it"),
    "deep YAML": (("a: " + "[" * 200 + "]" * 200).encode(), 422, "nests deeper than"),
    "deep JSON": (("{" + '"a": {' * 100 + "}" * 101).encode(), 422, "nests deeper than"),
    "python tag": (b"name: !!python/object/apply:os.system [id]\n", 422, "invalid YAML"),
    "two documents": (b"name: a\n---\nname: b\n", 422, "invalid YAML"),
    "non-string key": (b"1: a\n", 422, "keys must be strings"),
    "a list": (b"[1, 2]", 422, "must be a mapping"),
    "empty": (b"  \n", 422, "empty"),
}


@pytest.mark.parametrize("name", HOSTILE_DOCUMENTS)
def test_hostile_documents_are_refused_by_the_api(client, ctx, name):
    body, status, fragment = HOSTILE_DOCUMENTS[name]
    refused(client.post("/api/experiments", headers=YAML, content=body), status, "body", fragment)
    assert stored(ctx) == 0


@pytest.mark.parametrize("name", HOSTILE_DOCUMENTS)
def test_hostile_documents_are_refused_by_the_cli_loader(tmp_path, name):
    body, _, fragment = HOSTILE_DOCUMENTS[name]
    (tmp_path / "spec.yaml").write_bytes(body)
    with pytest.raises(SpecError) as raised:
        load_spec(tmp_path / "spec.yaml")
    assert fragment in str(raised.value)


def test_an_oversize_body_is_413_before_it_is_parsed(client, ctx):
    refused(client.post("/api/experiments", headers=YAML, content=b"#" * (MAX_BODY_BYTES + 1)), 413, "body", "limit")
    streamed = client.post("/api/experiments", headers=YAML, content=iter([b"#" * 65536] * 8))  # no content-length
    assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
    assert stored(ctx) == 0


def test_nesting_at_the_limit_is_read(tmp_path):
    inner = "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3)
    with pytest.raises(SpecError) as raised:  # read fine, then refused by the schema (not by depth)
        load_spec(f"name: x\ntags: {{a: {inner}}}\n")
    assert "nests deeper" not in str(raised.value)


@pytest.mark.parametrize(
    "message",
    [
        {"id": "exp-dup", "spec": DUPLICATE_YAML},  # the spec as YAML text
        '{"id": "exp-dup", "spec": {"name": "a", "name": "b"}}',  # duplicate keys in the JSON envelope
        {"id": "exp-dup", "spec": ALIAS_BOMB},
    ],
)
def test_a_hostile_queue_message_naming_an_id_leaves_a_failed_record(ctx, message):
    body = message if isinstance(message, str) else json.dumps(message)
    with pytest.raises(InvalidRequest):  # raised to the trigger, which dead-letters it (take_request_message)
        handle_request_message(ctx, body.encode(), message_id="m-1")
    record = ctx.store.get_experiment("exp-dup")
    assert record.status is ExperimentStatus.FAILED and "invalid request" in record.error


def test_a_queue_message_with_a_malformed_id_is_refused_and_stores_nothing(ctx):
    body = json.dumps({"id": "../../etc", "spec": tiny_spec()})
    with pytest.raises(InvalidRequest) as raised:
        handle_request_message(ctx, body, message_id="m-1")
    assert raised.value.errors[0]["loc"] == "id"
    assert stored(ctx) == 0


def test_unreadable_queue_bytes_raise_without_a_record(ctx):
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        handle_request_message(ctx, b"\xff\xfe{", message_id="m-1")
    assert stored(ctx) == 0


# --------------------------------------------------------------- 3. ids are checked at the edge
MALFORMED_IDS = ["é", "exp-\u200b", "a" * 65, "exp-%00", "exp%0Aid", "-leading-dash", "exp id", "exp.id"]


@pytest.mark.parametrize("bad_id", MALFORMED_IDS)
def test_malformed_ids_are_4xx_on_every_route(client, bad_id):
    for method, suffix in [("get", ""), ("delete", ""), ("get", "/trials"), ("get", "/model")]:
        response = client.request(method, f"/api/experiments/{bad_id}{suffix}")
        assert response.status_code in {404, 422}, (method, suffix, response.status_code, response.text)
        if response.status_code == 422:
            assert response.json()["errors"][0]["loc"] == "path.experiment_id"


def test_the_openapi_document_states_the_id_pattern(client):
    document = client.get("/api/openapi.json").json()
    for path, item in document["paths"].items():
        if "{experiment_id}" in path:
            for operation in item.values():
                (param,) = [p for p in operation["parameters"] if p["name"] == "experiment_id"]
                assert param["schema"]["pattern"] == EXPERIMENT_ID_PATTERN


# -------------------------------------------- 4. a request never names what the app runs or joins
def test_hosted_mode_refuses_the_local_backend(client, hosted):
    answer = refused(client.post("/api/experiments", json=tiny_spec()), 422, "compute.backend", "local backend")
    assert answer["detail"] == "invalid experiment spec"
    assert stored(hosted) == 0


def test_the_local_backend_stays_allowed_outside_hosted_mode(client, ctx):
    assert client.post("/api/experiments", json=tiny_spec()).status_code == 202


def test_hosted_mode_is_on_in_a_function_app(monkeypatch, tmp_path):
    from shared.config import Settings

    monkeypatch.setenv("RAPIDS_HPO_HOME", str(tmp_path))
    assert not Settings.from_env().hosted
    monkeypatch.setenv("WEBSITE_SITE_NAME", "my-function-app")
    assert Settings.from_env().hosted
    monkeypatch.delenv("WEBSITE_SITE_NAME")
    monkeypatch.setenv("RAPIDS_HPO_HOSTED", "1")
    monkeypatch.setenv("RAPIDS_HPO_DATA_HOSTS", "Data.Example.org, .lake.example.com")
    settings = Settings.from_env()
    assert settings.hosted and settings.data_hosts == ("data.example.org", ".lake.example.com")


def test_a_spec_cannot_name_a_scheduler_to_join(client, ctx):
    document = tiny_spec(compute={"backend": "local", "scheduler_address": "tcp://attacker.example:8786"})
    refused(client.post("/api/experiments", json=document), 422, "compute.scheduler_address", "not permitted")
    assert stored(ctx) == 0


# ------------------------------------------------ 5. data URIs reach neither the host nor metadata
REFUSED_WHEN_HOSTED = [
    "/etc/passwd",
    "data/flights.parquet",
    "~/flights.csv",
    "file:///etc/passwd",
    "http://example.blob.core.windows.net/c/flights.parquet",
    "http://169.254.169.254/metadata/instance?api-version=2021-02-01",
    "https://169.254.169.254/metadata/identity/oauth2/token",
    "https://[fd00:ec2::254]/latest",
    "https://2852039166/metadata",
    "https://0xa9.0xfe.0xa9.0xfe/metadata",
    "https://127.0.0.1:10000/devstoreaccount1/c/x.csv",
    "https://localhost/x.csv",
    "https://metadata.azure.internal/x",
    "https://evil.example.com/flights.parquet",
    "https://evil.example.com/?.blob.core.windows.net",
    "https://user:pw@acct.blob.core.windows.net/c/x.csv",
    "abfss://c@evil.example.com/x.parquet",
    "abfss://c@10.0.0.5/x.parquet",
    "azureml:../../x:1",
]
ALLOWED_WHEN_HOSTED = [
    "builtin://nycflights13",
    "abfss://data@acct.dfs.core.windows.net/flights/2013.parquet",
    "abfs://data/flights.parquet",
    "az://data/flights.parquet",
    "https://acct.blob.core.windows.net/data/flights.parquet",
    "https://acct.dfs.core.windows.net/data/flights.parquet?sv=2024-01-01",
    "https://lake.data.example.org/flights.parquet",  # on RAPIDS_HPO_DATA_HOSTS (".data.example.org")
    "azureml://datastores/workspaceblobstore/paths/flights/",
    "azureml:flights:3",
]


@pytest.mark.parametrize("uri", REFUSED_WHEN_HOSTED)
def test_hosted_mode_refuses_data_uris_off_azure_storage(client, hosted, uri):
    response = client.post("/api/experiments", json=hosted_spec(uri))
    refused(response, 422, "dataset.uri")
    assert stored(hosted) == 0


@pytest.mark.parametrize("uri", ALLOWED_WHEN_HOSTED)
def test_hosted_mode_accepts_azure_storage_and_azureml_data(client, hosted, uri):
    response = client.post("/api/experiments", json=hosted_spec(uri))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("uri", ["data/flights.parquet", "file:///tmp/x.csv", "http://127.0.0.1:8000/x.csv"])
def test_local_data_stays_allowed_outside_hosted_mode(uri):
    assert load_spec(tiny_spec(dataset={"uri": uri, "target": "y"})).dataset.uri == uri


def test_control_characters_in_a_uri_are_refused_everywhere():
    with pytest.raises(SpecError) as raised:
        load_spec(tiny_spec(dataset={"uri": "abfss://c@a.dfs.core.windows.net/x\n#cloud-config", "target": "y"}))
    assert raised.value.errors[0]["loc"] == "dataset.uri"


def test_the_queue_applies_hosted_mode_too(hosted):
    body = json.dumps({"id": "exp-local", "spec": tiny_spec()})
    with pytest.raises(InvalidRequest) as raised:
        handle_request_message(hosted, body, message_id="m-1")
    assert raised.value.errors[0]["loc"] == "compute.backend"
    assert hosted.store.get_experiment("exp-local").status is ExperimentStatus.FAILED


def test_policy_outside_hosted_mode_adds_nothing():
    spec = load_spec(tiny_spec(dataset={"uri": "/data/x.csv", "target": "y"}))
    SpecPolicy().check(spec)


# ------------------------------------------------- serve beyond loopback: hosted rules (tests/test_web_edge.py)
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "my-host.example", "127.0.0.1.nip.io"])
def test_serve_beyond_loopback_is_hosted(ctx, host):
    assert serve_settings(ctx.settings, host).hosted


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_serve_on_loopback_is_not_hosted(ctx, host):
    assert not serve_settings(ctx.settings, host).hosted


def test_with_a_key_every_request_must_send_it(ctx):
    client = TestClient(create_api(context=ctx, function_key="k-123"), base_url="http://localhost")
    assert client.get("/api/health").status_code == 401
    assert client.get("/api/openapi.json").status_code == 401
    assert client.get("/api/health", headers={"x-functions-key": "wrong"}).status_code == 401
    assert client.get("/api/health", headers={"x-functions-key": "k-123"}).status_code == 200
    assert client.get("/api/health", params={"code": "k-123"}).status_code == 200  # the Functions host's form
    assert client.post("/api/experiments", json=tiny_spec()).status_code == 401
    assert stored(ctx) == 0


# ------------------------------------------------- 8. the suite can never reach a real subscription
def test_the_suite_runs_without_azure_credentials():
    leaked = [n for n in os.environ if n.upper().startswith(("AZURE_", "AZUREML_", "MSI_", "IDENTITY_"))]
    assert leaked == ["AZURE_CONFIG_DIR"]
    assert not os.listdir(os.environ["AZURE_CONFIG_DIR"])  # no `az login` to borrow
    assert "WEBSITE_SITE_NAME" not in os.environ and "RAPIDS_HPO_HOSTED" not in os.environ
