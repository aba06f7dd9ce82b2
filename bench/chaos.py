"""A chaos run: experiments on the local backend over Azurite, through ``rapids-hpo serve`` hosts (the same
queues, handlers and sweep as the Function App), under a seeded random fault schedule.

The run is a cycle of segments, one per fault kind (``bench/chaos_faults.py``: Azurite killed and
restarted, late delivery, hosts SIGKILLed mid-step and between a write and its send, drivers and Dask
workers SIGKILLed mid-trial, 1,000 poison messages, the sweep beside the handlers, Event Grid down) and
one with every kind at once. In every segment each queue message is sent twice, the copy delayed
(``bench/chaos_host.py``). A segment submits its experiments (HTTP, each with an Idempotency-Key, retried
until answered), runs its faults until they end or ``--fault-window`` passes, then waits up to ``--bound``
seconds for every experiment to end. Its row counts, of what it submitted:

- experiments lost (a key with no experiment), duplicated (a key with two), stuck (not ended and torn
  down within the bound), failed (ended FAILED: with the reason);
- trials lost (a number below the budget missing from a COMPLETED run), duplicated (over the budget),
  stuck (RUNNING after teardown);
- CloudEvents lost (an expected id never received: each status change, each finished trial) and
  duplicated (ids received more than once: at-least-once by design, consumers dedupe by id);
- status messages lost or duplicated on ``experiment-status`` (at-least-once by design);
- recovery: seconds from the segment's last fault to its last experiment ending.

    python bench/chaos.py --minutes 30 [--seed 1] [--per-segment 3] [--hosts 2]

Exit status 1 if anything was lost or stuck.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_faults import KINDS, Faults, start_loops  # noqa: E402
from bench.chaos_procs import Azurite, Host, Supervisor, kill_group, wait_ready  # noqa: E402
from shared.config import QUEUE_EVENTS, QUEUE_REQUESTS  # noqa: E402
from shared.context import Context  # noqa: E402
from shared.events import Announcer  # noqa: E402
from shared.queues import open_queues, poison_queue_name  # noqa: E402
from shared.records import TERMINAL_STATUSES, ExperimentRecord, TrialState  # noqa: E402
from shared.store import open_store  # noqa: E402
from tests.control_plane import local_settings, tiny_spec  # noqa: E402
from tests.topic_receiver import TopicReceiver  # noqa: E402

KEY = "chaos-function-key"
TRIALS = 4
ROW = "{kind:<15} {faults:>6} {exps:>4} {lost:>4} {dup:>4} {stuck:>5} {failed:>6} {tl:>5} {td:>5} {ts:>5} " + (
    "{el:>5} {ed:>5} {sl:>5} {sd:>5} {rec:>8.1f}"
)
HEADER = dict(
    kind="fault kind", faults="faults", exps="exps", lost="lost", dup="dup", stuck="stuck", failed="failed",
    tl="t.lost", td="t.dup", ts="t.stk", el="ev.lo", ed="ev.dup", sl="st.lo", sd="st.dp", rec="recov_s",
)  # fmt: skip


def spec(name: str) -> dict[str, Any]:
    return tiny_spec(
        name=name,
        limits={"max_total_trials": TRIALS, "max_concurrent_trials": 2},
        dataset={"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 2000},
        compute={"backend": "local", "n_workers": 1, "threads_per_worker": 2},
    )


def submit(supervisor: Supervisor, name: str, rng: random.Random, give_up: float = 600.0) -> bool:
    """POST with an Idempotency-Key, retried (same key) through any host until one answers 2xx."""
    deadline = time.monotonic() + give_up
    body = json.dumps(spec(name))
    headers = {"x-functions-key": KEY, "idempotency-key": name, "content-type": "application/json"}
    while time.monotonic() < deadline:
        try:
            url = supervisor.any_url(rng)
            response = httpx.post(f"{url}/api/experiments", content=body, headers=headers, timeout=60)
            if response.is_success:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(rng.uniform(0.5, 3))
    return False


def experiments_named(ctx: Context, prefix: str) -> dict[str, list[ExperimentRecord]]:
    found: dict[str, list[ExperimentRecord]] = {}
    token = None
    while True:
        page, token = ctx.store.list_experiments(limit=200, page_token=token)
        for record in page:
            if isinstance(record, ExperimentRecord) and record.name.startswith(prefix):
                found.setdefault(record.name, []).append(record)
        if token is None:
            return found


def finished(record: ExperimentRecord) -> bool:
    return record.status in TERMINAL_STATUSES and record.torn_down


@dataclasses.dataclass
class Row:
    kind: str
    faults: int = 0
    exps: int = 0
    lost: int = 0
    dup: int = 0
    stuck: int = 0
    failed: int = 0
    tl: int = 0
    td: int = 0
    ts: int = 0
    el: int = 0
    ed: int = 0
    sl: int = 0
    sd: int = 0
    rec: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)


def drain_status(ctx: Context, seen: Counter[str]) -> None:
    """Take every message on ``experiment-status`` and count them by experiment id."""
    while True:
        messages = ctx.status_queue.receive(32, 30)
        if not messages:
            return
        for message in messages:
            seen[json.loads(message.body)["id"]] += 1
            ctx.status_queue.delete(message)


def check(ctx: Context, row: Row, names: list[str], prefix: str, events: list[dict], statuses: Counter[str]) -> None:
    stored = experiments_named(ctx, prefix)
    received = Counter(e["id"] for e in events)
    for name in names:
        records = stored.get(name, [])
        row.lost += not records
        row.dup += max(0, len(records) - 1)
        for listed in records:
            record = ctx.store.get_experiment(listed.id)
            if not finished(record):
                row.stuck += 1
                row.notes.append(f"{name}: stuck {record.status.value} torn_down={record.torn_down}")
                continue
            if record.status.value == "FAILED":
                row.failed += 1
                row.notes.append(f"{name}: FAILED {record.error}")
            trials = ctx.store.list_trials(record.id)
            numbers = {t.number for t in trials}
            if record.status.value == "COMPLETED":
                row.tl += len(set(range(TRIALS)) - numbers)
            row.td += len([n for n in numbers if n >= TRIALS])
            row.ts += sum(t.state is TrialState.RUNNING for t in trials)
            expected = {f"{record.id}/status/{k}" for k in range(2, len(record.history) + 1)}
            expected |= {f"{record.id}/trials/{t.number}/{t.attempt}" for t in trials if t.ended_at is not None}
            missing = expected - set(received)
            row.el += len(missing)
            if missing:
                row.notes.append(f"{name}: events never received: {sorted(missing)[:4]}")
            row.ed += sum(n - 1 for i, n in received.items() if i.startswith(record.id + "/") and n > 1)
            row.sl += statuses[record.id] == 0
            row.sd += max(0, statuses[record.id] - 1)


def run_segment(env: dict[str, Any], kind: str, index: int, per_segment: int, fault_window: float, bound: float) -> Row:
    ctx: Context = env["ctx"]
    rng = random.Random(env["seed"] * 1000 + index)
    prefix = f"chaos-{env['run']}-{index:02d}-"
    names = [f"{prefix}{i}" for i in range(per_segment)]
    ids: list[str] = []

    def experiment_ids() -> list[str]:
        if len(ids) < len(names):
            with contextlib.suppress(Exception):
                ids[:] = [r[0].id for r in experiments_named(ctx, prefix).values()]
        return list(ids)

    faults = Faults(ctx, env["azurite"], env["supervisor"], env["receiver"], env["control"], experiment_ids, rng)
    row = Row(kind)
    threads = start_loops(faults, kind)
    started = time.monotonic()
    with ThreadPoolExecutor(per_segment) as pool:
        answered = list(pool.map(lambda n: submit(env["supervisor"], n, random.Random(n)), names))
    row.notes += [f"{n}: POST never answered" for n, ok in zip(names, answered, strict=True) if not ok]

    def all_ended() -> bool:
        try:
            stored = experiments_named(ctx, prefix)
            return len(stored) == len(names) and all(
                finished(ctx.store.get_experiment(r[0].id)) for r in stored.values()
            )
        except Exception:
            return False

    while time.monotonic() - started < fault_window and not all_ended():
        time.sleep(2)
    faults.stop.set()
    for thread in threads:
        thread.join()
    last_fault = faults.last or time.monotonic()
    if not env["azurite"].alive:
        env["azurite"].start()
    if not env["receiver"]._server:
        env["receiver"].start()
    while time.monotonic() - last_fault < bound and not all_ended():
        time.sleep(2)
    ended = time.monotonic()
    time.sleep(65)  # one more host sweep period: what the topic missed while down is re-sent by it
    row.faults = sum(faults.counts.values())
    row.exps = len(names)
    drain_status(ctx, env["statuses"])
    check(ctx, row, names, prefix, env["receiver"].events, env["statuses"])
    row.rec = max(0.0, ended - last_fault) if all_ended() else float("inf")
    row.notes.append(f"faults: {dict(faults.counts)}")
    if faults.unplanned:
        row.notes.append(f"not ours: {dict(faults.unplanned)}")
    return row


def poison_counts(ctx: Context) -> dict[str, int]:
    """Messages on each poison queue (where a message the hosts could not handle five times ends)."""
    counts = {}
    for queue in (QUEUE_EVENTS, QUEUE_REQUESTS):
        with contextlib.suppress(Exception):
            counts[poison_queue_name(queue)] = ctx.queues.queue(poison_queue_name(queue)).count()
    return counts


def stop_drivers(ctx: Context) -> None:
    """SIGKILL every driver process an experiment of this run still has (a run stopped early leaves some)."""
    from shared.backends.local import is_alive

    with contextlib.suppress(Exception):
        for records in experiments_named(ctx, "chaos-").values():
            for record in records:
                state = ctx.store.get_experiment(record.id).backend_state
                if state.get("pid") and is_alive(state):
                    kill_group(state["pid"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="keep cycling segments until this much time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-segment", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--fault-window", type=float, default=150.0, help="seconds of faults per segment at most")
    parser.add_argument("--bound", type=float, default=300.0, help="seconds after the last fault to end")
    parser.add_argument("--kinds", default=",".join(KINDS), help="segments, in order (cycled)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, Azurite) when it passes")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    home = Path(tempfile.mkdtemp(prefix="chaos-"))
    print(f"logs and data: {home}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cleanup below runs
    azurite = Azurite(home / "azurite")
    receiver = TopicReceiver()
    hosts: list[Host] = []
    supervisor = Supervisor(hosts)
    rows: list[Row] = []
    ctx: Context | None = None
    poisoned: dict[str, int] = {}
    began = time.monotonic()
    try:
        azurite.start()
        receiver.start()
        control = home / "control.json"
        control.write_text("{}")
        conn = azurite.connection_string
        host_env = {
            **os.environ,
            "AzureWebJobsStorage": conn,
            "RAPIDS_HPO_HOME": str(home),
            "RAPIDS_HPO_POLL_SECONDS": "1",
            "RAPIDS_HPO_STALL_SECONDS": "30",
            "RAPIDS_HPO_FUNCTION_KEY": KEY,
            "RAPIDS_HPO_STATE_DIR": str(home / "state"),
            "EVENTGRID_TOPIC_ENDPOINT": receiver.endpoint,
            "EVENTGRID_TOPIC_KEY": receiver.key,
            "CHAOS_DUPLICATE_DELAY": "5",
            "CHAOS_CONTROL": str(control),
            "CHAOS_SEED": str(args.seed),
            "PYTHONPATH": str(ROOT),
        }
        hosts += [Host(i, home, host_env) for i in range(args.hosts)]
        supervisor.start()
        for host in hosts:
            wait_ready(host.url, KEY)
        settings = dataclasses.replace(local_settings(home, stall_seconds=30), storage_connection_string=conn)
        from shared.events.eventgrid import EventGridPublisher

        ctx = Context(
            settings=settings,
            store=open_store(settings),
            queues=open_queues(settings),
            announcer=Announcer(EventGridPublisher.from_settings(receiver.endpoint, receiver.key)),
        )
        env = {
            "ctx": ctx, "azurite": azurite, "supervisor": supervisor, "receiver": receiver, "control": control,
            "seed": args.seed, "run": time.strftime("%H%M%S"), "statuses": Counter(),
        }  # fmt: skip
        print(f"chaos run: seed={args.seed} hosts={args.hosts} per_segment={args.per_segment}", flush=True)
        print(ROW.replace(":>8.1f", ":>8").format(**HEADER), flush=True)
        index = 0
        while time.monotonic() - began < args.minutes * 60 or index < len(kinds):
            kind = kinds[index % len(kinds)]
            row = run_segment(env, kind, index, args.per_segment, args.fault_window, args.bound)
            rows.append(row)
            print(ROW.format(**{k: v for k, v in dataclasses.asdict(row).items() if k != "notes"}), flush=True)
            for note in row.notes:
                print(f"    {note}", flush=True)
            index += 1
    finally:
        supervisor.stop()
        if ctx is not None:
            stop_drivers(ctx)
            poisoned = poison_counts(ctx)
        receiver.stop()
        azurite.kill()
    elapsed = (time.monotonic() - began) / 60
    total = Row("TOTAL")
    for row in rows:
        for f in ("faults", "exps", "lost", "dup", "stuck", "failed", "tl", "td", "ts", "el", "ed", "sl", "sd"):
            setattr(total, f, getattr(total, f) + getattr(row, f))
    total.rec = max((r.rec for r in rows), default=0.0)
    print(ROW.format(**{k: v for k, v in dataclasses.asdict(total).items() if k != "notes"}))
    print(f"ran {elapsed:.1f} min, {len(rows)} segments, host restarts {supervisor.restarts}")
    print(f"poison queues at the end: {poisoned}")
    failed = bool(total.lost or total.stuck or total.tl or total.ts or total.el or total.sl)
    if not failed and not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the faults make the control plane's warnings expected
    threading.excepthook = lambda a: print(f"thread {a.thread}: {a.exc_type.__name__}: {a.exc_value}", flush=True)
    raise SystemExit(main())
