"""``GET /study`` comes in pages as ``GET /trials`` does (it returned every trial in one body: 10,000 trials
were megabytes per call, and ``watch`` fetched it only for the spec), and the CLI follows them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.cli.remote import all_trials
from shared.config import Settings
from shared.context import set_context
from shared.dashboard.routes import STUDY_PAGE
from shared.records import ExperimentStatus
from tests.control_plane import local_context
from tests.dashboard_data import make_experiment

EXPERIMENT = "exp-20261130090000-aaaaaa"
BASE = f"/api/experiments/{EXPERIMENT}"


@pytest.fixture
def client(tmp_path):
    context = local_context(tmp_path)
    make_experiment(context.store, EXPERIMENT, trials=12, status=ExperimentStatus.COMPLETED)
    set_context(context)
    yield TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost")
    set_context(None)


def test_the_study_comes_in_pages_each_with_the_spec(client):
    first = client.get(f"{BASE}/study", params={"limit": 5})
    assert [t["number"] for t in first.json()["trials"]] == [0, 1, 2, 3, 4]
    assert first.headers["X-Next-After"] == "4"
    assert first.headers["Link"] == f'<{BASE}/study?after=4&limit=5>; rel="next"'
    assert set(first.json()["spec"]["search_space"]) == {
        "n_estimators",
        "max_depth",
        "max_features",
        "min_samples_leaf",
    }
    last = client.get(f"{BASE}/study", params={"after": 9, "limit": 5})
    assert [t["number"] for t in last.json()["trials"]] == [10, 11] and "X-Next-After" not in last.headers


def test_the_default_page_is_small_and_the_limit_bounded(client):
    assert STUDY_PAGE <= 100
    assert client.get(f"{BASE}/study", params={"limit": 1001}).status_code == 422
    assert client.get(f"{BASE}/study", params={"after": "x"}).status_code == 422


def test_the_cli_follows_the_pages_to_every_trial(client):
    for route in ("study", "trials"):
        trials = all_trials(client, BASE, page=5, route=route)
        assert [t["number"] for t in trials] == list(range(12))


class Counting:
    """A client that counts the trials its ``/trials`` pages carried."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.read = 0

    def get(self, url: str, **kwargs):
        response = self.client.get(url, **kwargs)
        if url.endswith("/trials"):
            self.read += len(response.json())
        return response


def test_watch_rereads_only_what_may_still_change(tmp_path):
    from shared.cli.remote import refresh_trials
    from shared.records import TrialState, updated

    context = local_context(tmp_path)
    make_experiment(context.store, EXPERIMENT, trials=40, running=2, status=ExperimentStatus.RUNNING)
    set_context(context)
    try:
        client = Counting(TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost"))
        known: dict[int, dict] = {}
        assert [t["number"] for t in refresh_trials(client, BASE, known, page=7)] == list(range(42))
        assert client.read == 42
        client.read = 0
        first_running = context.store.list_trials(EXPERIMENT)[40]
        context.store.put_trial(updated(first_running, state=TrialState.COMPLETED, value=0.9))
        trials = refresh_trials(client, BASE, known, page=7)
        assert client.read == 2 and trials[40]["state"] == "COMPLETED" and len(trials) == 42
        client.read = 0
        refresh_trials(client, BASE, known, page=7)
        assert client.read == 1  # only the one still running
    finally:
        set_context(None)
