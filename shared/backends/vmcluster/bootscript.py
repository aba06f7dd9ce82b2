"""The VMs' boot script (cloud-init), rendered here rather than by dask-cloudprovider, and why.

dask-cloudprovider renders one single-quoted shell line with the spec's ``docker_args``,
``docker_image``, ``worker_class`` and ``worker_options`` pasted in unquoted, run as root: a ``'``
breaks it, ``;`` or ``$()`` runs commands. Here the boot script is a YAML document built with
``yaml.safe_dump``; spec values reach it only as

* ``node.json``, a file whose content is JSON (the worker class and options, the experiment id, the
  area's URL and the client id of the VM's identity, no secret): data, never parsed by a shell, and
  turned into argument lists by ``boot.py``;
* the ``runcmd`` lines, ``chown`` of the node's folder, the image pull, and ``docker run ...``, in which
  every value is ``shlex.quote``-d (and was checked against strict patterns by
  :class:`~shared.compute_spec.VMClusterCompute`).

**Pulls fail.** Docker Hub allows anonymous pulls per IP per hour, and every VM of a deployment shares the
NAT gateway's one IP; registries have bad minutes. ``docker run`` pulls once and gives up, so the image is
pulled first, up to four times with growing pauses (:data:`PULL_BACKOFF_S`), and ``docker run`` tries once
more. A container that never starts (every pull failed, or Docker refused the run) would leave the VM
billed and silent until the ready timeout, so the line after ``docker run`` has the host's own Python run
``boot.py --never-started`` on failure: a final boot note, and the run fails at the next poll with why.

**Private images.** The deployment's project image lives in its registry (admin user off): each pull is
preceded by ``boot.py --registry-login`` on the host, which asks the instance metadata service for a token
of the VM's identity (ACR's audience), exchanges it at ``https://<registry>/oauth2/exchange`` for an ACR
refresh token and hands that to ``docker login`` (user ``00000000-0000-0000-0000-000000000000``, on stdin):
the boot script carries no credential, and the identity pulls only while its AcrPull assignment lives.

**Who reads the files.** cloud-init writes them ``root:root`` (``node.json`` 0600, in a root-owned
folder), but the RAPIDS image runs as its user ``rapids`` (uid 1001, ``USER rapids``): the
container could neither read its config nor write the code archive. So the boot script hands the folder
to that uid (``chown -R 1001``) before ``docker run``; the TLS key ``boot.py`` fetches lands there 0600,
readable by the container's user only. Another image must run as that uid too (``--user=1001`` in ``docker_args``).

The container runs ``boot.py`` (stdlib only), which fetches our code from the experiment's container
and starts the scheduler with the driver (head) or a worker. ``--restart=on-failure:5`` lets Docker
start a broken node again; the driver resumes from the trials in storage.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.errors import BackendError

NODE_DIR = "/opt/rapids-hpo"
"""Where the boot script puts the node's files on the VM; mounted into the container at the same path."""
BOOT_SOURCE = (Path(__file__).parent / "boot.py").read_text(encoding="utf-8")
MAX_CUSTOM_DATA = 87380
"""Azure's limit on a VM's base64 custom data."""
RESTART_POLICY = "on-failure:5"
PULL_BACKOFF_S = (15, 60, 180, 300)
"""Seconds between the image pull's tries on a VM (about nine minutes in all)."""
IMAGE_UID = 1001
"""The RAPIDS image's user (``rapids``): the node's files are handed to it before the container starts."""


@dataclass(frozen=True)
class VMPlan:
    """One head or worker VM as it will boot."""

    name: str
    size: str
    custom_data: str
    """base64 cloud-init (:func:`render_cloud_init`)."""
    image: dict[str, str]
    plan: dict[str, str] | None
    disk_size: int
    spot: bool = False


def docker_command(
    *, docker_image: str, docker_args: str, gpus: bool, env: dict[str, str], container: str = "rapids-hpo"
) -> list[str]:
    """The ``docker run`` argument list that starts ``boot.py`` in the image (host network, our files
    mounted, GPUs when the VM has them). Options are single tokens, so the list is unambiguous."""
    argv = ["docker", "run", "--detach", f"--name={container}", f"--restart={RESTART_POLICY}", "--network=host"]
    if gpus:
        argv.append("--gpus=all")
    argv += shlex.split(docker_args)
    argv.append(f"--volume={NODE_DIR}:{NODE_DIR}")
    argv += [f"--env={name}={value}" for name, value in env.items()]
    argv += [docker_image, "python", f"{NODE_DIR}/boot.py"]
    return argv


