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


@pytest.mark.slow
def test_the_fidelity_cost_bench_prints_each_table_at_a_small_size() -> None:
    out = _bench("bench/fidelity_cost.py", "--draws", "1", "--rounds", "20", "--tables", "breast_cancer")
    [row] = [line.split() for line in out.splitlines() if line.startswith("breast_cancer")]
    shares = [float(value) for value in row[1:4]]  # 11 and 33 percent of the rows, 10 rounds
    assert min(shares) > 0 and float(row[-5]) > 0  # each a share of the full refit timed beside it


def test_successive_halving_by_rounds_pays_each_rung_for_the_share_that_reaches_it() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.fidelity_cost import asha_rounds

    # 160 rounds, rungs at 10, 30, 90: all pay 10 rounds, a third 20 more, a ninth 60 more, a 27th the last 70.
    assert asha_rounds(0.1, 160) == pytest.approx(0.1 * (1 + 2 / 3 + 6 / 9 + 7 / 27))
    assert asha_rounds(0.1, 10) == pytest.approx(0.1)  # no rung before the end: the whole trial
