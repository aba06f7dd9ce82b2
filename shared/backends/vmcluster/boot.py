"""The first program a cluster VM runs, inside its container: stdlib only (our packages are not there yet).

The boot script writes this file beside ``node.json`` (the node's role and settings, and where the
experiment's area is: its URL and the client id of the VM's identity, no secret) and runs ``python boot.py``.
It fetches the code archive (and the cluster's TLS key) from the experiment's area with a token of the
VM's identity from the instance metadata service, puts the code on the Python path, and starts the node:

* head: the Dask scheduler, and beside it the HPO driver (``shared.backends.vmcluster.head``), which
  talks to the workers over the VNet and writes trials and the outcome to the experiment's container.
  The scheduler has our code, so it can deserialize the driver's task graphs.
* worker: a Dask worker of the spec's ``worker_class`` joined to the head's scheduler, preloading the
  training stack (``gpu_jobs.preload``) through the worker's own ``preload`` option: dask-cuda's
  ``CUDAWorker`` passes its own preload list to each Nanny, and distributed reads the
  ``distributed.worker.preload`` config only when none is given, so the config variable would be ignored.

The scheduler's dashboard listens on the VM's loopback only (``127.0.0.1:8787``): nothing on the network
reaches it, whatever the NSG says (and 8787 is the port the NSG's Dask rules cover).

Arguments reach the processes as argument lists, never through a shell. TLS comes from the area
(``compute/tls.json``, written to files beside this one, 0600), through Dask's config variables.

**Roles take minutes to apply.** The identity's role on the area is assigned just before the VMs are
created, and Azure applies a new assignment to Storage's data plane only after a while: a 403 (and any
network error) is retried for up to :data:`ROLE_WAIT_S`. The exit status tells the container's restart
policy whether to start the node again (non-zero: yes).

**A failed boot is visible.** Once the credential is read, any failure to start (the code archive out of
reach, a crashing scheduler or driver) is written to the area as ``artifacts/boot/<vm>.json`` (stage,
error, container start count; ``final`` on the last start the restart policy allows): the control plane
fails the run on a final note of the head at once, with that reason, instead of waiting out the ready
timeout with the VMs billed. A container that never started cannot say so itself: the boot script then
runs this file with the host's Python (``--never-started STATUS PULLED``), and it writes a final note.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STARTS_ALLOWED = 6
"""The first start and the five of ``--restart=on-failure:5`` (bootscript.RESTART_POLICY)."""


ROLE_WAIT_S = 900.0
"""How long a read or write of the area is retried (a new role assignment, a network not there yet)."""
IMDS = "http://169.254.169.254"
STORAGE_VERSION = "2021-08-06"
"""``x-ms-version`` of our blob requests (OAuth needs 2017-11-09 or later)."""


def identity_token(resource: str, client_id: str) -> dict[str, Any]:
    """A token of the VM's user-assigned identity ``client_id`` for ``resource``, from the instance metadata
    service (``AZURE_POD_IDENTITY_AUTHORITY_HOST`` points elsewhere, as azure-identity honours it too)."""
    host = os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST", IMDS).rstrip("/")
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": resource, "client_id": client_id})
    request = urllib.request.Request(f"{host}/metadata/identity/oauth2/token?{query}", headers={"Metadata": "true"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


ACR_AUDIENCE = "https://containerregistry.azure.net"
"""ACR's own token audience: accepted even where a registry refuses ARM-audience tokens (a policy option)."""
ACR_USERNAME = "00000000-0000-0000-0000-000000000000"
"""The user name ``docker login`` takes with an ACR refresh token (ACR's documented convention)."""


