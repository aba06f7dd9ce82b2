"""The HPO driver's store calls wait out a storage outage (an Azurite of the test's own, SIGKILLed and
restarted on the same folder) instead of failing the experiment, and give up on what is not transient."""

from __future__ import annotations

import threading
import time

import pytest

from shared.errors import NotFound
from shared.hpo.patient_store import patient
from shared.records import ExperimentRecord, TrialRecord, TrialState
from shared.store import AzureStore
from tests.azurite_process import Azurite

pytestmark = pytest.mark.azurite


@pytest.fixture
def azurite(tmp_path):
    own = Azurite(tmp_path / "azurite")
    own.start()
    yield own
    own.kill()


@pytest.mark.slow  # an Azurite of its own killed and restarted: 11 s at load 5; CI runs it
def test_a_trial_written_during_an_outage_is_stored_once_storage_is_back(azurite):
    store = AzureStore.from_connection_string(azurite.connection_string)
    store.create_experiment(ExperimentRecord(id="exp-1", name="n", spec={}))
    azurite.kill()
    restart = threading.Timer(4.0, azurite.start)
    restart.start()
    began = time.monotonic()
    trial = TrialRecord(experiment_id="exp-1", number=0, params={"a": 1}, state=TrialState.RUNNING)
    patient(store, patience=120).put_trial(trial)
    restart.join()
    assert time.monotonic() - began >= 4.0
    assert [t.number for t in store.list_trials("exp-1")] == [0]  # the folder kept what was written before


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_an_outage_longer_than_the_patience_raises(azurite):
    store = AzureStore.from_connection_string(azurite.connection_string)
    store.create_experiment(ExperimentRecord(id="exp-1", name="n", spec={}))
    azurite.kill()
    with pytest.raises(Exception, match="onnect"):
        patient(store, patience=2).get_experiment("exp-1")


def test_what_is_not_transient_is_not_retried(azurite):
    store = AzureStore.from_connection_string(azurite.connection_string)
    calls = []
    real = store.get_experiment

    def counted(experiment_id: str) -> ExperimentRecord:
        calls.append(experiment_id)
        return real(experiment_id)

    store.get_experiment = counted  # type: ignore[method-assign]
    with pytest.raises(NotFound):
        patient(store, patience=60).get_experiment("exp-missing")
    assert calls == ["exp-missing"]
