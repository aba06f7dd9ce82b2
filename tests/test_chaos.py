"""The chaos run's short form (``bench/chaos.py``): one segment with every fault kind at once (Azurite
stopped and restarted, every message sent twice and some handled late, hosts, drivers and Dask workers
SIGKILLed, poison messages, the sweep beside the handlers, Event Grid down) over two ``serve`` hosts on
Azurite: nothing lost, nothing stuck, every CloudEvent and status message delivered. The long run (30
minutes and more, a segment per kind) is ``python bench/chaos.py --minutes 30``; its figures are in
``docs/reliability.md``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.azurite]


@pytest.mark.timeout(1200)  # the run's own bounds: 90 s of faults, 300 s to end, a sweep period after
def test_every_fault_at_once_loses_nothing_and_leaves_nothing_stuck(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    env.pop("AzureWebJobsStorage", None)
    arguments = ["--minutes", "0", "--kinds", "all", "--per-segment", "2", "--fault-window", "90"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *arguments, "--bound", "300", "--seed", "5"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    table = "\n".join(line for line in result.stdout.splitlines() if "events not sent" not in line)
    print(table)  # the run's table: ``pytest -rP`` shows it for a passing run
    assert result.returncode == 0, table + result.stderr[-3000:]
    total = next(line for line in table.splitlines() if line.startswith("TOTAL")).split()
    faults, experiments, lost, duplicated, stuck = (int(v) for v in total[1:6])
    assert faults > 0 and experiments == 2 and (lost, duplicated, stuck) == (0, 0, 0), table
    trials_lost, trials_duplicated, trials_stuck, events_lost, _, status_lost = (int(v) for v in total[7:13])
    assert (trials_lost, trials_duplicated, trials_stuck, events_lost, status_lost) == (0, 0, 0, 0, 0), table
