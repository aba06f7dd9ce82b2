"""What can be checked on a GPU machine without RAPIDS (bench/gpu_check.sh runs it there; ``--cpu`` here).

Each check prints one line and lands in ``OUT/gpu_check.json``; a failing check does not stop the others.

* ``device_memory``: :func:`gpu_jobs.device_memory.setup_device_memory` in fresh processes, with real RMM
  and CuPy: the resource it installs or keeps, and that CuPy then allocates through RMM (CuPy's own
  pool stays empty).
* ``cuda_worker``: a ``dask_cuda.CUDAWorker`` started as the vmcluster backend starts one
  (``python -m distributed.cli.dask_spec ADDRESS --spec '{"cls": ..., "opts": ...}'`` with its
  ``DASK_DISTRIBUTED__WORKER__PRELOAD``), ``nthreads: 2``: its threads, whether the preload ran, the RMM
  resource dask-cuda set up and what ``setup_device_memory`` makes of it on the worker.
* ``trial_clock``: the HPO driver on that worker, four 3-second trials at once on two threads (two
  wait), ``trial_timeout: 4``: all must complete and the worker keep its process.
* ``memory_flat``: two CUDAWorkers on the one GPU (``rmm_async``), 20 trials (CuPy work through RMM,
  then the CPU trainer), four at a time: GPU memory after each trial, which must not grow.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CPU = "--cpu" in sys.argv
"""Rehearse here without a GPU: plain Nanny workers, no CuPy or RMM."""


def gpu_memory_used_mib() -> int | None:
    if CPU:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return int(out.split()[0]) if out.strip() else None


# ------------------------------------------------------------------------------------- device memory
PROBE = r"""
import json, os, sys
import rmm, cupy
if sys.argv[1] == "preset-async":
    rmm.mr.set_current_device_resource(rmm.mr.CudaAsyncMemoryResource())
