"""A driver restarted during the front refits (a vmcluster head's restart, a local driver after SIGKILL)
resumes them: a member whose model is stored whole (its ``metrics.json``, written last, names its scores) is
not refit; a member whose refit the kill cut short is refit, and its files overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import Client

from shared.hpo.refit import refit_best_model, stored_complete
from shared.hpo.run_driver import refit_front
from shared.pareto import front_member
from shared.spec import load_spec
from shared.store.local import LocalStore
from tests.test_front_models import MEMBER_1_SCORES, SPEC, outcome, trials

THREE_KEPT = {**SPEC, "output": {"front_models": 3}}
"""Kept: 0 (the best, refit_best's), then 1 and 4, refit in that order."""


class Killed(BaseException):
    """The driver process gone between two writes (SIGKILL, the head's container restarted): nothing after
    it runs, no handler sees it (a BaseException, as a kill is to the code it interrupts)."""


class KilledAt(LocalStore):
    """The area a driver killed just before storing ``name`` leaves behind: every earlier put done, none after."""

    def __init__(self, root: Path, name: str) -> None:
        super().__init__(root)
        self.name = name

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        if name == self.name:
            raise Killed(name)
        return super().put_artifact(experiment_id, name, data)


class Recording(LocalStore):
    """The area as the restarted driver writes it, each artifact's name recorded in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        self.puts.append(name)
        return super().put_artifact(experiment_id, name, data)


def files(store: LocalStore, prefix: str) -> dict[str, bytes]:
    return {name: store.get_artifact("exp-front", name) for name in store.list_artifacts("exp-front", prefix)}


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_restarted_driver_refits_only_the_member_it_had_not_stored_whole(tmp_path: Path, dask_client: Client) -> None:
    """The first driver stores member 1's model and every file of member 4's but its metrics.json, then is
    killed; the restarted one refits 4 alone, its metrics.json last, and leaves 1's files as they were."""
    spec, root = load_spec(THREE_KEPT), tmp_path / "store"
    first = KilledAt(root, "front-models/4/metrics.json")
    for trial in trials():
        first.put_trial(trial)
    with pytest.raises(Killed):
        refit_front(spec, "exp-front", outcome(), first, dask_client, lambda: False, None)
    member_1, partial_4 = files(first, "front-models/1/"), files(first, "front-models/4/")
    assert "front-models/1/metrics.json" in member_1 and len(member_1) > 1
    assert partial_4 and "front-models/4/metrics.json" not in partial_4  # the model's files, not its marker

    restarted = Recording(root)
    refit_front(spec, "exp-front", outcome(), restarted, dask_client, lambda: False, None)
    assert restarted.puts and all(name.startswith("front-models/4/") for name in restarted.puts), restarted.puts
    assert restarted.puts[-1] == "front-models/4/metrics.json" and set(restarted.puts) >= set(partial_4)
    assert files(restarted, "front-models/1/") == member_1
    metrics = json.loads(restarted.get_artifact("exp-front", "front-models/4/metrics.json"))
    assert metrics["cross_validation"]["trial"] == 4 and metrics["params"]["max_depth"] == 3

    again = Recording(root)  # a third start, every member whole: nothing refit
    refit_front(spec, "exp-front", outcome(), again, dask_client, lambda: False, None)
    assert again.puts == []


METRICS_CASES = [
    (None, False),  # the kill came before metrics.json
    (b"", False),
    (b'{"cross_validation": {"trial": 1', False),  # cut short (a store that wrote in pieces)
    (b"\xff\xfe{}", False),  # not UTF-8
    (b"[]", False),
    (b'{"cross_validation": null}', False),
    (json.dumps({"model_path": "model.json"}).encode(), False),  # no scores
    (json.dumps({"cross_validation": {**MEMBER_1_SCORES, "trial": 4}}).encode(), False),  # another trial's
    (json.dumps({"cross_validation": {**MEMBER_1_SCORES, "value": 0.81}}).encode(), False),  # other scores
    (json.dumps({"cross_validation": MEMBER_1_SCORES, "rows": 2000}).encode(), True),
]
"""A member's stored metrics.json (None: absent) and whether it marks the model whole: the driver's rule before
it refits and the control plane's before it serves (tests/test_front_models_partial.py)."""


@pytest.mark.parametrize(("content", "whole"), METRICS_CASES)
def test_only_a_metrics_file_naming_the_members_own_scores_marks_its_model_whole(
    tmp_path: Path, content: bytes | None, whole: bool
) -> None:
    store, spec = LocalStore(tmp_path / "store"), load_spec(THREE_KEPT)
    if content is not None:
        store.put_artifact("exp-front", "front-models/1/metrics.json", content)
    assert stored_complete(spec, "exp-front", front_member(spec, trials(), 1), store) is whole


class NoCluster:
    """A client that must not be asked: a refit submitted here is the redone work the test forbids."""

    def submit(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the restarted driver refit the best model again")


@pytest.mark.slow  # three refits: the default run stays under 5 minutes (CI runs every test)
def test_a_restarted_driver_keeps_the_best_model_stored_whole_and_refits_one_cut_short(
    tmp_path: Path, dask_client: Client
) -> None:
    """The best model's refit is a trial's worth of GPU time: a driver restarted after it stored the model
    whole (``model/metrics.json`` names the trial's scores, its URI on the trial) keeps it; a model whose
    marker is missing or names other scores is refit, its files overwritten."""
    spec, root = load_spec(SPEC), tmp_path / "store"
    first = KilledAt(root, "model/metrics.json")
    for trial in trials():
        first.put_trial(trial)
    best = front_member(spec, trials(), 0)
    with pytest.raises(Killed):  # killed just before the marker: the model's files stored, not the marker
        refit_best_model(spec, "exp-front", best, first, dask_client)
    assert files(first, "model/") and "model/metrics.json" not in files(first, "model/")

    second = Recording(root)  # restarted: no marker, so refit (the trial has no URI yet either)
    kept = refit_best_model(spec, "exp-front", best, second, dask_client)
    assert second.puts[-1] == "model/metrics.json" and kept.model_uri
    whole = files(second, "model/")

    third = Recording(root)  # restarted again after the model was stored whole: nothing redone
    again = refit_best_model(spec, "exp-front", best, third, NoCluster())  # type: ignore[arg-type]
    assert third.puts == [] and again.model_uri == kept.model_uri and files(third, "model/") == whole

    marker = json.loads(whole["model/metrics.json"])  # a marker naming other scores: not this trial's model
    marker["cross_validation"]["value"] = 0.5
    third.put_artifact("exp-front", "model/metrics.json", json.dumps(marker).encode())
    fourth = Recording(root)
    refit_best_model(spec, "exp-front", best, fourth, dask_client)
    assert fourth.puts[-1] == "model/metrics.json" and set(files(fourth, "model/")) == set(whole)