def pull_command(image: str, *, registry_login: bool = False) -> str:
    """One shell line: ``docker pull`` until it succeeds, pausing :data:`PULL_BACKOFF_S` between tries; with
    ``registry_login`` each try first signs Docker in to the deployment's registry as the VM's identity
    (``boot.py --registry-login``: a new AcrPull assignment takes a while to apply, so it is retried too)."""
    waits = " ".join(str(wait) for wait in PULL_BACKOFF_S)
    login = f"{shlex.join(['python3', f'{NODE_DIR}/boot.py', '--registry-login'])} && " if registry_login else ""
    return f'for wait in {waits}; do {login}docker pull {shlex.quote(image)} && pulled=1 && break; sleep "$wait"; done'


def start_command(docker_argv: list[str]) -> str:
    """One shell line: ``docker run``, and if it fails, ``boot.py`` on the host writes a final boot note
    with Docker's exit status and whether any pull succeeded (``pulled``, set by :func:`pull_command`;
    cloud-init runs every ``runcmd`` entry in one shell script, so the variable carries over)."""
    note = ["python3", f"{NODE_DIR}/boot.py", "--never-started"]
    return f'{shlex.join(docker_argv)} || {shlex.join(note)} "$?" "${{pulled:-0}}"'


def render_cloud_init(
    *, node: dict[str, Any], image: str, docker_argv: list[str], install_docker: bool, registry_login: bool = False
) -> str:
    """The ``#cloud-config`` document: the node's files, then the quoted ``chown``, pull and ``docker run``.

    It holds no secret (Azure: customData is readable with VM read access and from the instance metadata):
    ``node.json`` names the area and the client id of the VM's identity; the TLS key is read from the area
    at boot. A value that looks like a credential is refused (:func:`check_no_secret_in`)."""
    import yaml

    files: list[dict[str, str]] = [
        {"path": f"{NODE_DIR}/node.json", "permissions": "0600", "content": json.dumps(node, indent=1)},
        {"path": f"{NODE_DIR}/boot.py", "permissions": "0644", "content": BOOT_SOURCE},
    ]
    owner = shlex.join(["chown", "-R", str(IMAGE_UID), NODE_DIR])
    runcmd = [owner, pull_command(image, registry_login=registry_login), start_command(docker_argv)]
    document: dict[str, Any] = {"write_files": files, "runcmd": runcmd}
    if install_docker:  # plain Ubuntu: Docker from the distribution (GPU drivers need the NGC image)
        document["packages"] = ["docker.io"]
    text = "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=10**6)
    check_no_secret_in(text)
    return text


SECRET_MARKERS = ("sig=", "accountkey=", "sharedaccesssignature=", "-----begin", "private key")
"""What a SAS, a connection string or a PEM key carries: none may appear in a boot script."""


def check_no_secret_in(cloud_init: str) -> None:
    """Raise ``BackendError`` if the boot script carries something that looks like a credential."""
    lower = cloud_init.lower()
    found = [marker for marker in SECRET_MARKERS if marker in lower]
    if found:
        raise BackendError(f"refusing a VM boot script that carries a secret ({found[0]!r})", retryable=False)


def encode_custom_data(cloud_init: str, vm_name: str) -> str:
    custom_data = base64.b64encode(cloud_init.encode()).decode()
    if len(custom_data) > MAX_CUSTOM_DATA:
        raise BackendError(f"the boot script of {vm_name} exceeds Azure's custom data limit ({MAX_CUSTOM_DATA})")
    return custom_data


def new_tls_identity(common_name: str = "rapids-hpo-dask", days: int = 30) -> dict[str, str]:
    """One self-signed key and certificate for every Dask role of a cluster (as ``Security.temporary``
    does), PEM text: ``{"ca", "cert", "key"}``. Made by the control plane, kept as a secret."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {"ca": cert_pem, "cert": cert_pem, "key": key_pem}
