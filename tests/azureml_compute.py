"""The AzureML stand-in's compute: runs a command job the way an AmlCompute node runs one.

What AzureML does with a submitted command job, played here for :class:`tests.azureml_server.AzureMLStandIn`:
the code snapshot the SDK uploaded is downloaded from the datastore (Azurite) into a fresh folder, each
``uri_file``/``uri_folder`` input on the default datastore is made available as a local path (AzureML mounts
it; a path that is not there fails the job before the command runs, as a failed mount does), each output is an
empty folder, the ``${{inputs.*}}``/``${{outputs.*}}`` references are substituted and the command runs under
``bash`` in the code folder with the job's environment variables, ``python`` being this interpreter (the
image's). The output folders are then uploaded to the datastore under ``azureml/<job>/<output>/`` (AzureML's
default output path) and the job ends ``Completed`` or ``Failed`` by the command's exit status.

The command sees only its code snapshot on ``PYTHONPATH``: not this checkout, so it proves what was uploaded.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.azureml_routes import Sweep, output_path

if TYPE_CHECKING:
    from tests.azureml_server import AzureMLStandIn

DATASTORE_PATH = re.compile(r"^azureml://datastores/workspaceblobstore/paths/(?P<path>.+)$")


@dataclass(frozen=True)
class Ran:
    """What the played node did: the command's exit status and its output (stderr last)."""

    returncode: int
    log: str


def _download(ws: AzureMLStandIn, prefix: str, dest: Path) -> int:
    """Every blob under ``prefix`` into ``dest`` (paths kept below the prefix); the count."""
    container = ws._container_client()
    count = 0
    for name in ws.blob_names(prefix):
        target = dest / name[len(prefix) :].lstrip("/") if name != prefix else dest / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(container.download_blob(name).readall())
        count += 1
    return count


def _code(ws: AzureMLStandIn, job: dict[str, object], dest: Path) -> Path:
    code_id = str(job["codeId"])
    found = re.search(r"/codes/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", code_id)
    assert found, f"the job's codeId is not a code version: {code_id}"
    asset = ws.assets[f"codes/{found['name']}/{found['version']}"]["properties"]
    # azure-ai-ml uploads the snapshot through the pending upload's container SAS, to <folder name>/ at that
    # container's root (the stand-in hands out the datastore's container), and registers a codeUri ending in it.
    folder = str(asset["codeUri"]).rstrip("/").rsplit("/", 1)[1]
    assert _download(ws, f"{folder}/", dest), f"the code snapshot {folder}/ is empty"
    return dest


def run_command_job(ws: AzureMLStandIn, name: str, *, timeout_s: float = 300) -> Ran:
    """Run command job ``name`` as its compute would; its status becomes ``Running`` then the outcome."""
    job = ws.jobs[name]["properties"]
    assert job.get("jobType") == "Command", f"{name} is not a command job"
    with tempfile.TemporaryDirectory(prefix="aml-node-") as tmp:
        root = Path(tmp)
        code = _code(ws, job, root / "code")
        line = str(job["command"])
        for input_name, spec in (job.get("inputs") or {}).items():
            where = DATASTORE_PATH.match(str(spec.get("uri", "")))
            assert where, f"the stand-in's node mounts datastore paths only, not {spec.get('uri')}"
            local = root / "inputs" / input_name
            if not _download(ws, where["path"], local):
                ws.sweeps[name] = Sweep(["Running", "Failed"], [])  # the mount fails: the command never runs
                return Ran(1, f"input {input_name}: {where['path']} not found in the datastore")
            if spec.get("jobInputType") == "uri_file":
                local = next(p for p in local.rglob("*") if p.is_file())
            line = line.replace(f"${{{{inputs.{input_name}}}}}", str(local))
        outputs = {out: root / "outputs" / out for out in job.get("outputs") or {}}
        for out, folder in outputs.items():
            folder.mkdir(parents=True)
            line = line.replace(f"${{{{outputs.{out}}}}}", str(folder))
        shims = root / "bin"
        shims.mkdir()
        (shims / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (shims / "python").chmod(0o755)
        env = {
            "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(root),
            "PYTHONPATH": str(code),
            **{k: str(v) for k, v in (job.get("environmentVariables") or {}).items()},
        }
        done = subprocess.run(
            ["bash", "-c", line], cwd=code, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        for out, folder in outputs.items():
            for path in folder.rglob("*"):
                if path.is_file():
                    ws.put_blob(output_path(name, out) + path.relative_to(folder).as_posix(), path.read_bytes())
    ws.sweeps[name] = Sweep(["Running", "Completed" if done.returncode == 0 else "Failed"], [])
    return Ran(done.returncode, done.stdout + done.stderr)
