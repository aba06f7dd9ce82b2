"""The Pareto front members' models (issue 25): the driver refits the kept members (``output.front_models``)
after a completed run and no more, ingestion takes a ``front-models/<number>/`` for those only, and the API
and the dashboard serve each by trial number (the best's is the best model)."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.context import Context
from shared.cost.ledger import BudgetGuard
from shared.hpo.outcome import ExperimentOutcome
from shared.hpo.refit import refit_front_models
from shared.hpo.run_driver import refit_front
from shared.records import BestTrial, ExperimentRecord, TrialRecord, TrialState
from shared.spec import load_spec
from shared.store.compute import ComputeStore
from shared.store.ingest import ARTIFACT_LIMITS
from shared.store.local import LocalStore
from tests.test_cost_budget_run import rates
from tests.test_hpo_refit import FRONT_SPEC, front_trials

SPEC = {**FRONT_SPEC, "limits": {"max_total_trials": 6}, "output": {"front_models": 2}}
"""Two objectives (roc_auc up, model_size_mb down); the run keeps two members' models."""


def trials(experiment_id: str = "exp-front") -> list[TrialRecord]:
    """``front_trials`` (0 the best, 1 on the front, 2 dominated, 3 failed) and trial 4, on the front past the
    two kept members: the front in its order is 0, 1, 4."""
    last = TrialRecord(
        experiment_id="exp-front",
        number=4,
        state=TrialState.COMPLETED,
        value=0.70,
        params={"max_depth": 3, "num_boost_round": 10},
        metrics={"roc_auc": 0.70, "model_size_mb": 0.05},
    )
    return [t.model_copy(update={"experiment_id": experiment_id, "duration_s": 2.0}) for t in [*front_trials(), last]]


def new_record(experiment_id: str, spec: dict[str, Any] = SPEC) -> ExperimentRecord:
    best = BestTrial(number=0, value=0.83, params={"max_depth": 4, "num_boost_round": 10})
    return ExperimentRecord(id=experiment_id, name=experiment_id, spec=load_spec(spec).to_document(), best=best)


# ------------------------------------------------------------------------------------------- ingestion
def compute_area(store: LocalStore, record: ExperimentRecord) -> ComputeStore:
    store.create_experiment(record)
    return ComputeStore.from_json(store.issue_compute_credential(record.id, timedelta(hours=1)).to_json())


def test_ingestion_takes_the_kept_members_models_only(tmp_path: Path) -> None:
    """In one pass with the trials that make the front (listed after artifacts/, judged first): trial 1's
    model is taken; a dominated trial's, a member's past output.front_models, an unknown trial's and
    names that are no member's file are refused, each saying why."""
    store = LocalStore(tmp_path / "store")
    compute = compute_area(store, new_record("exp-front"))
    for trial in trials():
        compute.area.put(f"trials/{trial.number:010d}.json", trial.model_dump_json().encode())
    hostile = ["front-models/2/model.json", "front-models/4/model.json", "front-models/5/model.json"]
    malformed = ["front-models/x/model.json", "front-models/7", "front-models/00000000001/m"]
    for name in ["front-models/1/model.json", "front-models/1/mlflow/MLmodel", *hostile, *malformed]:
        compute.area.put(f"artifacts/{name}", b"{}")
    report = store.ingest_compute_output("exp-front")
    assert sorted(report.artifacts) == ["front-models/1/mlflow/MLmodel", "front-models/1/model.json"]
    assert sorted(report.trials) == [0, 1, 2, 3, 4]
    refused = {name.removeprefix("artifacts/"): why for name, why in report.refused.items()}
    assert sorted(refused) == sorted(hostile + malformed)
    for name in hostile:
        assert "not among the kept Pareto front members [0, 1]" in refused[name]
    for name in malformed:
        assert "not front-models/<trial number>/<file>" in refused[name]
    assert store.list_artifacts("exp-front", "front-models/") == ["front-models/1/mlflow/MLmodel",
                                                                  "front-models/1/model.json"]  # fmt: skip


def test_one_objective_takes_no_front_model_and_an_oversized_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    one = {**SPEC, "objective": {"primary_metric": "roc_auc", "goal": "maximize"}, "sampling_algorithm": {}}
    compute = compute_area(store, new_record("exp-one", one))
    compute.area.put("trials/0000000000.json", trials("exp-one")[0].model_dump_json().encode())
    compute.area.put("artifacts/front-models/0/model.json", b"{}")
    report = store.ingest_compute_output("exp-one")
    assert "this experiment has one objective" in report.refused["artifacts/front-models/0/model.json"]
    monkeypatch.setitem(ARTIFACT_LIMITS, "front-models/", 64)  # the limit's check, without writing a GiB
    compute = compute_area(store, new_record("exp-big"))
    compute.area.put("trials/0000000000.json", trials("exp-big")[0].model_dump_json().encode())
    compute.area.put("artifacts/front-models/0/model.json", b"x" * 65)
    report = store.ingest_compute_output("exp-big")
    assert report.refused == {"artifacts/front-models/0/model.json": "65 bytes; at most 64"}
    assert store.list_artifacts("exp-big", "front-models/") == []


