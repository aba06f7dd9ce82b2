"""One conformance suite for every ``Store`` adapter (the pattern of Optuna's storage tests).

Each test takes the ``store`` fixture, which builds every adapter in ``STORE_IDS`` in turn: ``local``
in a temporary folder, ``azure`` on Azurite with tables and a container of its own (so listing tests
see only their own records). A multi-process test of the local adapter closes the file.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier as SyncBarrier
from pathlib import Path
from urllib.parse import urlparse

import pytest

from shared.errors import AlreadyExists, ConcurrencyConflict, CorruptRecord, InvalidPageToken, NotFound
from shared.ports import Store, TrialStore
from shared.records import (
    MAX_STEPS,
    BestTrial,
    ExperimentRecord,
    ExperimentStatus,
    Transition,
    TrialRecord,
    TrialState,
    UnreadableRecord,
)
from shared.store import AzureStore, LocalStore
from tests.control_plane import tiny_spec

STORE_IDS = [pytest.param("local", id="local"), pytest.param("azure", id="azure", marks=pytest.mark.azurite)]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@contextmanager
def build_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """Build one adapter with storage of its own, and clean it up afterwards."""
    if kind == "local":
        store = LocalStore(tmp_path / "store")
        yield store
        store.close()
    elif kind == "azure":  # tables and containers of its own on Azurite, removed afterwards
        yield request.getfixturevalue("azure_store")
    else:
        raise ValueError(kind)


@pytest.fixture(params=STORE_IDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with build_store(request.param, tmp_path, request) as built:
        yield built


def experiment(
    experiment_id: str,
    *,
    created_at: datetime = T0,
    status: ExperimentStatus = ExperimentStatus.SUBMITTED,
    **fields: object,
) -> ExperimentRecord:
    return ExperimentRecord(
        id=experiment_id,
        name=f"name of {experiment_id}",
        spec=tiny_spec(),
        status=status,
        created_at=created_at,
        updated_at=created_at,
        last_progress_at=created_at,
        **fields,
    )


def trial(experiment_id: str, number: int, **fields: object) -> TrialRecord:
    return TrialRecord(
        experiment_id=experiment_id,
        number=number,
        params={"max_depth": 5 + number},
        state=fields.pop("state", TrialState.COMPLETED),
        **fields,
    )


def same_record(got: ExperimentRecord, expected: ExperimentRecord) -> bool:
    return got == expected.model_copy(update={"version": got.version})


def test_adapter_implements_the_ports(store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store, TrialStore)


def test_create_then_get_round_trips_every_field(store: Store) -> None:
    record = experiment(
        "exp-1",
        status=ExperimentStatus.RUNNING,
        started_at=T0 + timedelta(seconds=1.5),
        trials_total=10,
        trials_done=3,
        best=BestTrial(number=2, value=0.86, params={"n_estimators": 120, "max_features": 0.5}),
        idempotency_key="key-1",
        backend_state={"cluster": {"vms": ["vm-0", "vm-1"], "tags": {"owner": "exp-1"}}, "pid": 42},
        history=[Transition(at=T0, status=ExperimentStatus.SUBMITTED, reason="héllo ✓ 🚀")],
    )

    created = store.create_experiment(record)

    assert created.version
    assert same_record(created, record)
    got = store.get_experiment("exp-1")
    assert got == created
    assert got.created_at == T0 and got.created_at.tzinfo is not None
    assert got.best is not None and got.best.params == {"n_estimators": 120, "max_features": 0.5}
    assert got.backend_state["cluster"]["vms"] == ["vm-0", "vm-1"]


def test_create_with_a_taken_id_raises_already_exists(store: Store) -> None:
    store.create_experiment(experiment("exp-1"))

    with pytest.raises(AlreadyExists):
        store.create_experiment(experiment("exp-1", created_at=T0 + timedelta(hours=1)))

    assert store.get_experiment("exp-1").name == "name of exp-1"
    assert [r.id for r in store.list_experiments()[0]] == ["exp-1"]


def test_missing_records_raise_not_found(store: Store) -> None:
    store.create_experiment(experiment("exp-1"))
    store.put_artifact("exp-1", "a.txt", b"a")

    with pytest.raises(NotFound):
        store.get_experiment("nope")
    with pytest.raises(NotFound):
        store.update_experiment(experiment("nope").model_copy(update={"version": "1"}))
    with pytest.raises(NotFound):
        store.get_artifact("exp-1", "b.txt")
    with pytest.raises(NotFound):
        store.get_artifact("nope", "a.txt")
    assert store.list_trials("nope") == []
    assert store.list_artifacts("nope") == []


@pytest.mark.parametrize("bad_id", ["", "a/b", "a\\b", "a#b", "a?b", "_reserved", ".hidden", "x" * 201])
def test_invalid_experiment_ids_are_refused(store: Store, bad_id: str) -> None:
    with pytest.raises(ValueError, match="invalid experiment id"):
        store.create_experiment(experiment(bad_id))
    with pytest.raises(ValueError, match="invalid experiment id"):
        store.put_artifact(bad_id, "a.txt", b"a")


def test_update_replaces_the_record_and_bumps_the_version(store: Store) -> None:
    created = store.create_experiment(experiment("exp-1"))

    changed = created.model_copy(update={"status": ExperimentStatus.PROVISIONING, "backend_state": {"vm": "vm-0"}})
    updated = store.update_experiment(changed)

    assert updated.version != created.version
    assert same_record(updated, changed)
    assert store.get_experiment("exp-1") == updated
    again = store.update_experiment(updated.model_copy(update={"trials_done": 1}))
    assert len({created.version, updated.version, again.version}) == 3


def test_second_writer_from_the_same_read_conflicts(store: Store) -> None:
    store.create_experiment(experiment("exp-1"))
    first_read = store.get_experiment("exp-1")
    second_read = store.get_experiment("exp-1")

    store.update_experiment(first_read.model_copy(update={"status": ExperimentStatus.RUNNING}))
    with pytest.raises(ConcurrencyConflict):
        store.update_experiment(second_read.model_copy(update={"status": ExperimentStatus.CANCELLING}))
    with pytest.raises(ConcurrencyConflict):
        store.update_experiment(second_read.model_copy(update={"version": ""}))

    assert store.get_experiment("exp-1").status is ExperimentStatus.RUNNING


def test_list_is_newest_first_filtered_and_paged_without_gaps(store: Store) -> None:
    statuses = [ExperimentStatus.RUNNING, ExperimentStatus.COMPLETED, ExperimentStatus.FAILED]
    for i in range(11):
        # exp-05/exp-06 share a creation time: ties go by id, ascending.
        created_at = T0 + timedelta(minutes=min(i, 5) if i <= 6 else i - 1)
        record = experiment(f"exp-{i:02d}", created_at=created_at, status=statuses[i % 3])
        store.create_experiment(record)
    expected = ["exp-10", "exp-09", "exp-08", "exp-07", "exp-05", "exp-06", "exp-04"]
    expected += ["exp-03", "exp-02", "exp-01", "exp-00"]

    everything, token = store.list_experiments(limit=50)
    assert [r.id for r in everything] == expected
    assert token is None

    pages, token = [], None
    while True:
        page, token = store.list_experiments(limit=3, page_token=token)
        pages.append([r.id for r in page])
        if token is None:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    assert [i for p in pages for i in p] == expected

    running, token = store.list_experiments(status=ExperimentStatus.RUNNING, limit=2)
    rest, end = store.list_experiments(status=ExperimentStatus.RUNNING, limit=2, page_token=token)
    assert end is None
    assert [r.id for r in running + rest] == [i for i in expected if int(i[-2:]) % 3 == 0]
    assert all(isinstance(r, ExperimentRecord) and r.status is ExperimentStatus.RUNNING for r in running + rest)
    assert store.list_experiments(status=ExperimentStatus.CANCELLED) == ([], None)
    with pytest.raises(ValueError):
        store.list_experiments(page_token="not a token")


FORGED_TOKENS = [
    b"[" * 3000,  # issue 20: RecursionError
    b'{"created_us": [1], "id": {}}',  # issue 20: an SQLite binding error
    b'{"created_us": 99999999999999999999999, "id": "x"}',
    b'{"after": 5}',
    b'{"after": "u:after the time rows"}',
    b'{"after": "t:0000000000000000001:x", "created_us": 1}',
    b"null",
]


@pytest.mark.parametrize("raw", FORGED_TOKENS, ids=range(len(FORGED_TOKENS)))
def test_a_forged_page_token_is_refused_as_the_callers_error(store: Store, raw: bytes) -> None:
    store.create_experiment(experiment("exp-1"))
    with pytest.raises(InvalidPageToken):
        store.list_experiments(page_token=base64.urlsafe_b64encode(raw).decode())


def test_update_that_moves_created_at_moves_the_record_in_the_listing(store: Store) -> None:
    store.create_experiment(experiment("exp-a", created_at=T0))
    b = store.create_experiment(experiment("exp-b", created_at=T0 + timedelta(minutes=1)))

    moved = store.update_experiment(b.model_copy(update={"created_at": T0 - timedelta(minutes=1)}))

    assert [r.id for r in store.list_experiments()[0]] == ["exp-a", "exp-b"]
    assert store.get_experiment("exp-b") == moved
    with pytest.raises(ConcurrencyConflict):
        store.update_experiment(b)
    assert store.update_experiment(moved.model_copy(update={"trials_done": 2})).trials_done == 2


def test_a_keyed_create_binds_its_key_to_one_experiment(store: Store) -> None:
    first, created = store.create_keyed_experiment(experiment("exp-1", idempotency_key="client-key/1?#"))
    assert created and same_record(first, experiment("exp-1", idempotency_key="client-key/1?#"))
    again, created = store.create_keyed_experiment(experiment("exp-2", idempotency_key="client-key/1?#"))
    assert not created and again.id == "exp-1" and again.version == first.version
    with pytest.raises(NotFound):  # the replay stored nothing
        store.get_experiment("exp-2")
    with pytest.raises(AlreadyExists):  # a taken id with a new key: neither is stored
        store.create_keyed_experiment(experiment("exp-1", idempotency_key="client-key/2"))
    bound, created = store.create_keyed_experiment(experiment("exp-3", idempotency_key="client-key/2"))
    assert created and bound.id == "exp-3"
    with pytest.raises(ValueError):
        store.create_keyed_experiment(experiment("exp-4"))  # no key


def _another_instance(store: Store) -> Store:
    """A second adapter on the same storage, as another process or Function App instance has."""
    if isinstance(store, LocalStore):
        return LocalStore(store.root)
    assert isinstance(store, AzureStore)
    return AzureStore(
        store.table_service,
        store.blob_service,
        table_prefix=store.table_names[0].removesuffix("experiments"),
        container=store.container_name,
        secrets_container=store.secrets_container_name,
    )


def test_a_key_claimed_by_another_instance_replays_its_experiment(store: Store) -> None:
    first, _ = store.create_keyed_experiment(experiment("exp-1", idempotency_key="k"))
    again, created = _another_instance(store).create_keyed_experiment(experiment("exp-2", idempotency_key="k"))
    assert not created and again.id == "exp-1" and again.version == first.version
    with pytest.raises(NotFound):
        store.get_experiment("exp-2")


def test_a_local_claim_left_without_its_experiment_gets_it(tmp_path: Path) -> None:
    """An earlier version claimed, then inserted: a writer that stopped between the two left a bare claim,
    and the next request with the key creates the experiment under the claimed id."""
    store = LocalStore(tmp_path / "store")
    store._db.connection().execute("INSERT INTO idempotency (key, experiment_id) VALUES ('k', 'exp-claimed')")
    record, created = store.create_keyed_experiment(experiment("exp-new", idempotency_key="k"))
    assert created and record.id == "exp-claimed"
    assert store.get_experiment("exp-claimed").idempotency_key == "k"
    assert store.create_keyed_experiment(experiment("exp-newer", idempotency_key="k"))[0].id == "exp-claimed"


def _race(store: Store, key: str, ids: list[str]) -> tuple[list[tuple[str, bool]], list[BaseException]]:
    """One thread per id, all released at once, each creating its experiment under ``key``."""
    barrier = threading.Barrier(len(ids))
    answers: list[tuple[str, bool]] = []
    failures: list[BaseException] = []

    def submit(experiment_id: str) -> None:
        barrier.wait()
        try:
            record, created = store.create_keyed_experiment(experiment(experiment_id, idempotency_key=key))
            answers.append((record.id, created))
        except BaseException as exc:  # a request lost is the guarantee broken
            failures.append(exc)

    threads = [threading.Thread(target=submit, args=(experiment_id,)) for experiment_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers, failures


def test_one_key_sent_at_once_from_many_threads_stores_one_experiment(store: Store) -> None:
    writers, rounds = 12, 3
    for round_number in range(rounds):
        ids = [f"exp-{round_number}-{writer}" for writer in range(writers)]
        answers, failures = _race(store, f"raced-{round_number}", ids)
        assert failures == []
        assert len({experiment_id for experiment_id, _ in answers}) == 1, answers
        assert sorted(created for _, created in answers) == [False] * (writers - 1) + [True]
    stored, _ = store.list_experiments(limit=100)
    assert len(stored) == rounds


def test_trials_are_inserted_replaced_and_listed_by_number(store: Store) -> None:
    for number in (2, 0, 11, 1):
        store.put_trial(trial("exp-1", number, state=TrialState.RUNNING))
    store.put_trial(trial("exp-2", 0))
    finished = trial(
        "exp-1",
        1,
        state=TrialState.PRUNED,
        intermediate={1: 0.5, 2: 0.61},
        metrics={"accuracy": 0.61, "folds": [0.6, 0.62]},
        value=0.61,
        ended_at=T0,
        engine="sklearn",
        model_uri="file:///tmp/model.json",
    )
    store.put_trial(finished)

    trials = store.list_trials("exp-1")

    assert [t.number for t in trials] == [0, 1, 2, 11]
    assert trials[1] == finished
    assert trials[1].intermediate == {1: 0.5, 2: 0.61}
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.PRUNED] + [TrialState.RUNNING] * 2
    assert [t.experiment_id for t in store.list_trials("exp-2")] == ["exp-2"]


def test_artifacts_put_get_and_list_by_prefix(store: Store) -> None:
    uri = store.put_artifact("exp-1", "model/model.json", b'{"trees": 3}')
    store.put_artifact("exp-1", "model/params.json", b"{}")
    store.put_artifact("exp-1", "driver/outcome.json", b"done")
    store.put_artifact("exp-10", "model/other.json", b"not exp-1's")
    store.put_artifact("exp-1", "driver/outcome.json", b"replaced")

    assert urlparse(uri).scheme in {"file", "http", "https"}
    assert uri.endswith("exp-1/model/model.json")
    assert store.get_artifact("exp-1", "model/model.json") == b'{"trees": 3}'
    assert store.get_artifact("exp-1", "driver/outcome.json") == b"replaced"
    assert store.list_artifacts("exp-1") == ["driver/outcome.json", "model/model.json", "model/params.json"]
    assert store.list_artifacts("exp-1", "model/") == ["model/model.json", "model/params.json"]
    assert store.list_artifacts("exp-1", "nothing/") == []


@pytest.mark.parametrize("bad_name", ["", "../escape", "a/../../b", "/abs", "a//b", "a\\b", "./a", "a/"])
def test_artifact_names_that_could_escape_are_refused(store: Store, bad_name: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact name"):
        store.put_artifact("exp-1", bad_name, b"x")
    with pytest.raises(ValueError, match="invalid artifact name"):
        store.get_artifact("exp-1", bad_name)


@pytest.mark.parametrize("size", [100_000, 900_000], ids=["over-64KiB", "over-entity-limit"])
def test_large_records_round_trip(store: Store, size: int) -> None:
    reason = "é" * 10 + "x" * 3980  # each entry near the clip (shared.bounded.MAX_TEXT); é is 6 ASCII characters
    history = [Transition(at=T0, status=ExperimentStatus.RUNNING, reason=f"{reason}{i}") for i in range(size // 4000)]
    created = store.create_experiment(experiment("exp-big", history=history))
    assert store.get_experiment("exp-big").history == history

    updated = store.update_experiment(created.model_copy(update={"history": history[:1]}))
    got = store.get_experiment("exp-big")
    assert got == updated and got.history == history[:1]
    again = store.update_experiment(got.model_copy(update={"history": history}))
    assert store.list_experiments()[0] == [again]

    steps = min(size // 20, MAX_STEPS)  # a trial record is bounded (shared.records): at most MAX_STEPS values
    big_trial = trial("exp-big", 0, intermediate={step: step / size for step in range(steps)})
    store.put_trial(big_trial)
    assert store.list_trials("exp-big") == [big_trial]


def test_concurrent_updates_have_exactly_one_winner_per_round(store: Store) -> None:
    store.create_experiment(experiment("exp-1"))
    writers, rounds = 4, 5

    for round_number in range(rounds):
        read = store.get_experiment("exp-1")
        barrier = threading.Barrier(writers)
        outcomes: list[str] = []

        def write(
            writer: int,
            read: ExperimentRecord = read,
            barrier: threading.Barrier = barrier,
            outcomes: list[str] = outcomes,
        ) -> None:
            barrier.wait()
            try:
                store.update_experiment(
                    read.model_copy(update={"trials_done": read.trials_done + 1, "error": f"writer {writer}"})
                )
                outcomes.append("won")
            except ConcurrencyConflict:
                outcomes.append("conflict")

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert sorted(outcomes) == ["conflict"] * (writers - 1) + ["won"], round_number
    assert store.get_experiment("exp-1").trials_done == rounds


def _increment_with_retries(root: str, times: int, start: SyncBarrier) -> None:
    store = LocalStore(Path(root))
    start.wait(timeout=60)
    for _ in range(times):
        while True:
            record = store.get_experiment("exp-1")
            try:
                store.update_experiment(record.model_copy(update={"trials_done": record.trials_done + 1}))
                break
            except ConcurrencyConflict:
                continue


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_local_store_is_safe_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LocalStore(root).create_experiment(experiment("exp-1"))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    processes = [context.Process(target=_increment_with_retries, args=(str(root), 15, start)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0]

    assert LocalStore(root).get_experiment("exp-1").trials_done == 45


def test_secrets_round_trip_apart_from_the_artifacts(store: Store) -> None:
    store.put_secret("exp-1", "cluster/security.json", b'{"key": "private"}')
    store.put_secret("exp-1", "cluster/security.json", b'{"key": "rotated"}')  # replace
    assert store.get_secret("exp-1", "cluster/security.json") == b'{"key": "rotated"}'
    assert store.list_artifacts("exp-1") == []  # never listed (so never served) as an artifact
    with pytest.raises(NotFound):
        store.get_artifact("exp-1", "cluster/security.json")
    with pytest.raises(NotFound):
        store.get_secret("exp-2", "cluster/security.json")
    with pytest.raises(ValueError):
        store.put_secret("exp-1", "../escape", b"x")


def write_raw_record(store: Store, experiment_id: str, changes: dict[str, object]) -> None:
    """Overwrite a stored record's body with ``changes`` applied, past every validation: stands for a record
    written before a bound existed (or edited in the store by hand)."""
    if isinstance(store, LocalStore):
        conn = store._db.connection()
        (body,) = conn.execute("SELECT body FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        raw = json.dumps({**json.loads(body), **changes})
        conn.execute("UPDATE experiments SET body = ? WHERE id = ?", (raw, experiment_id))
        return
    assert isinstance(store, AzureStore)
    entity = store._record_row(experiment_id)
    body = json.loads("".join(entity[f"Body{i}"] for i in range(entity["BodyChunks"])))
    raw = json.dumps({**body, **changes}, ensure_ascii=True)
    entity.update({"BodyChunks": 1, "Body0": raw})
    store._experiments.update_entity(entity)


def test_an_unreadable_record_harms_only_itself(store: Store) -> None:
    """Issue 20: a record that does not validate (an ``error`` that is a dict) is listed as unreadable in its
    place; reading it alone raises ``CorruptRecord`` (never a ``ValueError`` a caller would blame on its input)."""
    for number, experiment_id in enumerate(["exp-a", "exp-bad", "exp-c"]):
        store.create_experiment(experiment(experiment_id, created_at=T0 + timedelta(seconds=number)))
    write_raw_record(store, "exp-bad", {"error": {"x": True}})
    listed, token = store.list_experiments()
    assert token is None and [type(item).__name__ for item in listed] == [
        "ExperimentRecord",
        "UnreadableRecord",
        "ExperimentRecord",
    ]
    unreadable = listed[1]
    assert isinstance(unreadable, UnreadableRecord) and unreadable.id == "exp-bad"
    assert "error" in unreadable.reason and "{" not in unreadable.reason
    first, token = store.list_experiments(limit=1)
    assert [r.id for r in first] == ["exp-c"] and token is not None
    assert [r.id for r in store.list_experiments(limit=1, page_token=token)[0]] == ["exp-bad"]
    with pytest.raises(CorruptRecord, match="exp-bad"):
        store.get_experiment("exp-bad")
    assert store.get_experiment("exp-a").id == "exp-a"
