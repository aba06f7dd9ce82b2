"""API throughput and latency under load: POST and GET against ``rapids-hpo serve``.

Starts ``rapids-hpo serve --no-workers`` (the API alone: submitted experiments are stored and queued, not
run) on a free loopback port, over local adapters in a temporary folder (``--storage local``) or over
Azure Storage on a fresh Azurite (``--storage azurite``, the Function App's adapters), then ``--clients``
concurrent clients send ``--posts`` POST /api/experiments in all, each followed by a GET of the
experiment it created (unless ``--no-get``). Prints POST req/s, p50/p99 of each route, errors.

    python bench/api_latency.py [--storage azurite] [--clients 50] [--posts 1000] [--root CHECKOUT]

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


async def client_loop(client: httpx.AsyncClient, budget: list[int], results: dict[str, list], get: bool) -> None:
    body = json.dumps(tiny_spec())
    while budget[0] > 0:
        budget[0] -= 1
        tick = time.perf_counter()
        try:
            response = await client.post("/api/experiments", content=body, headers={"content-type": "application/json"})
        except httpx.TransportError as exc:
            results["errors"].append(f"POST {type(exc).__name__}")
            continue
        results["post"].append(time.perf_counter() - tick)
        if response.status_code != 202:
            results["errors"].append(f"POST {response.status_code}: {response.text[:200]}")
            continue
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


async def load(base: str, clients: int, posts: int, get: bool = True) -> tuple[dict[str, list], float]:
    """``clients`` clients, each with its own keep-alive connection (one shared pool of 50 connections
    cost httpx more CPU per request than the server spent: its pool scans every connection per request)."""
    results: dict[str, list] = {"post": [], "get": [], "errors": []}
    budget = [posts]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # one for all (each client would load the CA bundle again)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60, limits=limits, verify=tls)
            )
            for _ in range(clients)
        ]
        await pool[0].get("/api/health")  # tables and queues exist before the clock starts
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, budget, results, get) for client in pool))
        return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", choices=["local", "azurite"], default="local")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--posts", type=int, default=1000)
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
            before = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
            results, elapsed = asyncio.run(load(base, args.clients, args.posts, not args.no_get))
            after = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
            used = [b - a for a, b in zip(before, after, strict=True)]
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()
            server_log = Path(home, "server.log").read_text(errors="replace")
    posts, gets, errors = results["post"], results["get"], results["errors"]
    print(
        f"storage={args.storage} clients={args.clients} posts={len(posts)} gets={len(gets)} "
        f"errors={len(errors)} elapsed={elapsed:.1f}s root={args.root}"
    )
    for name, values in (("POST /api/experiments", posts), ("GET /api/experiments/{id}", gets)):
        if values:
            print(
                f"{name:<28} n={len(values):6d}  p50={percentile(values, 50) * 1000:7.1f} ms"
                f"  p99={percentile(values, 99) * 1000:7.1f} ms"
            )
    cycles = max(len(posts), 1)
    names = ["server", *(["azurite"] if args.storage == "azurite" else []), "clients"]
    shares = "  ".join(f"{n}={u / cycles * 1000:.1f}" for n, u in zip(names, used, strict=True))
    print(f"cpu_ms_per_post{'' if args.no_get else '_and_get'}: {shares}")
    print(f"load_average={os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores; other work shares them)")
    total = (len(posts) + len(gets)) / elapsed
    print(f"post_throughput={len(posts) / elapsed:.1f} req/s  total_throughput={total:.1f} req/s")
    for error in sorted(set(errors))[:5]:
        print("error:", error)
    if errors:
        print("server log (tail):", server_log[-1500:])


if __name__ == "__main__":
    main()