def registry_login(config: dict[str, Any]) -> int:
    """Sign Docker in to the deployment's registry as the VM's identity, once (the boot script's pull loop
    retries): an Entra token for ACR from the instance metadata service, exchanged at the registry's
    ``/oauth2/exchange`` for a refresh token, given to ``docker login`` on stdin (never on a command line).
    ACR checks the identity's AcrPull when Docker asks for a pull token, not here."""
    registry = config.get("registry") or {}
    server = str(registry.get("server") or "")
    try:
        aad = identity_token(ACR_AUDIENCE, str(registry["client_id"]))["access_token"]
        form = {"grant_type": "access_token", "service": server, "access_token": aad}
        request = urllib.request.Request(
            f"https://{server}/oauth2/exchange",
            urllib.parse.urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            refresh = str(json.loads(response.read())["refresh_token"])
    except (OSError, KeyError, ValueError) as exc:
        print(f"boot: signing in to {server or 'the registry'}: {exc}", file=sys.stderr, flush=True)
        return 1
    login = ["docker", "login", server, "--username", ACR_USERNAME, "--password-stdin"]
    return subprocess.run(login, input=refresh.encode(), check=False, timeout=120).returncode


class Area:
    """The experiment's area as this node reaches it: a folder (local development), or a blob container
    with a token of the VM's managed identity (``blob-identity``) or a SAS (``blob-sas``, older nodes)."""

    def __init__(self, credential: dict[str, Any]) -> None:
        self.credential = credential
        self._token: tuple[str, float] | None = None

    def _bearer(self) -> str:
        """A token of the VM's identity for Storage, from the instance metadata service (cached)."""
        if self._token is None or self._token[1] < time.time() + 300:
            answer = identity_token("https://storage.azure.com/", self.credential["token"])
            self._token = (str(answer["access_token"]), float(answer.get("expires_on") or time.time() + 600))
        return self._token[0]

    def _request(self, name: str, body: bytes | None, headers: dict[str, str]) -> urllib.request.Request:
        url = f"{self.credential['url'].rstrip('/')}/{name}"
        if self.credential["kind"] == "blob-sas":
            url = f"{url}?{self.credential['token']}"
        else:
            headers = {**headers, "Authorization": f"Bearer {self._bearer()}", "x-ms-version": STORAGE_VERSION}
        return urllib.request.Request(url, body, headers, method="PUT" if body is not None else "GET")

    def get(self, name: str, wait_s: float = ROLE_WAIT_S) -> bytes:
        if self.credential["kind"] == "folder":
            return (Path(self.credential["url"]) / name).read_bytes()
        return self._retried(name, lambda: self._request(name, None, {}), wait_s)

    def put(self, name: str, body: bytes, wait_s: float = ROLE_WAIT_S) -> None:
        if self.credential["kind"] == "folder":
            target = Path(self.credential["url"]) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            return
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
        self._retried(name, lambda: self._request(name, body, headers), wait_s)

    @staticmethod
    def _retried(name: str, request: Any, wait_s: float) -> bytes:
        deadline, attempt = time.monotonic() + wait_s, 0
        while True:
            try:
                with urllib.request.urlopen(request(), timeout=30) as response:
                    return bytes(response.read())
            except OSError as exc:  # HTTPError (a 403 while the role propagates) and URLError are OSErrors
                attempt += 1
                if time.monotonic() > deadline:
                    raise BootFailure(f"reaching {name} in the area", f"{exc} (still, after {wait_s:.0f} s)") from exc
                print(f"boot: {name}: {exc}; retrying", file=sys.stderr, flush=True)
                time.sleep(min(2.0 * attempt, 20.0))


def fetch_code(area: Area, target: Path) -> None:
    """The code archive from the experiment's area, unpacked into ``target``."""
    archive = HERE / "code.zip"
    archive.write_bytes(area.get("compute/code.zip"))
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)


def fetch_tls(area: Area, config: dict[str, Any]) -> None:
    """The cluster's TLS key and certificate from the area into ``tls/`` beside this file (0600)."""
    if not config.get("tls"):
        return
    identity = json.loads(area.get("compute/tls.json"))
    folder = HERE / "tls"
    folder.mkdir(mode=0o700, exist_ok=True)
    for name in ("ca", "cert", "key"):
        path = folder / f"{name}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(str(identity[name]))


def environment(config: dict[str, Any], code: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH", "")]))
    if config.get("tls"):
        tls = HERE / "tls"
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
        env["DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME"] = "tls"
        env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] = str(tls / "ca.pem")
        for role in ("SCHEDULER", "WORKER", "CLIENT"):
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(tls / "cert.pem")
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(tls / "key.pem")
    return env


DASHBOARD_ADDRESS = "127.0.0.1:8787"
PRELOAD = "gpu_jobs.preload"


def scheduler_command(config: dict[str, Any]) -> list[str]:
    protocol = "tls" if config.get("tls") else "tcp"
    port = str(int(config["scheduler_port"]))
    return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--protocol", protocol, "--port", port]


