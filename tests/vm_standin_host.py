"""The commands a stand-in VM's boot script may run, played (tests/vm_standin.py puts them first and alone
on the script's PATH): ``docker pull``, ``docker run``, ``chown``, ``sleep`` and ``python3 boot.py``. Any
other command is "not found", as on a host without it; the stand-in refuses a boot script that needed one.

* ``docker pull IMAGE``: fails while the VM has no way out (``STANDIN_NETWORK`` empty) or while scripted
  failures remain (``pull-failures`` in the VM's folder, one fewer per failed pull), else marks the image
  pulled;
* ``docker run ... IMAGE ...``: pulls first when the image is missing (as Docker does), then records its
  arguments (``docker-run.json``) for the stand-in to start; exit 125 when the pull fails;
* ``docker login SERVER --username USER --password-stdin`` and pulls of ``127.0.0.1:<port>/...`` images: ACR's
  token protocol against tests/registry_standin.py (a pull without a login, or by an identity without
  AcrPull, or of a digest never pushed, fails as ACR refuses it);
* ``chown [-R] UID[:GID] PATH``: on the VM's folder (``PATH`` is the VM's absolute path);
* ``sleep SECONDS``: returns at once and records the seconds asked (``sleeps``): a test reads the backoff;
* ``python3 /opt/rapids-hpo/boot.py ARGS``: the host's Python (Ubuntu's) runs the node's ``boot.py`` from
  the VM's folder, as root, with the VM's network: none at all (a namespace of its own) when it has no
  way out. Any other Python program is not played.

Run as ``python vm_standin_host.py <command> <args...>``; ``STANDIN_VM_ROOT`` is the VM's folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def _vm() -> Path:
    return Path(os.environ["STANDIN_VM_ROOT"])


def _pull(image: str) -> bool:
    vm = _vm()
    failures = vm / "pull-failures"
    remaining = int(failures.read_text()) if failures.exists() else 0
    with (vm / "pulls").open("a") as log:
        log.write(f"{image}\n")
    if not os.environ.get("STANDIN_NETWORK"):
        print(f"Error response from daemon: Get https://registry-1.docker.io/v2/: dial tcp: i/o timeout ({image})")
        return False
    if remaining > 0:
        failures.write_text(str(remaining - 1))
        print(f"Error response from daemon: toomanyrequests: You have reached your pull rate limit ({image})")
        return False
    if image.startswith("127.0.0.1:") and not _registry_pull(image):
        return False
    (vm / "pulled").write_text(image)
    return True


def _post(server: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
    """A form POST to the registry stand-in over HTTPS (the VM trusts its CA through ``SSL_CERT_FILE``)."""
    request = urllib.request.Request(
        f"https://{server}{path}",
        urllib.parse.urlencode(form).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _login(args: list[str]) -> int:
    """``docker login SERVER --username USER --password-stdin``: checks the password with the registry (its
    token endpoint, as Docker does) and keeps it in the VM's Docker config."""
    server, options = args[0], args[1:]
    if options[:1] != ["--username"] or options[2:] != ["--password-stdin"]:
        print(
            f"docker login: the stand-in plays SERVER --username USER --password-stdin, not {options}", file=sys.stderr
        )
        return 125
    password = sys.stdin.read().strip()
    status, _ = _post(
        server, "/oauth2/token", {"grant_type": "refresh_token", "service": server, "refresh_token": password}
    )
    if status != 200:
        print(f"Error response from daemon: Get https://{server}/v2/: unauthorized", file=sys.stderr)
        return 1
    auths = _vm() / "docker-config.json"
    known = json.loads(auths.read_text()) if auths.exists() else {}
    known[server] = {"username": options[1], "password": password}
    auths.write_text(json.dumps(known))
    print("Login Succeeded")
    return 0


def _registry_pull(image: str) -> bool:
    """A pull from the registry stand-in: a pull token with the stored login (none: anonymous, which ACR
    refuses), then the manifest by tag or digest."""
    server, _, rest = image.partition("/")
    repository, reference = (
        rest.split("@", 1) if "@" in rest else rest.rsplit(":", 1) if ":" in rest else (rest, "latest")
    )
    auths = _vm() / "docker-config.json"
    login = (json.loads(auths.read_text()) if auths.exists() else {}).get(server, {})
    form = {
        "grant_type": "refresh_token",
        "service": server,
        "refresh_token": login.get("password", ""),
        "scope": f"repository:{repository}:pull",
    }
    _, body = _post(server, "/oauth2/token", form)
    request = urllib.request.Request(f"https://{server}/v2/{repository}/manifests/{reference}")
    request.add_header("Authorization", f"Bearer {body.get('access_token', '')}")
    try:
        with urllib.request.urlopen(request, timeout=30):
            return True
    except urllib.error.HTTPError as error:
        errors = json.loads(error.read() or b"{}").get("errors") or [{}]
        print(
            f"Error response from daemon: {errors[0].get('code', error.code)}: {errors[0].get('message', '')} ({image})"
        )
        return False


def _image_of(args: list[str]) -> str:
    rest = list(args)
    while rest and rest[0].startswith("--"):
        rest.pop(0)
    return rest[0] if rest else ""


def _chown(args: list[str]) -> int:
    recursive = args[:1] == ["-R"]
    rest = args[1:] if recursive else args
    if len(rest) != 2:
        print(f"chown: expected [-R] UID[:GID] PATH, got {args}", file=sys.stderr)
        return 1
    owner, path = rest
    uid, _, gid = owner.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        print(f"chown: invalid user: {owner!r} (the stand-in knows numeric ids only)", file=sys.stderr)
        return 1
    top = _vm() / path.lstrip("/")
    for target in [top, *(top.rglob("*") if recursive else [])]:
        os.chown(target, int(uid), int(gid) if gid else -1)
    return 0


def _python3(args: list[str]) -> int:
    if not args or not args[0].startswith("/opt/rapids-hpo/") or not args[0].endswith("/boot.py"):
        print(f"python3: the stand-in does not play python3 {args[:1]} (only the node's boot.py)", file=sys.stderr)
        return 127
    argv = [sys.executable, str(_vm() / args[0].lstrip("/")), *args[1:]]
    if not os.environ.get("STANDIN_NETWORK"):
        argv = ["unshare", "--net", "--", *argv]
    return subprocess.run(argv, check=False, timeout=60).returncode


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "python3":
        return _python3(args)
    if command == "sleep":
        with (_vm() / "sleeps").open("a") as log:
            log.write(f"{float(args[0])}\n")
        return 0
    if command == "chown":
        return _chown(args)
    if command == "docker" and args[:1] == ["login"]:
        return _login(args[1:])
    if command == "docker" and args[:1] == ["pull"]:
        return 0 if _pull(args[1]) else 1
    if command == "docker" and args[:1] == ["run"]:
        image = _image_of(args[1:])
        if not (_vm() / "pulled").exists() and not _pull(image):
            print(f"docker: Unable to find image '{image}' locally", file=sys.stderr)
            return 125
        (_vm() / "docker-run.json").write_text(json.dumps(args[1:]))
        return 0
    print(f"{command}: the stand-in does not play {command} {' '.join(args[:1])}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
