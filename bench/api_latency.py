"""API latency under load: p50/p99 of POST and GET against ``rapids-hpo serve``.

Starts ``rapids-hpo serve --no-workers`` (the API alone, local adapters in a temporary folder, so the
submitted experiments are stored and queued but not run) on a free loopback port, then 50 concurrent
clients alternate POST /api/experiments and GET /api/experiments/{id} for 20 s.

    python bench/api_latency.py [--clients 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.control_plane import tiny_spec  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def client_loop(base: str, deadline: float, posts: list[float], gets: list[float], errors: list[str]):
    body = json.dumps(tiny_spec())
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while time.perf_counter() < deadline:
            tick = time.perf_counter()
            response = await client.post("/api/experiments", content=body, headers={"content-type": "application/json"})
            posts.append(time.perf_counter() - tick)
            if response.status_code != 202:
                errors.append(f"POST {response.status_code}")
                continue
            tick = time.perf_counter()
            status = await client.get(response.headers["location"])
            gets.append(time.perf_counter() - tick)
            if status.status_code != 200:
                errors.append(f"GET {status.status_code}")


async def load(base: str, clients: int, seconds: float):
    posts: list[float] = []
    gets: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(client_loop(base, deadline, posts, gets, errors) for _ in range(clients)))
    return posts, gets, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "RAPIDS_HPO_HOME": home, "PYTHONPATH": str(ROOT)}
        env.pop("AzureWebJobsStorage", None)
        server = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "serve", "--port", str(port), "--no-workers"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            posts, gets, errors = asyncio.run(load(base, args.clients, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"clients={args.clients} seconds={args.seconds:g} requests={len(posts) + len(gets)} errors={len(errors)}")
    for name, values in (("POST /api/experiments", posts), ("GET /api/experiments/{id}", gets)):
        print(
            f"{name:<28} n={len(values):6d}  p50={percentile(values, 50) * 1000:7.1f} ms"
            f"  p99={percentile(values, 99) * 1000:7.1f} ms"
        )
    print(f"throughput={(len(posts) + len(gets)) / args.seconds:.1f} req/s")


if __name__ == "__main__":
    main()