from gpu_jobs.device_memory import setup_device_memory
plan = setup_device_memory("async" if sys.argv[1] == "preset-async" else sys.argv[1])
x = cupy.ones((256, 1024, 1024), dtype=cupy.float32)  # 1 GiB
total = float(x.sum())
print(json.dumps({
    "plan": {"install": plan.install, "shared": plan.shared, "reason": plan.reason},
    "resource": type(rmm.mr.get_current_device_resource()).__name__,
    "upstream": type(getattr(rmm.mr.get_current_device_resource(), "upstream_mr", None)).__name__,
    "cupy_pool_bytes": cupy.get_default_memory_pool().used_bytes(),
    "sum_ok": total == 256 * 1024 * 1024,
}))
"""


def check_device_memory() -> dict[str, Any]:
    results = {}
    expected = {
        "async": "CudaAsyncMemoryResource",
        "pool": "PoolMemoryResource",
        "preset-async": "CudaAsyncMemoryResource",
    }
    for mode, resource in expected.items():
        command = [sys.executable, "-c", PROBE, mode]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{mode}: {done.stderr.strip()[-800:]}")
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        seen["ok"] = seen["resource"] == resource and seen["cupy_pool_bytes"] == 0 and seen["sum_ok"]
        results[mode] = seen
    results["ok"] = all(r["ok"] for r in results.values())
    return results


# ------------------------------------------------------------------------------------- Dask workers
def boot_script() -> Any:
    """The VM boot script (``shared/backends/vmcluster/boot.py``), loaded alone as on a VM (standard library only)."""
    path = Path(__file__).resolve().parents[1] / "shared" / "backends" / "vmcluster" / "boot.py"
    spec = importlib.util.spec_from_file_location("vm_boot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def cluster(opts: dict[str, Any], n_workers: int) -> Iterator[Any]:
    """A scheduler here and ``n_workers`` worker processes started as the vmcluster boot script does."""
    from distributed import Client

    env = dict(os.environ)
    cls = "distributed.Nanny" if CPU else "dask_cuda.CUDAWorker"
    if CPU:
        opts = {"nthreads": opts.get("nthreads", 1)}
    scheduler_process = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(Path(tempfile.gettempdir()) / "gpu-check-scheduler.json")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    workers: list[subprocess.Popen[bytes]] = []
    try:
        scheduler_file = Path(tempfile.gettempdir()) / "gpu-check-scheduler.json"
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        # The worker command is the boot script's own (the preload as a worker option, as on a VM).
        command = boot_script().worker_command(
            {"scheduler_address": address, "worker_class": cls, "worker_options": opts}
        )
        for _ in range(n_workers):
            log = open(Path(OUT) / f"worker-{len(workers)}-{int(time.time())}.log", "wb")  # noqa: SIM115
            workers.append(subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True))
        with Client(address) as client:
            client.wait_for_workers(n_workers, timeout=120)
            yield client
    finally:
        for process in [*workers, scheduler_process]:
            process.terminate()
        for process in [*workers, scheduler_process]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        (Path(tempfile.gettempdir()) / "gpu-check-scheduler.json").unlink(missing_ok=True)


def worker_view(dask_worker: Any) -> dict[str, Any]:
    """Runs on a worker (``Client.run``): its threads, the preload, RMM's resource before and after our setup."""
    view: dict[str, Any] = {
        "nthreads": dask_worker.state.nthreads,
        "preloaded_gpu_jobs": "gpu_jobs.trial" in sys.modules,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if not CPU:
        import rmm

        from gpu_jobs.device_memory import setup_device_memory

        view["resource_before"] = type(rmm.mr.get_current_device_resource()).__name__
        plan = setup_device_memory()
        view["plan"] = {"install": plan.install, "shared": plan.shared, "reason": plan.reason}
        view["resource_after"] = type(rmm.mr.get_current_device_resource()).__name__
    return view


CLUSTER_OPTIONS = {"rmm_managed_memory": True, "nthreads": 2}
"""The vmcluster section's default worker_options (``rmm-managed-memory: true``) as python_options gives
them, plus two threads (two trials per GPU)."""


def check_cuda_worker() -> dict[str, Any]:
    with cluster(CLUSTER_OPTIONS, 1) as client:
        views = client.run(worker_view)
    view = next(iter(views.values()))
    view["ok"] = (
        view["nthreads"] == 2 and view["preloaded_gpu_jobs"] and (CPU or view["resource_after"] == "PoolMemoryResource")
    )
    return view


def check_trial_clock() -> dict[str, Any]:
    from shared.hpo.driver import HpoDriver
    from shared.records import ExperimentRecord, TrialState
    from shared.spec import load_spec
    from shared.store.local import LocalStore
    from tests.trial_functions import scripted_trial

    spec = load_spec(
        {
            "name": "gpu-check-clock",
            "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
            "trial": {"model": "random_forest", "cv_folds": 3},
            "search_space": {
                "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
                "n_estimators": {"type": "choice", "values": [1000]},  # 3 folds x 1 s
            },
            "limits": {"max_total_trials": 4, "max_concurrent_trials": 4, "trial_timeout": 4},
        }
    )
    with cluster(CLUSTER_OPTIONS, 1) as client, tempfile.TemporaryDirectory() as folder:
        pids = client.run(os.getpid)
        store = LocalStore(Path(folder))
        store.create_experiment(ExperimentRecord(id="exp-clock", name=spec.name, spec=spec.to_document()))
        tick = time.monotonic()
        outcome = HpoDriver(spec, "exp-clock", store, client, trial_fn=scripted_trial, hard_stop_grace=0.5).run()
        seconds = time.monotonic() - tick
        trials = store.list_trials("exp-clock")
        same_process = client.run(os.getpid) == pids
    states = [t.state.value for t in trials]
    return {
        "states": states,
        "errors": [t.error for t in trials if t.error],
        "seconds": round(seconds, 2),
        "worker_kept_its_process": same_process,
        "status": outcome.status,
        "ok": all(t.state is TrialState.COMPLETED for t in trials) and len(trials) == 4 and same_process,
    }


def gpu_work_trial(**kwargs: Any) -> dict[str, Any]:
    """A trial that allocates on the GPU through the shared resource, then runs the CPU trainer."""
    if not CPU:
        import cupy

        from gpu_jobs.device_memory import setup_device_memory

        setup_device_memory()
        blocks = [cupy.random.random((64, 1024, 1024), dtype=cupy.float32) for _ in range(4)]  # 4 x 256 MiB
        total = sum(float(block.mean()) for block in blocks)
        del blocks
        cupy.cuda.get_current_stream().synchronize()
        assert 1.9 < total < 2.1
    from gpu_jobs.train import run_trial

    return run_trial(**kwargs)


def check_memory_flat(data: str) -> dict[str, Any]:
    from shared.hpo.driver import HpoDriver
    from shared.records import ExperimentRecord, TrialRecord
    from shared.spec import load_spec
    from shared.store.local import LocalStore

    spec = load_spec(
        {
            "name": "gpu-check-memory",
            "dataset": {"uri": data, "target": "label"},
            "trial": {"model": "random_forest", "cv_folds": 2, "engine": "cpu"},
            "search_space": {
                "max_features": {"type": "uniform", "min_value": 0.3, "max_value": 1.0},
                "n_estimators": {"type": "choice", "values": [20, 40]},
            },
            "limits": {"max_total_trials": 20, "max_concurrent_trials": 4},
        }
    )
    samples: list[int | None] = []

    def sample(record: TrialRecord) -> None:
        samples.append(gpu_memory_used_mib())

    with cluster({"rmm_async": True, "nthreads": 2}, 2) as client, tempfile.TemporaryDirectory() as folder:
        store = LocalStore(Path(folder))
        store.create_experiment(ExperimentRecord(id="exp-memory", name=spec.name, spec=spec.to_document()))
        tick = time.monotonic()
        outcome = HpoDriver(spec, "exp-memory", store, client, trial_fn=gpu_work_trial, on_trial_end=sample).run()
        seconds = time.monotonic() - tick
        states = [t.state.value for t in store.list_trials("exp-memory")]
    known = [s for s in samples if s is not None]
    growth = (max(known[-5:]) - max(known[4:9])) if len(known) >= 10 else None
    return {
        "status": outcome.status,
        "states": sorted(set(states)),
        "errors": sorted({t.error for t in store.list_trials("exp-memory") if t.error})[:3],
        "memory_used_mib": samples,
        "growth_mib_last5_vs_5to9": growth,
        "seconds": round(seconds, 2),
        "trials_per_hour": round(len(states) / seconds * 3600),
        "ok": outcome.status == "COMPLETED" and (CPU or (growth is not None and growth <= 256)),
    }


def write_data(folder: Path) -> str:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = 20_000
    features = rng.normal(size=(rows, 8))
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(8)])
    frame["city"] = rng.choice(["Oslo", "Lima", "Pune"], rows)
    frame["label"] = np.where(features[:, 0] + 0.5 * features[:, 1] + rng.normal(0, 0.5, rows) > 0, "yes", "no")
    path = folder / "gpu-check.parquet"
    frame.to_parquet(path)
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.gettempdir())
    parser.add_argument("--cpu", action="store_true", help="rehearse without a GPU")
    parser.add_argument("--only", nargs="*", default=None, help="run these checks only")
    args = parser.parse_args()
    global OUT
    OUT = args.out
    Path(OUT).mkdir(parents=True, exist_ok=True)
    data = write_data(Path(OUT))
    checks: dict[str, Callable[[], dict[str, Any]]] = {  # each fits the device run's time with room to spare
        "device_memory": check_device_memory,
        "cuda_worker": check_cuda_worker,
        "trial_clock": check_trial_clock,
        "memory_flat": lambda: check_memory_flat(data),
    }
    if CPU:
        del checks["device_memory"]
    if args.only:
        checks = {name: check for name, check in checks.items() if name in args.only}
    report: dict[str, Any] = {"cpu_rehearsal": CPU, "gpu_memory_used_mib_at_start": gpu_memory_used_mib()}
    for name, check in checks.items():
        tick = time.monotonic()
        try:
            result = check()
        except Exception as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        result["check_seconds"] = round(time.monotonic() - tick, 1)
        report[name] = result
        shown = {k: v for k, v in result.items() if k != "traceback"}
        print(f"{'PASS' if result['ok'] else 'FAIL'} {name}: {json.dumps(shown, default=str)}", flush=True)
        (Path(OUT) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    return 0 if all(report[name]["ok"] for name in checks) else 1


OUT = tempfile.gettempdir()

if __name__ == "__main__":
    sys.exit(main())