# ------------------------------------------------------------------------------------------- the API
MEMBER_1_SCORES = {
    "trial": 1,
    "primary_metric": "roc_auc",
    "value": 0.80,
    "metrics": {"roc_auc": 0.80, "model_size_mb": 0.1, "accuracy": 0.80 - 0.05},
}
"""Trial 1's cross-validated scores (``tests.test_hpo_refit.front_trials``), as its refit records them."""
MEMBER_1_METRICS = json.dumps({"cross_validation": MEMBER_1_SCORES, "model_path": "model.json"}).encode()
"""Trial 1's refit's metrics.json."""


def stored(ctx: Context, metrics: bytes | None = MEMBER_1_METRICS) -> str:
    """exp-front in the control plane's store: its trials, the best model and trial 1's, whole (its
    metrics.json, naming trial 1's scores, stored last); ``metrics``: that file instead (None: none)."""
    ctx.store.create_experiment(new_record("exp-front"))
    for trial in trials():
        ctx.store.put_trial(trial)
    ctx.store.put_artifact("exp-front", "model/model.json", b'{"best": 0}')
    ctx.store.put_artifact("exp-front", "front-models/1/model.json", b'{"trial": 1}')
    ctx.store.put_artifact("exp-front", "front-models/1/mlflow/MLmodel", b"flavors: {}")
    if metrics is not None:
        ctx.store.put_artifact("exp-front", "front-models/1/metrics.json", metrics)
    return "/api/experiments/exp-front"


