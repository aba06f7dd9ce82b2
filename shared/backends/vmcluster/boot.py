"""The first program a cluster VM runs, inside its container: stdlib only (our packages are not there yet).

The boot script writes this file beside ``node.json`` (the node's role and settings, including the
experiment's compute credential: its area's URL and SAS) and runs ``python boot.py``. It fetches the
code archive from the experiment's area, puts it on the Python path, and starts the node:

* head: the Dask scheduler, and beside it the HPO driver (``shared.backends.vmcluster.head``), which
  talks to the workers over the VNet and writes trials and the outcome to the experiment's container.
  The scheduler has our code, so it can deserialize the driver's task graphs.
* worker: a Dask worker of the spec's ``worker_class`` joined to the head's scheduler, preloading the
  training stack (``gpu_jobs.preload``) through the worker's own ``preload`` option: dask-cuda's
  ``CUDAWorker`` passes its own preload list to each Nanny, and distributed reads the
  ``distributed.worker.preload`` config only when none is given, so the config variable would be ignored.

The scheduler's dashboard listens on the VM's loopback only (``127.0.0.1:8787``): nothing on the network
reaches it, whatever the NSG says (and 8787 is the port the NSG's Dask rules cover).

Arguments reach the processes as argument lists, never through a shell. TLS comes from the files
beside this one, through Dask's config variables. The exit status tells the container's restart
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
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STARTS_ALLOWED = 6
"""The first start and the five of ``--restart=on-failure:5`` (bootscript.RESTART_POLICY)."""


def fetch_code(config: dict[str, Any], target: Path) -> None:
    """The code archive from the experiment's area: a blob read with the SAS, or (a local store's
    area, development) a file."""
    credential = config["credential"]
    archive = HERE / "code.zip"
    if credential["kind"] == "folder":
        archive.write_bytes((Path(credential["url"]) / "compute" / "code.zip").read_bytes())
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(target)
        return
    url = f"{credential['url'].rstrip('/')}/compute/code.zip?{credential['token']}"
    for attempt in range(30):
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                archive.write_bytes(response.read())
            break
        except OSError as exc:
            print(f"boot: fetching the code archive failed ({exc}); retrying", file=sys.stderr, flush=True)
            time.sleep(min(2 * (attempt + 1), 20))
    else:
        raise BootFailure("fetching the code archive", "unreachable after 30 attempts (no way out of the subnet?)")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)


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
    credential = config["credential"]
    try:
        if credential["kind"] == "folder":
            target = Path(credential["url"]) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            return
        url = f"{credential['url'].rstrip('/')}/{name}?{credential['token']}"
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(url, body, headers, method="PUT"), timeout=30):
            pass
    except OSError as exc:
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
    if argv[:1] == ["--never-started"]:
        exit_status, pulled = [*argv[1:3], "", ""][:2]
        return never_started(config, exit_status, pulled)
    starts = count_start()
    note = {"starts": starts, "final": starts >= STARTS_ALLOWED}
    try:
        code = HERE / "code"
        fetch_code(config, code)
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
