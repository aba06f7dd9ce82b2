"""The per-trial benches still run (``bench/large_experiment.py`` had broken silently when the overhead
bench's helpers began returning CPU time beside wall time): each at a tiny size, checked for its figures,
not timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_overhead_bench_prints_both_sides_at_a_small_size() -> None:
    out = _bench("bench/hpo_overhead.py", "--noop", "--sizes", "20")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["20"]]
    assert [row[1] for row in rows] == ["none", "median"]
    assert all(float(value) > 0 for row in rows for value in row[2:])


@pytest.mark.slow
def test_the_large_experiment_bench_runs_and_serves_its_reads_at_a_small_size() -> None:
    out = _bench("bench/large_experiment.py", "--trials", "20", "--skip-journal")
    assert "ours (HpoDriver, LocalCluster 2x1, local store):" in out and "ms/trial (CPU" in out
    assert "GET /trials (first page, default size)" in out and "rapids-hpo watch" in out
