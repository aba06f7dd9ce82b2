"""The local driver's lease on its cluster (``shared.hpo.worker_watch``): a LocalCluster left without any
worker ends the driver after the grace period (so the control plane restarts it and it resumes), and a
cluster whose workers come and go does not."""

from __future__ import annotations

import threading
import time

import pytest
from distributed import Client, LocalCluster

from shared.hpo.worker_watch import WorkerWatch


def cluster() -> LocalCluster:
    return LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_cluster_left_without_workers_ends_the_driver_after_the_grace():
    lost = threading.Event()
    with cluster() as local, Client(local) as client, WorkerWatch(client, grace=2.0, interval=0.2, on_lost=lost.set):
        assert not lost.wait(1.0)  # a worker: nothing happens
        local.scale(0)  # the only worker is gone and nothing starts another (a nanny that gave up)
        began = time.monotonic()
        assert lost.wait(30)
        assert time.monotonic() - began >= 2.0


def test_a_worker_replaced_within_the_grace_is_no_loss():
    lost = threading.Event()
    with cluster() as local, Client(local) as client, WorkerWatch(client, grace=20.0, interval=0.2, on_lost=lost.set):
        local.scale(0)
        while client.scheduler_info()["workers"]:
            time.sleep(0.1)
        local.scale(1)
        client.wait_for_workers(1, timeout=60)
        assert not lost.wait(1.0)


def test_a_worker_that_dies_while_the_cluster_starts_costs_a_start_not_the_driver(tmp_path, monkeypatch):
    from shared.backends.local import driver
    from shared.backends.local.section import LocalCompute

    monkeypatch.setenv("DYING_PRELOAD_MARKER", str(tmp_path / "died"))
    monkeypatch.setattr(driver, "WORKER_PRELOAD", "tests.dying_preload")
    with driver.dask_client(LocalCompute(n_workers=1, threads_per_worker=1)) as client:
        assert client.submit(lambda: 42).result(timeout=60) == 42
    assert (tmp_path / "died").read_text() == "died once"
