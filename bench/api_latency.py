"""API throughput and latency under load: POST and GET against ``rapids-hpo serve``.

Starts ``rapids-hpo serve --no-workers`` (the API alone: submitted experiments are stored and queued, not
run) on a free loopback port, over local adapters in a temporary folder (``--storage local``) or over
Azure Storage on a fresh Azurite (``--storage azurite``, the Function App's adapters), then ``--clients``
concurrent clients send ``--posts`` POST /api/experiments without a key, then ``--keys``
Idempotency-Keys twice each (a quarter of them both at once, the rest as a later retry), each POST followed
by a GET of its experiment (unless ``--no-get``). Prints, for the unkeyed and the keyed phase side by side,
POST req/s, p50/p99 of each route, CPU per request and errors, and checks the keyed phase lost and
duplicated nothing: each key's replies name one experiment, created once, and the store holds one
experiment per key beside the unkeyed ones (else it exits 1).

    python bench/api_latency.py [--storage azurite] [--clients 50] [--posts 1000] [--keys 500] [--root CHECKOUT]

``--root`` serves another checkout of the project (e.g. an older commit, for before/after figures) with
this Python. The clients run on the same machine as the server, so they share its cores; each client has
its own keep-alive connection. ``cpu_ms_per_post`` is each process's CPU per POST (with its GET unless
``--no-get``): the server's figure depends least on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.config import AZURITE_ACCOUNT, AZURITE_KEY  # noqa: E402
from tests.control_plane import tiny_spec  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux ``/proc``); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


AZURITE_PIDS: list[int] = []


@contextlib.contextmanager
def azurite(folder: str) -> Iterator[str]:
    """A fresh Azurite (the tests' install under .azurite/, or one on PATH); yields a connection string."""
    import shutil

    binary = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite"
    found = str(binary) if binary.exists() else shutil.which("azurite")
    if found is None:
        raise SystemExit("Azurite not found: run the Azure Storage tests once (they install it) or npm i -g azurite")
    ports = {"blob": free_port(), "queue": free_port(), "table": free_port()}
    args = [found, "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--location", folder]
    for service, port in ports.items():
        args += [f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    AZURITE_PIDS.append(process.pid)
    try:
        for port in ports.values():
            wait_for_port(port)
        base = "http://127.0.0.1"
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={base}:{ports['blob']}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint={base}:{ports['queue']}/{AZURITE_ACCOUNT};"
            f"TableEndpoint={base}:{ports['table']}/{AZURITE_ACCOUNT};"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


KEY = secrets.token_urlsafe(16)
AUTH = {"x-functions-key": KEY}


def keyed_jobs(keys: int, together_every: int = 4) -> list[str | None]:
    """Each of ``keys`` Idempotency-Keys twice, as a retrying client sends them: every ``together_every``-th
    key's two sends are adjacent in the shared queue (two idle clients take them at once, a race), the
    others' second send comes ``keys // 2`` sends later (a retry after the first answered)."""
    names = [f"bench-{secrets.token_hex(8)}" for _ in range(keys)]
    jobs: list[str | None] = []
    late: list[str] = []
    for index, name in enumerate(names):
        if index % together_every == 0:
            jobs += [name, name]
        else:
            jobs.append(name)
            late.append(name)
        if len(late) > keys // 4:
            jobs.append(late.pop(0))
    return jobs + late


async def client_loop(client: httpx.AsyncClient, jobs: list[str | None], results: dict[str, list], get: bool) -> None:
    body = json.dumps(tiny_spec())
    while jobs:
        key = jobs.pop(0)
        headers = {"content-type": "application/json"} | ({"idempotency-key": key} if key else {})
        tick = time.perf_counter()
        try:
            response = await client.post("/api/experiments", content=body, headers=headers)
        except httpx.TransportError as exc:
            results["errors"].append(f"POST {type(exc).__name__}")
            continue
        results["post"].append(time.perf_counter() - tick)
        if response.status_code != 202:
            results["errors"].append(f"POST {response.status_code}: {response.text[:200]}")
            continue
        results["accepted"].append(key)
        if key:
            replayed = response.headers.get("idempotent-replayed") == "true"
            results["replies"].append((key, response.json()["id"], replayed))
        if not get:
            continue
        tick = time.perf_counter()
        try:
            status = await client.get(response.headers["location"])
        except httpx.TransportError as exc:
            results["errors"].append(f"GET {type(exc).__name__}")
            continue
        results["get"].append(time.perf_counter() - tick)
        if status.status_code != 200:
            results["errors"].append(f"GET {status.status_code}")


async def load(
    pool: list[httpx.AsyncClient], jobs: list[str | None], get: bool = True
) -> tuple[dict[str, list], float]:
    """The ``jobs`` (an Idempotency-Key or None each) sent by every client of ``pool`` as it comes free."""
    results: dict[str, list] = {"post": [], "get": [], "errors": [], "replies": [], "accepted": []}
    jobs = list(jobs)
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(client, jobs, results, get) for client in pool))
    return results, time.perf_counter() - start


async def all_ids(client: httpx.AsyncClient) -> list[str]:
    """Every stored experiment's id, through the listing's pages."""
    ids: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 200} | ({"page_token": token} if token else {})
        page = (await client.get("/api/experiments", params=params)).raise_for_status().json()
        ids += [item["id"] for item in page["items"]]
        token = page["next_page_token"]
        if not token:
            return ids


