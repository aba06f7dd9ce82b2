"""A hostile compute writes Pareto front models (issue 25): one for a trial off the front and one over the
size limit. Both are refused at ingestion, the run fails saying so, nothing of them is stored or served,
and every other experiment is untouched (the real POLL and TEARDOWN steps on Azurite, as in
``tests/test_hostile_compute.py``)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.context import Context
from shared.store.ingest import ARTIFACT_LIMITS
from tests.test_hostile_compute import _put_trial, _trial, assert_contained, ctx, poll_and_teardown, running

__all__ = ["ctx"]  # the Azurite control plane's fixture
pytestmark = pytest.mark.azurite
TWO_OBJECTIVES = {
    "objective": {"primary_metric": "accuracy", "goal": "maximize", "also": [{"metric": "model_size_mb"}]},
    "sampling_algorithm": {"type": "nsga2", "seed": 1},
    "early_termination": None,
}


def test_front_models_off_the_front_or_oversized_are_refused_and_fail_the_run(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ARTIFACT_LIMITS, "front-models/", 1024)  # the limit's check, without writing a GiB
    running(ctx, "exp-bystander")
    record, compute = running(ctx, "exp-front-hostile", TWO_OBJECTIVES)
    for number, (accuracy, size) in enumerate([(0.9, 1.0), (0.8, 0.5), (0.7, 2.0)]):  # 2: dominated by 0
        metrics = {"accuracy": accuracy, "model_size_mb": size}
        _put_trial(compute, _trial(record.id, number, value=accuracy, metrics=metrics))
    compute.area.put("artifacts/front-models/2/model.json", b"{}")
    compute.area.put("artifacts/front-models/1/model.json", b"x" * 1025)
    hostile = poll_and_teardown(ctx, record.id)
    assert "artifacts/front-models/2/model.json: trial 2 is not among the kept Pareto front members" in (
        hostile.error or ""
    )
    assert "artifacts/front-models/1/model.json: 1025 bytes; at most 1024" in (hostile.error or "")
    assert ctx.store.list_artifacts(record.id, "front-models/") == []
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    for number in (1, 2):
        assert client.get(f"/api/experiments/{record.id}/trials/{number}/model").status_code == 404
    front = client.get(f"/api/experiments/{record.id}/pareto").json()["front"]
    assert [(m["number"], m["model_uri"]) for m in front] == [(0, None), (1, None)]
    assert_contained(ctx, hostile, compute, "exp-bystander")
