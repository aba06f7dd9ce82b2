"""``rapids-hpo watch`` and ``status`` as a user reads them in a pipe or a CI log: why it failed, the best
trial however long ago it ran, the metric's name, and rows neither cut nor wrapped at 80 columns."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from shared.dashboard.terminal import BEST_MARK
from shared.records import ExperimentStatus, TrialState
from tests.control_plane import local_context
from tests.dashboard_data import make_experiment
from tests.test_end_to_end import ROOT, served

FAILED_ID = "exp-20261204090000-aaaaaa"
EMPTY_ID = "exp-20261204090000-bbbbbb"
NO_MODEL = "no trial had finished when the experiment was cancelled"
ERROR = "driver lost: the compute [was] evicted 3 times"  # with brackets rich would read as markup


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_watch_says_why_it_failed_and_shows_the_best_trial_unwrapped_in_a_pipe(tmp_path):
    ctx = local_context(tmp_path)
    record = make_experiment(ctx.store, FAILED_ID, trials=14, status=ExperimentStatus.FAILED)
    trials = ctx.store.list_trials(FAILED_ID)
    first = next(t for t in trials if t.state is TrialState.COMPLETED)  # long before the last five
    best = record.best.model_copy(update={"number": first.number, "value": first.value})
    ctx.store.update_experiment(record.model_copy(update={"best": best, "error": ERROR}))
    nothing = {"id": EMPTY_ID, "best": None, "status": ExperimentStatus.CANCELLED, "version": "", "no_model": NO_MODEL}
    ctx.store.create_experiment(record.model_copy(update=nothing))
    with served(tmp_path) as client:
        env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES", "FORCE_COLOR"}}
        env |= {"RAPIDS_HPO_API_URL": str(client.base_url), "PYTHONPATH": str(ROOT)}
        watched = cli(env, "watch", FAILED_ID, "--interval", "0.1")
        status = cli(env, "status", FAILED_ID)
        empty = cli(env, "status", EMPTY_ID)
        cancelled = cli(env, "watch", EMPTY_ID, "--interval", "0.1")
    assert watched.returncode == 1
    assert f"FAILED: {ERROR}" in watched.stderr
    lines = watched.stdout.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    body = [line for line in lines if line.startswith("│")]
    columns = header.count("┃")
    assert all(row.count("│") == columns for row in body), watched.stdout  # no cell wrapped onto a second line
    assert "max_features" in header and "running mean" in header and len(header) > 80
    numbers = [re.match(r"│\s*(\S+(?: \d+)?)\s*│", row).group(1) for row in body]
    assert numbers[0] == f"{BEST_MARK} {first.number}"  # the best trial, though not among the last five
    assert numbers[1:] == [str(t.number) for t in trials[-5:]]
    assert f"best accuracy={first.value:.4f} (trial {first.number})" in watched.stdout
    assert status.returncode == 0 and f"best accuracy={first.value:.4f}" in status.stdout and ERROR in status.stdout
    assert "no completed trial" in empty.stdout and "yet" not in empty.stdout  # it has ended
    assert f"no model: {NO_MODEL}" in empty.stdout  # a cancel that kept no model says why
    assert cancelled.returncode == 1 and f"CANCELLED: no model: {NO_MODEL}" in cancelled.stderr


def test_an_ended_experiment_without_a_completed_trial_is_not_told_yet(tmp_path):
    from shared.dashboard.charts import build_charts
    from shared.dashboard.terminal import experiment_best

    ctx = local_context(tmp_path)
    record = make_experiment(ctx.store, FAILED_ID, trials=4, status=ExperimentStatus.RUNNING)
    for status, expected in (
        (ExperimentStatus.RUNNING, "no completed trial yet"),
        *((ended, "no completed trial") for ended in (ExperimentStatus.FAILED, ExperimentStatus.CANCELLED)),
    ):
        changed = record.model_copy(update={"status": status, "best": None})
        history, _, parallel, _ = build_charts(changed, [], None)
        assert history.empty == parallel.empty == expected
        view = {"status": status.value, "metric": "accuracy", "best": None}
        assert experiment_best(view) == expected
