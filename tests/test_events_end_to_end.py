"""End to end with events on: ``rapids-hpo serve`` (real uvicorn, queue workers, driver process and
Dask LocalCluster) configured with ``EVENTGRID_TOPIC_ENDPOINT``/``EVENTGRID_TOPIC_KEY``, publishing
through the real Event Grid client to the local topic receiver."""

from __future__ import annotations

from collections import Counter

import pytest

from shared.events.catalog import BEST_TRIAL_IMPROVED, STATUS_CHANGED, TRIAL_FINISHED
from tests.control_plane import tiny_spec
from tests.test_end_to_end import finished, served, submit, wait_for
from tests.topic_receiver import TopicReceiver

SOURCE = "/rapids-hpo-control/e2e"


@pytest.mark.slow
def test_a_served_experiment_publishes_its_whole_story_to_the_topic(tmp_path):
    receiver = TopicReceiver().start()
    settings = {
        "EVENTGRID_TOPIC_ENDPOINT": receiver.endpoint,
        "EVENTGRID_TOPIC_KEY": receiver.key,
        "RAPIDS_HPO_EVENTS_SOURCE": SOURCE,
    }
    try:
        with served(tmp_path, settings) as client:
            experiment_id = submit(client, tiny_spec())
            body = wait_for(client, experiment_id, finished)
            assert body["status"] == "COMPLETED", body
            trials = client.get(f"/api/experiments/{experiment_id}/trials").json()
            wait_for(
                client, experiment_id, lambda _: any(e["data"].get("status") == "COMPLETED" for e in receiver.events)
            )
    finally:
        receiver.stop()
    events = receiver.events
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "each event once"
    assert {e["source"] for e in events} == {SOURCE}
    assert all(e["subject"].startswith(f"/experiments/{experiment_id}") for e in events)

    statuses = [e["data"]["status"] for e in events if e["type"] == STATUS_CHANGED]
    assert statuses == ["SUBMITTED", "PROVISIONING", "RUNNING", "FINALIZING", "COMPLETED"]
    assert [e["id"] for e in events if e["type"] == STATUS_CHANGED] == [
        f"{experiment_id}/status/{n}" for n in range(1, 6)
    ]
    finished_events = {e["data"]["number"]: e for e in events if e["type"] == TRIAL_FINISHED}
    assert sorted(finished_events) == sorted(t["number"] for t in trials) == [0, 1, 2]
    for t in trials:
        data = finished_events[t["number"]]["data"]
        assert (data["state"], data["value"], data["params"], data["engine"]) == (
            t["state"],
            t["value"],
            t["params"],
            t["engine"],
        )
        assert data["duration_s"] == t["duration_s"] and data["engine"]
        assert finished_events[t["number"]]["subject"] == f"/experiments/{experiment_id}/trials/{t['number']}"

    # Improvements: strictly better each time, ending at the experiment's best; each after its trial.
    improved = [e for e in events if e["type"] == BEST_TRIAL_IMPROVED]
    values = [e["data"]["value"] for e in improved]
    assert improved and values == sorted(values) and len(set(values)) == len(values)
    assert improved[-1]["data"]["number"] == body["best"]["number"]
    for event in improved:
        assert ids.index(f"{experiment_id}/trials/{event['data']['number']}/1") < ids.index(event["id"])
    # Every trial ended before the run was reported finished, so its event precedes FINALIZING.
    finalizing = ids.index(f"{experiment_id}/status/4")
    assert all(ids.index(e["id"]) < finalizing for e in finished_events.values())
    assert Counter(e["type"] for e in events)[STATUS_CHANGED] == 5
    completed = next(e for e in events if e["data"].get("status") == "COMPLETED")["data"]
    assert completed["best"]["number"] == body["best"]["number"] and completed["progress"] == {"done": 3, "total": 3}
