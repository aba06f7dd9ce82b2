"""A Pareto front member's model counts as stored only when whole (issue 25): a driver that died during a front
refit, never to finish it, leaves files without the ``metrics.json`` it writes last. The control plane serves
and links a member only when its ``metrics.json`` was ingested after the member's other files and names that
member's cross-validated scores (``shared.pareto.member_model_problem``); anything else is a 404 saying why."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.api import create_api
from shared.context import Context
from shared.hpo.refit import written_last
from shared.store.compute import ComputeStore
from shared.store.local import LocalStore
from tests.control_plane import local_context
from tests.test_front_models import MEMBER_1_METRICS, compute_area, new_record, stored, trials, unzip
from tests.test_front_models_resume import METRICS_CASES

MEMBER_FILES = {"model.json": b'{"trial": 1}', "mlflow/MLmodel": b"flavors: {}", "metrics.json": MEMBER_1_METRICS}
"""Trial 1's refit as the driver stores it under front-models/1/."""


def served(ctx: Context, base: str) -> tuple[int, str, str | None, bool]:
    """Member 1's download (status, text), its model_uri on /pareto and whether the dashboard links it."""
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    answer = client.get(f"{base}/trials/1/model")
    links = {m["number"]: m["model_uri"] for m in client.get(f"{base}/pareto").json()["front"]}
    page = client.get("/api/ui/experiments/exp-front").text
    text = answer.text if answer.status_code != 200 else ""
    return answer.status_code, text, links[1], f'href="{base}/trials/1/model"' in page


@pytest.mark.parametrize(("content", "whole"), METRICS_CASES)
def test_a_member_without_a_metrics_file_naming_its_scores_is_not_served(
    ctx: Context, content: bytes | None, whole: bool
) -> None:
    """Model files and no metrics.json (the refit cut short), or one that does not parse or names other
    scores: a 404 saying why, no link; the one naming trial 1's scores: the zip."""
    base = stored(ctx, content)
    status, text, link, linked = served(ctx, base)
    if whole:
        assert (status, link, linked) == (200, f"{base}/trials/1/model", True)
        return
    assert status == 404 and "trial 1 of experiment 'exp-front' has no whole model" in text, text
    if content is None:
        assert "its refit did not finish: metrics.json, stored last, is missing" in text
    else:
        assert "its metrics.json is not JSON" in text or "does not carry trial 1's cross-validated scores" in text
    assert link is None and not linked


def test_an_oversized_metrics_file_is_not_read_whole(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files may be up to 1 GiB each: the control plane reads a member's metrics.json only to a bound."""
    monkeypatch.setattr("shared.pareto.MAX_MEMBER_METRICS_BYTES", len(MEMBER_1_METRICS) - 1)
    status, text, link, _ = served(ctx, stored(ctx))
    assert status == 404 and f"its metrics.json is over {len(MEMBER_1_METRICS) - 1} bytes" in text and link is None


def area_with_trials(store: LocalStore) -> ComputeStore:
    compute = compute_area(store, new_record("exp-front"))
    for trial in trials():
        compute.area.put(f"trials/{trial.number:010d}.json", trial.model_dump_json().encode())
    return compute


def test_ingestion_takes_a_members_metrics_file_only_when_it_was_written_last(tmp_path: Path) -> None:
    """A metrics.json modified before another file of its member, or a file modified after its member's
    metrics.json, is refused (the model it attests may not be these files); in one pass, metrics.json is
    copied after the member's other files whatever the listing's order."""
    store = LocalStore(tmp_path / "store")
    compute = area_with_trials(store)
    for name, data in MEMBER_FILES.items():
        compute.area.put(f"artifacts/front-models/1/{name}", data)
    root = Path(compute.credential.url)
    os.utime(root / "artifacts/front-models/1/metrics.json", (1_700_000_000, 1_700_000_000))  # before the rest
    report = store.ingest_compute_output("exp-front")
    assert (
        "written before artifacts/front-models/1/mlflow/MLmodel: a member's metrics.json is written last"
        in (report.refused["artifacts/front-models/1/metrics.json"])
    )
    assert store.list_artifacts("exp-front", "front-models/1/metrics.json") == []

    store = LocalStore(tmp_path / "store-2")
    compute = area_with_trials(store)
    for name, data in MEMBER_FILES.items():
        compute.area.put(f"artifacts/front-models/1/{name}", data)
    report = store.ingest_compute_output("exp-front")
    assert report.refused == {} and report.artifacts[-1] == "front-models/1/metrics.json"  # listed first, taken last
    compute.area.put("artifacts/front-models/1/model.json", b'{"another": "model"}')
    later = (root := Path(compute.credential.url)) / "artifacts/front-models/1/metrics.json"
    os.utime(root / "artifacts/front-models/1/model.json", (later.stat().st_mtime + 5,) * 2)
    report = store.ingest_compute_output("exp-front")
    assert "written after its member's metrics.json" in report.refused["artifacts/front-models/1/model.json"]
    assert store.get_artifact("exp-front", "front-models/1/model.json") == b'{"trial": 1}'


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(killed_after=st.integers(0, len(MEMBER_FILES)), polls=st.sets(st.integers(0, len(MEMBER_FILES))))
def test_a_refit_killed_at_any_point_is_served_only_once_whole(killed_after: int, polls: set[int]) -> None:
    """The driver stores member 1's files in its order (metrics.json last) and is killed after
    ``killed_after`` of them, the control plane ingesting after any of ``polls`` puts and at the end: the
    member is linked and served exactly when every file was stored, never a partial zip."""
    with tempfile.TemporaryDirectory(prefix="front-partial-") as folder:
        ctx = local_context(Path(folder))
        assert isinstance(ctx.store, LocalStore)
        compute = area_with_trials(ctx.store)
        for done, (name, data) in enumerate(written_last(MEMBER_FILES)[:killed_after]):
            if done in polls:
                ctx.store.ingest_compute_output("exp-front")
            compute.area.put(f"artifacts/front-models/1/{name}", data)
        report = ctx.store.ingest_compute_output("exp-front")
        assert report.refused == {}
        status, text, link, linked = served(ctx, "/api/experiments/exp-front")
        whole = killed_after == len(MEMBER_FILES)
        assert (status == 200, link is not None, linked) == (whole, whole, whole), text
        if whole:
            client = TestClient(create_api(context=ctx), base_url="http://localhost")
            assert unzip(client.get("/api/experiments/exp-front/trials/1/model").content) == MEMBER_FILES
