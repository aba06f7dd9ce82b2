"""A soak of many experiments: N small experiments submitted at once to one control plane on Azurite, two
host processes (``bench/soak_host.py``: ``rapids-hpo serve`` with a fake compute) competing for the same
queues as two Function App instances would.

Prints: the time until every experiment ended; steps per second; p50/p99 step latency; queue lag (from when
a step's event was due, its send time plus its delay, to when a host started handling it), p50/p99; storage
requests per experiment (both hosts, everything: API, steps, sweeps); then what one timer sweep costs as the
table grows (its time and storage requests, beside listing the whole table as the sweep did before).

    python bench/soak.py [--experiments 200] [--history 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_procs import Azurite, Host, Supervisor, wait_ready  # noqa: E402
from shared.context import Context  # noqa: E402
from shared.handlers import sweep  # noqa: E402
from shared.queues import open_queues  # noqa: E402
from shared.records import TERMINAL_STATUSES, ExperimentRecord, ExperimentStatus, utcnow  # noqa: E402
from shared.store import open_store  # noqa: E402
from tests.control_plane import local_settings, tiny_spec  # noqa: E402

KEY = "soak-key"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def submit_all(hosts: list[Host], count: int) -> list[str]:
    body = json.dumps(tiny_spec(name="soak"))
    headers = {"x-functions-key": KEY, "content-type": "application/json"}

    def one(i: int) -> str:
        response = httpx.post(
            f"{hosts[i % len(hosts)].url}/api/experiments", content=body, headers=headers, timeout=120
        )
        response.raise_for_status()
        return str(response.json()["id"])

    with ThreadPoolExecutor(50) as pool:
        return list(pool.map(one, range(count)))


def all_ended(ctx: Context, ids: list[str]) -> bool:
    return all((r := ctx.store.get_experiment(i)).status in TERMINAL_STATUSES and r.torn_down for i in ids)


def host_figures(logs: list[Path]) -> dict[str, Any]:
    sent: dict[str, float] = {}
    steps: list[dict[str, Any]] = []
    requests = 0
    for path in logs:
        last = 0
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["t"] == "sent":
                sent.setdefault(entry["key"], entry["due"])
            elif entry["t"] == "step":
                steps.append(entry)
            else:
                last = entry["n"]
        requests += last
    latency = [1000 * (s["end"] - s["start"]) for s in steps]
    lags = [1000 * (s["start"] - sent[s["key"]]) for s in steps if s["key"] in sent]
    span = max(s["end"] for s in steps) - min(s["start"] for s in steps)
    acted = [s for s in steps if s["outcome"] != "stale"]
    return {
        "steps": len(steps),
        "stale": len(steps) - len(acted),
        "steps_per_s": len(steps) / span,
        "p50_ms": percentile(latency, 50),
        "p99_ms": percentile(latency, 99),
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "requests": requests,
    }


class Counting:
    """The store, counting list calls and the records they returned (one list call is one request, or a
    few when a page's entities span several responses)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls = 0
        self.records = 0

    def list_experiments(self, *args: Any, **kwargs: Any) -> Any:
        page, token = self._store.list_experiments(*args, **kwargs)
        self.calls += 1
        self.records += len(page)
        return page, token

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def sweep_cost(ctx: Context) -> tuple[float, int, int]:
    counting = Counting(ctx.store)
    swept = dataclasses.replace(ctx, store=counting)
    start = time.perf_counter()
    sweep(swept)
    return 1000 * (time.perf_counter() - start), counting.calls, counting.records


def full_listing(ctx: Context) -> tuple[float, int]:
    """What the sweep read before: every record, in pages of 200."""
    start, token, records = time.perf_counter(), None, 0
    while True:
        page, token = ctx.store.list_experiments(limit=200, page_token=token)
        records += len(page)
        if token is None:
            return 1000 * (time.perf_counter() - start), records


def add_history(ctx: Context, count: int, age: timedelta) -> None:
    at = utcnow() - age

    def one(n: int) -> None:
        record = ExperimentRecord(
            id=f"exp-history-{int(age.total_seconds())}-{n:06d}",
            name="history",
            spec={},
            status=ExperimentStatus.COMPLETED,
            created_at=at - timedelta(seconds=n),
            updated_at=at,
            last_progress_at=at,
            torn_down=True,
        )
        ctx.store.create_experiment(record)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--history", type=int, default=2000, help="ended experiments added to time the sweep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        home = Path(folder)
        azurite = Azurite(home / "azurite")
        azurite.start()
        conn = azurite.connection_string
        env = {
            **os.environ,
            "AzureWebJobsStorage": conn,
            "RAPIDS_HPO_HOME": str(home),
            "RAPIDS_HPO_POLL_SECONDS": "1",
            "RAPIDS_HPO_FUNCTION_KEY": KEY,
            "RAPIDS_HPO_STATE_DIR": str(home / "state"),
            "PYTHONPATH": str(ROOT),
        }
        hosts = [
            Host(i, home, {**env, "SOAK_LOG": str(home / f"soak-{i}.jsonl")}, script="soak_host.py") for i in (0, 1)
        ]
        supervisor = Supervisor(hosts)
        try:
            supervisor.start()
            for host in hosts:
                wait_ready(host.url, KEY)
            settings = dataclasses.replace(local_settings(home), storage_connection_string=conn)
            ctx = Context(settings=settings, store=open_store(settings), queues=open_queues(settings))
            start = time.monotonic()
            ids = submit_all(hosts, args.experiments)
            submitted = time.monotonic() - start
            while not all_ended(ctx, ids):
                time.sleep(1)
            ended = time.monotonic() - start
            time.sleep(2.5)  # the hosts' last flush
        finally:
            supervisor.stop()
        figures = host_figures([home / f"soak-{i}.jsonl" for i in (0, 1)])
        print(f"experiments={args.experiments} (fake compute: 5 trials, success at the 3rd poll), 2 hosts, Azurite")
        print(f"submitted in {submitted:.1f} s; all ended and torn down after {ended:.1f} s")
        print(
            f"steps: {figures['steps']} ({figures['stale']} stale), {figures['steps_per_s']:.1f}/s; "
            f"step latency p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms; "
            f"queue lag p50 {figures['lag_p50_ms']:.0f} ms, p99 {figures['lag_p99_ms']:.0f} ms"
        )
        print(f"storage requests per experiment (hosts, all of it): {figures['requests'] / args.experiments:.1f}")
        print(f"{'table':<34} {'sweep ms':>9} {'lists':>6} {'records read':>13} {'full listing ms':>16} {'records':>8}")
        steps = [("after the soak", 0, timedelta(0))]
        steps += [(f"+{args.history} ended 30 days ago", args.history, timedelta(days=30))]
        steps += [(f"+{args.history} ended 1 day ago", args.history, timedelta(days=1))]
        for name, count, age in steps:
            if count:
                add_history(ctx, count, age)
            ms, calls, records = sweep_cost(ctx)
            full_ms, everything = full_listing(ctx)
            print(f"{name:<34} {ms:>9.0f} {calls:>6} {records:>13} {full_ms:>16.0f} {everything:>8}")
        azurite.kill()


if __name__ == "__main__":
    main()
