"""A relative ``dataset.uri`` (issue 30): relative to the spec file for the CLI, a 422 over the API and on
the request queue (relative to what?), and a missing file named with where it was looked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from gpu_jobs.data import list_parts
from gpu_jobs.errors import UserError
from shared.api import create_api
from shared.cli.server_keys import read_key
from shared.handlers.intake import InvalidRequest, handle_request_message
from shared.spec import SpecPolicy, load_spec
from shared.spec.loading import read_spec_file
from shared.spec.policy import is_relative_path
from tests.control_plane import local_context, tiny_spec
from tests.test_end_to_end import ROOT, free_port

RELATIVE = ["data.csv", "./data.csv", "../data/x.parquet", "sub/dir/", "..", "~/x.csv", "C:data.csv"]
NOT_RELATIVE = [
    "/abs/data.csv",
    "builtin://nycflights13",
    "https://acct.blob.core.windows.net/c/x.csv",
    "abfss://c@acct.dfs.core.windows.net/x",
    "file:///tmp/x.csv",
    "azureml:flights:3",
    "azureml://datastores/d/paths/x.csv",
    "C:\\data\\x.csv",
]


@pytest.mark.parametrize("uri", RELATIVE)
def test_relative_paths_are_told_apart(uri):
    assert is_relative_path(uri)


@pytest.mark.parametrize("uri", NOT_RELATIVE)
def test_urls_assets_and_absolute_paths_are_not_relative(uri):
    assert not is_relative_path(uri)


def write_spec(folder: Path, uri: str, *, suffix: str = ".yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"spec{suffix}"
    document = tiny_spec(dataset={"uri": uri, "target": "y"})
    path.write_text(yaml.safe_dump(document) if suffix == ".yaml" else json.dumps(document))
    return path


def test_the_cli_resolves_a_relative_uri_against_the_spec_files_folder_not_the_working_one(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "project" / "specs", "../data/t.csv")
    monkeypatch.chdir(tmp_path)  # elsewhere: the working folder must not matter
    assert read_spec_file(Path("project/specs/spec.yaml"))["dataset"]["uri"] == str(tmp_path / "project/data/t.csv")
    assert load_spec(spec).dataset.uri == str(tmp_path / "project" / "data" / "t.csv")
    for uri in NOT_RELATIVE:
        assert read_spec_file(write_spec(tmp_path / "x", uri))["dataset"]["uri"] == uri


def test_the_api_refuses_a_relative_uri_naming_the_field(tmp_path):
    client = TestClient(create_api(context=local_context(tmp_path)), base_url="http://localhost")
    for uri in ("data.csv", "../../data/breast_cancer.csv"):
        document = tiny_spec(dataset={"uri": uri, "target": "y"})
        answer = client.post(
            "/api/experiments", content=json.dumps(document), headers={"content-type": "application/json"}
        )
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["errors"]
        assert error["loc"] == "dataset.uri" and "relative path" in error["msg"] and "spec file" in error["msg"]
    absolute = tiny_spec(dataset={"uri": str(tmp_path / "t.csv"), "target": "y"})
    assert client.post("/api/experiments", json=absolute).status_code == 202
    hosted = SpecPolicy(hosted=True)  # hosted: every local path is refused, relative or not, by its own rule
    with pytest.raises(Exception, match="never reads its own disk"):
        hosted.check(load_spec(tiny_spec(dataset={"uri": "data.csv", "target": "y"})))


def test_the_request_queue_refuses_a_relative_uri_and_records_why(tmp_path):
    ctx = local_context(tmp_path)
    envelope = {"id": "exp-20261204120000-abc123", "spec": tiny_spec(dataset={"uri": "t.csv", "target": "y"})}
    with pytest.raises(InvalidRequest, match="relative path"):
        handle_request_message(ctx, json.dumps(envelope))
    record = ctx.store.get_experiment("exp-20261204120000-abc123")
    assert record.status.value == "FAILED" and "relative path" in (record.error or "")


def test_a_missing_local_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        list_parts("../absent/t.csv")
    assert (
        str(caught.value)
        == f"data not found: ../absent/t.csv (looked for {tmp_path.parent / 'absent/t.csv'} on the compute)"
    )


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_rapids_hpo_submit_sends_the_resolved_path_to_a_server_with_another_working_folder(tmp_path):
    """``submit`` from the spec's own folder's parent, to a server started elsewhere: the stored spec names
    the file beside the spec, as an absolute path (a YAML file goes as JSON once rewritten)."""
    write_spec(tmp_path / "work" / "specs", "../data/t.csv")
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {**os.environ, "RAPIDS_HPO_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("AzureWebJobsStorage", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--port", str(port), "--no-workers"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            key = read_key(url)
            try:
                if key and httpx.get(f"{url}/api/health", headers={"x-functions-key": key}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert key
        submitted = subprocess.run(
            [sys.executable, "-m", "shared.cli", "submit", "specs/spec.yaml"],
            env={**env, "RAPIDS_HPO_API_URL": url},
            cwd=tmp_path / "work",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert submitted.returncode == 0, submitted.stderr
        experiment_id = submitted.stdout.strip()
        study = httpx.get(f"{url}/api/experiments/{experiment_id}/study", headers={"x-functions-key": key}).json()
        assert study["spec"]["dataset"]["uri"] == str(tmp_path / "work" / "data" / "t.csv")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
