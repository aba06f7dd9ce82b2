"""A budget end to end on ``rapids-hpo serve`` (real queue workers, driver process, Dask LocalCluster):
a local run priced as its equivalent Azure size stops at ``limits.max_cost`` and completes with its best."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.control_plane import tiny_spec
from tests.test_end_to_end import finished, served, submit, wait_for


@pytest.mark.slow
def test_a_local_run_stops_at_its_budget_and_completes_with_its_best(tmp_path):
    document = tiny_spec(
        compute={"backend": "local", "n_workers": 2, "threads_per_worker": 1,
                 "equivalent_vm_size": "Standard_NC4as_T4_v3"},  # 2 x $0.526/h: ~$0.0003 a second
        # A trial's worst case (5 s) costs $0.0015: trials start until ~$0.0045 is spent, some 15 s in,
        # long before 1000 trials end (about 25 a second on 2 idle cores).
        limits={"max_total_trials": 1000, "max_concurrent_trials": 2, "trial_timeout": 5, "max_cost": 0.006},
    )  # fmt: skip
    with served(tmp_path) as client:
        experiment_id = submit(client, document)
        body = wait_for(client, experiment_id, finished, timeout=240)
        trials = client.get(f"/api/experiments/{experiment_id}/trials").json()
        env = {**os.environ, "RAPIDS_HPO_API_URL": str(client.base_url), "COLUMNS": "200"}
        shown = {
            name: subprocess.run(
                [sys.executable, "-m", "shared.cli", *args], env=env, capture_output=True, text=True, timeout=60,
                check=True,
            ).stdout
            for name, args in (("status", ["status", experiment_id]), ("list", ["list"]))
        }  # fmt: skip
    assert body["status"] == "COMPLETED", body
    assert any(h["status"] == "COMPLETED" and h["reason"] == "budget reached" for h in body["history"]), body["history"]
    assert 0 < len(trials) < 1000 and body["best"] is not None
    cost = body["cost"]
    assert cost["budget_usd"] == 0.006 and cost["basis"].startswith("estimate") and cost["spent_usd"] > 0.003
    assert "cost ~$" in shown["status"] and "of $0.006" in shown["status"]  # "~": an estimate
    assert "~$" in shown["list"] and "$0.006" in shown["list"]