def unzip(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_each_kept_member_model_downloads_by_number_and_the_rest_say_why_not(ctx: Context) -> None:
    base = stored(ctx)
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    member = client.get(f"{base}/trials/1/model")
    assert member.status_code == 200 and member.headers["content-type"] == "application/zip"
    assert "exp-front-trial-1-model.zip" in member.headers["content-disposition"]
    assert unzip(member.content) == {
        "model.json": b'{"trial": 1}',
        "mlflow/MLmodel": b"flavors: {}",
        "metrics.json": MEMBER_1_METRICS,
    }
    assert unzip(client.get(f"{base}/trials/0/model").content) == unzip(client.get(f"{base}/model").content)
    for number, why in [
        (2, "trial 2 is not on the Pareto front: trial 0 is at least as good on every objective"),
        (3, "trial 3 is not on the Pareto front: it ended FAILED"),
        (9, "the experiment has no trial 9"),
        (4, "trial 4 of experiment 'exp-front' has no stored model (status SUBMITTED): a run keeps the first "
            "output.front_models=2 front members' models [0, 1]"),
    ]:  # fmt: skip
        answer = client.get(f"{base}/trials/{number}/model")
        assert answer.status_code == 404 and why in answer.json()["detail"], answer.text
    for bad in ["x", "-1", "1.5", "10000000000"]:
        answer = client.get(f"{base}/trials/{bad}/model")
        assert answer.status_code == 422 and [e["loc"] for e in answer.json()["errors"]] == ["path.number"]
    assert client.get("/api/experiments/exp-nowhere/trials/1/model").status_code == 404
    view = client.get(f"{base}/pareto").json()
    links = {m["number"]: m["model_uri"] for m in view["front"]}
    assert links == {0: f"{base}/trials/0/model", 1: f"{base}/trials/1/model", 4: None}
    assert view["models_kept"] == 2


def test_the_dashboard_links_each_stored_member_to_its_download(ctx: Context) -> None:
    base = stored(ctx)
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    page = client.get("/api/ui/experiments/exp-front").text
    table = page[page.index('<table id="front">') :].split("</table>")[0]
    assert table.count('class=front-model href="') == 2
    assert f'href="{base}/trials/0/model"' in table and f'href="{base}/trials/1/model"' in table
    assert "/trials/4/model" not in table and "/trials/2/model" not in table
    assert "★" in table


# ------------------------------------------------------------------------------------------- the driver
def outcome(status: str = "COMPLETED") -> ExperimentOutcome:
    best = BestTrial(number=0, value=0.83, params={"max_depth": 4, "num_boost_round": 10})
    return ExperimentOutcome(status, "trial budget used", 5, best)  # type: ignore[arg-type]


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_the_kept_members_are_refit_in_the_fronts_order_until_blocked(tmp_path: Path, dask_client: Client) -> None:
    """Kept: 0 (the best: refit_best's), 1, then 4; blocked before the second refit (a cancel came), trial 4
    keeps no model. (Every kept member refit: the end-to-end run below.)"""
    store = LocalStore(tmp_path / "store")
    spec = load_spec({**SPEC, "output": {"front_models": 3}})
    for trial in trials():
        store.put_trial(trial)
    answers = iter([None, "the experiment was cancelled"])
    assert refit_front_models(spec, "exp-front", 0, store, dask_client, lambda: next(answers)) == [1]
    assert {name.split("/")[1] for name in store.list_artifacts("exp-front", "front-models/")} == {"1"}
    metrics = json.loads(store.get_artifact("exp-front", "front-models/1/metrics.json"))
    assert metrics["cross_validation"]["trial"] == 1 and metrics["params"]["max_depth"] == 2
    assert store.list_artifacts("exp-front", "model/") == []  # the best model is refit_best's


@pytest.mark.parametrize("case", ["cancelled run", "cancel after the run", "budget spent", "one objective"])
def test_no_front_refit_starts_after_a_cancel_past_the_budget_or_with_one_objective(
    tmp_path: Path, dask_client: Client, case: str
) -> None:
    store = LocalStore(tmp_path / "store")
    document = SPEC if case != "one objective" else {**SPEC, "objective": {"primary_metric": "roc_auc"}}
    for trial in trials():
        store.put_trial(trial)
    # $1 a trial-second against a $5 budget: the five trials' 10 s spent it
    spent = BudgetGuard(rates(1.0, None), budget_usd=5.0, started_at=datetime.now(UTC))
    refit_front(
        load_spec({**document, "sampling_algorithm": {"type": "nsga2" if case != "one objective" else "tpe"}}),
        "exp-front",
        outcome("CANCELLED" if case == "cancelled run" else "COMPLETED"),
        store,
        dask_client,
        lambda: case == "cancel after the run",
        spent if case == "budget spent" else None,
    )
    assert store.list_artifacts("exp-front", "front-models/") == []


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_two_objective_run_keeps_its_fronts_models_and_serves_each(tmp_path: Path) -> None:
    """``rapids-hpo serve`` with its driver process: a two-objective run ends COMPLETED with the best model in
    model/ and each other kept member's refit under front-models/<number>/ in the control plane's store,
    each downloadable by trial number and loadable, and the dashboard links them."""
    from gpu_jobs.train import load_model
    from tests.control_plane import tiny_spec
    from tests.test_end_to_end import finished, served, submit, wait_for

    document = tiny_spec(
        objective={"primary_metric": "accuracy", "also": [{"metric": "model_size_mb"}]},
        sampling_algorithm={"type": "nsga2", "seed": 5},
        search_space={
            "n_estimators": {"type": "choice", "values": [3, 30]},
            "max_depth": {"type": "choice", "values": [2, 4, 12]},
        },
        limits={"max_total_trials": 6, "max_concurrent_trials": 2},
    )
    with served(tmp_path) as client:
        experiment_id = submit(client, document)
        body = wait_for(client, experiment_id, finished)
        assert body["status"] == "COMPLETED", body
        base = f"/api/experiments/{experiment_id}"
        front = client.get(f"{base}/pareto").json()["front"]
        kept = [m["number"] for m in front[:5]]
        assert len(kept) >= 2 and front[0]["number"] == body["best"]["number"], front  # a trade-off was found
        assert all(m["model_uri"] == f"{base}/trials/{m['number']}/model" for m in front[:5])
        files = LocalStore(tmp_path / "store").list_artifacts(experiment_id, "front-models/")
        assert {name.split("/")[1] for name in files} == {str(n) for n in kept[1:]}
        trial_params = {t["number"]: t["params"] for t in client.get(f"{base}/trials").json()}
        for number in kept[1:]:
            answer = client.get(f"{base}/trials/{number}/model")
            assert answer.status_code == 200, answer.text
            with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
                archive.extractall(tmp_path / f"member-{number}")
                metrics = json.loads(archive.read("metrics.json"))
            assert metrics["cross_validation"]["trial"] == number
            assert {k: metrics["params"][k] for k in trial_params[number]} == trial_params[number]
            assert load_model(tmp_path / f"member-{number}").encoding.feature_names
        page = client.get(f"/api/ui/experiments/{experiment_id}").text
        assert page.count("class=front-model") == len(kept)