def run_head(config: dict[str, Any], env: dict[str, str]) -> int:
    scheduler = subprocess.Popen([*scheduler_command(config), "--dashboard-address", DASHBOARD_ADDRESS], env=env)
    head = [sys.executable, "-m", "shared.backends.vmcluster.head", "--config", str(HERE / "node.json")]
    driver = subprocess.Popen(head, env=env)
    while True:
        if driver.poll() is not None:
            scheduler.terminate()
            scheduler.wait(30)
            return driver.returncode
        if scheduler.poll() is not None:
            driver.terminate()
            driver.wait(30)
            return 1
        time.sleep(1)


def reachable(address: str) -> bool:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            return True
    except OSError:
        return False


def worker_command(config: dict[str, Any]) -> list[str]:
    """``dask spec`` for the node's worker class and options, the training stack preloaded."""
    options = dict(config.get("worker_options") or {})
    given = options.get("preload") or []
    options["preload"] = [*([given] if isinstance(given, str) else given), PRELOAD]
    spec = {"cls": config["worker_class"], "opts": options}
    return [sys.executable, "-m", "distributed.cli.dask_spec", config["scheduler_address"], "--spec", json.dumps(spec)]


def run_worker(config: dict[str, Any], env: dict[str, str]) -> int:
    """A worker for as long as the VM lives. One whose scheduler went away (a restarting head) is
    replaced by a fresh one once the scheduler is back: it joins the new scheduler."""
    address = config["scheduler_address"]
    command = worker_command(config)
    while True:
        worker = subprocess.Popen(command, env=env, start_new_session=True)
        misses = 0
        while worker.poll() is None:
            time.sleep(2)
            if not reachable(address):
                misses += 1
            elif misses >= 2:
                break
            else:
                misses = 0
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        print(f"boot: the worker ended ({worker.returncode}); joining {address} again", file=sys.stderr, flush=True)
        time.sleep(1)


class BootFailure(Exception):
    def __init__(self, stage: str, error: str) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


def count_start() -> int:
    """This container start's number (1, 2, ...), kept beside node.json across restarts."""
    counter = HERE / "starts"
    starts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(starts))
    return starts


def write_note(config: dict[str, Any], note: dict[str, Any]) -> None:
    """``artifacts/boot/<vm>.json`` in the area (best effort: a note that cannot be written is printed)."""
    name = f"artifacts/boot/{config.get('vm') or socket.gethostname()}.json"
    body = json.dumps({**note, "vm": config.get("vm"), "role": config.get("role")}).encode()
    print(f"boot: {note}", file=sys.stderr, flush=True)
    try:
        Area(config["credential"]).put(name, body, wait_s=120)
    except (OSError, BootFailure) as exc:
        print(f"boot: could not write the boot note ({exc})", file=sys.stderr, flush=True)


DOCKER_EXIT = {
    125: "Docker could not create the container",
    126: "the image's command could not be invoked",
    127: "the image has no such command",
}


def never_started(config: dict[str, Any], status: str, pulled: str) -> int:
    """The note of a container that never started (run on the host by the boot script): final, since no
    restart policy applies to a container Docker did not create."""
    code = int(status) if status.isdigit() else -1
    error = f"docker run exited {code}: {DOCKER_EXIT.get(code, 'the container did not start')}"
    if pulled != "1":
        error += " (every pull of the image failed: a registry rate limit, or no route to the registry?)"
    note = {"starts": 0, "final": True, "stage": "starting the container", "error": error, "at": time.time()}
    write_note(config, note)
    return 1


def main(argv: list[str]) -> int:
    config = json.loads((HERE / "node.json").read_text())
    if argv[:1] == ["--registry-login"]:
        return registry_login(config)
    if argv[:1] == ["--never-started"]:
        exit_status, pulled = [*argv[1:3], "", ""][:2]
        return never_started(config, exit_status, pulled)
    starts = count_start()
    note = {"starts": starts, "final": starts >= STARTS_ALLOWED}
    try:
        code, area = HERE / "code", Area(config["credential"])
        fetch_code(area, code)
        fetch_tls(area, config)
        env = environment(config, code)
        if config["role"] == "head":
            status = run_head(config, env)
            if status != 0:
                raise BootFailure("running the scheduler and the driver", f"exit status {status}")
            return 0
        return run_worker(config, env)
    except BootFailure as exc:
        write_note(config, {**note, "stage": exc.stage, "error": exc.error, "at": time.time()})
        return 1
    except Exception as exc:
        write_note(config, {**note, "stage": "starting", "error": f"{type(exc).__name__}: {exc}", "at": time.time()})
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