def keyed_problems(replies: list[tuple[str, str, bool]], keys: int, stored: list[str], unkeyed: int) -> list[str]:
    """What the keyed run lost or duplicated: a key whose replies name two experiments or that created
    none or two, two keys sharing an experiment, or stored experiments beyond one per key."""
    problems = []
    by_key: dict[str, list[tuple[str, bool]]] = {}
    for key, experiment_id, replayed in replies:
        by_key.setdefault(key, []).append((experiment_id, replayed))
    if len(by_key) != keys:
        problems.append(f"{keys - len(by_key)} keys got no answer")
    for key, answers in by_key.items():
        if len({experiment_id for experiment_id, _ in answers}) != 1:
            problems.append(f"key {key} answered with experiments {sorted({e for e, _ in answers})}")
        if sum(not replayed for _, replayed in answers) != 1:
            problems.append(f"key {key}: {sum(not r for _, r in answers)} replies say created")
    bound = [answers[0][0] for answers in by_key.values()]
    if len(set(bound)) != len(bound):
        problems.append("two keys share one experiment")
    if len(stored) != len(set(stored)) or len(stored) != unkeyed + len(set(bound)):
        problems.append(f"{len(stored)} experiments stored for {unkeyed} unkeyed POSTs and {len(by_key)} keys")
    return problems


async def run_phases(base: str, clients: int, posts: int, keys: int, get: bool, measure: Any) -> dict[str, Any]:
    """Unkeyed then keyed, on one server: each phase's results, elapsed time and CPU (``measure()``)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # one for all (each client would load the CA bundle again)
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        # Each client has its own keep-alive connection (one shared pool of 50 connections cost httpx
        # more CPU per request than the server spent: its pool scans every connection per request).
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60, limits=limits, verify=tls)
            )
            for _ in range(clients)
        ]
        await pool[0].get("/api/health")  # tables and queues exist before the clock starts
        phases: list[tuple[str, list[str | None]]] = [("unkeyed", [None] * posts), ("keyed", keyed_jobs(keys))]
        for name, jobs in phases:
            if not jobs:
                continue
            before = measure()
            results, elapsed = await load(pool, jobs, get)
            out[name] = (results, elapsed, [b - a for a, b in zip(before, measure(), strict=True)])
        if keys:
            stored = await all_ids(pool[0])
            done = len(out["unkeyed"][0]["accepted"]) if "unkeyed" in out else 0
            out["problems"] = keyed_problems(out["keyed"][0]["replies"], keys, stored, done)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", choices=["local", "azurite"], default="local")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--posts", type=int, default=1000, help="unkeyed POSTs (0: none)")
    parser.add_argument("--keys", type=int, default=500, help="Idempotency-Keys, each sent twice (0: none)")
    parser.add_argument("--no-get", action="store_true", help="POSTs only (no GET after each)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as home, contextlib.ExitStack() as stack:
        env = {**os.environ, "RAPIDS_HPO_HOME": home, "PYTHONPATH": str(args.root)}
        env.pop("AzureWebJobsStorage", None)
        env["RAPIDS_HPO_FUNCTION_KEY"] = KEY  # serve's key (older checkouts take it too)
        if args.storage == "azurite":
            env["AzureWebJobsStorage"] = stack.enter_context(azurite(os.path.join(home, "azurite")))
        log = stack.enter_context(open(os.path.join(home, "server.log"), "wb"))
        server = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "serve", "--port", str(port), "--no-workers"],
            env=env,
            cwd=args.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{base}/api/health", headers=AUTH, timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            pids = [server.pid, *AZURITE_PIDS]

            def measure() -> list[float]:
                return [cpu_seconds(pid) for pid in pids] + [time.process_time()]

            out = asyncio.run(run_phases(base, args.clients, args.posts, args.keys, not args.no_get, measure))
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()
            server_log = Path(home, "server.log").read_text(errors="replace")
    print(f"storage={args.storage} clients={args.clients} root={args.root}")
    print(f"load_average={os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores; other work shares them)")
    names = ["server", *(["azurite"] if args.storage == "azurite" else []), "clients"]
    errors: list[str] = []
    for phase in ("unkeyed", "keyed"):
        if phase not in out:
            continue
        results, elapsed, used = out[phase]
        posts, gets = results["post"], results["get"]
        errors += results["errors"]
        lines = [f"{phase:<8} posts={len(posts)} gets={len(gets)} errors={len(results['errors'])}"]
        lines.append(f"post_throughput={len(posts) / elapsed:.1f} req/s")
        for route, values in (("POST", posts), ("GET", gets)):
            if values:
                lines.append(
                    f"{route} p50={percentile(values, 50) * 1000:.1f} ms p99={percentile(values, 99) * 1000:.1f} ms"
                )
        cycles = max(len(posts), 1)
        shares = " ".join(f"{n}={u / cycles * 1000:.1f}" for n, u in zip(names, used, strict=True))
        lines.append(f"cpu_ms_per_post{'' if args.no_get else '_and_get'}: {shares}")
        print("  ".join(lines))
    if "problems" in out:
        problems = out["problems"]
        print(f"keyed check: {'each key one experiment, nothing lost or duplicated' if not problems else problems[:5]}")
    for error in sorted(set(errors))[:5]:
        print("error:", error)
    if errors:
        print("server log (tail):", server_log[-1500:])
    if errors or out.get("problems"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
