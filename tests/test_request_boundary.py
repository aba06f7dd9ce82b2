"""What callers send, as an attacker sends it (issue 20): each test names the finding it reproduces.

Every refusal is a 4xx (HTTP) or a FAILED record and one dead-lettered message (queue) naming the field;
nothing is stored for a refused request; no hostile value becomes a 500.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.config import MAX_RUN_SECONDS, QUEUE_REQUESTS
from shared.errors import InvalidPageToken
from shared.handlers import InvalidRequest, handle_request_message, submit_experiment, take_request_message
from shared.queues import poison_queue_name
from shared.records import ExperimentStatus
from shared.spec import SpecError, load_spec
from shared.spec.bounds import MAX_CHOICE_VALUES, MAX_GRID_POINTS, MAX_INTEGER
from shared.spec.errors import MAX_ERRORS
from tests.control_plane import tiny_spec

HUGE = 10**400


@pytest.fixture
def client(ctx):
    return TestClient(create_api(context=ctx), base_url="http://localhost", raise_server_exceptions=False)


def stored(ctx) -> int:
    return len(ctx.store.list_experiments()[0])


def refused(response, status: int, loc: str, fragment: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert any(e["loc"] == loc and fragment in e["msg"] for e in body["errors"]), body
    return body


def space(**entries: Any) -> dict[str, Any]:
    return tiny_spec(search_space={**tiny_spec()["search_space"], **entries})


def post_json_text(client: TestClient, text: str, **headers: str):
    return client.post("/api/experiments", content=text, headers={"content-type": "application/json", **headers})


# ------------------------------------------------------------------ quadratic validation, error cap
def forty_thousand_values() -> str:
    """The issue's spec: 40,000 choice values (~80 KB), 116 s of CPU before its 422 on the old code."""
    document = space(n_estimators={"type": "choice", "values": [5] * 40_000})
    return json.dumps(document, separators=(",", ":"))


def test_the_40000_value_choice_is_refused_by_the_cap(client, ctx):
    body = forty_thousand_values()
    assert 80_000 < len(body) < 90_000
    answer = refused(
        post_json_text(client, body), 422, "search_space.n_estimators.values", f"at most {MAX_CHOICE_VALUES}"
    )
    assert len(answer["errors"]) == 1
    assert stored(ctx) == 0


def test_errors_are_capped_and_the_rest_counted(client):
    document = tiny_spec(**{f"unknown_{i}": i for i in range(5000)})
    answer = post_json_text(client, json.dumps(document))
    body = refused(answer, 422, "unknown_0", "unknown field")
    assert len(body["errors"]) == MAX_ERRORS
    assert f"{5000 - MAX_ERRORS} more" in body["detail"]
    with pytest.raises(SpecError) as raised:
        load_spec(document)
    assert len(raised.value.errors) == MAX_ERRORS and raised.value.more == 5000 - MAX_ERRORS


def test_duplicate_choice_values_are_found_in_linear_time() -> None:
    values = [*range(1, MAX_CHOICE_VALUES), 1]  # the last repeats the first
    with pytest.raises(SpecError) as raised:
        load_spec(space(n_estimators={"type": "choice", "values": values}))
    assert [e["loc"] for e in raised.value.errors] == [f"search_space.n_estimators.values[{MAX_CHOICE_VALUES - 1}]"]


def test_a_long_key_is_not_echoed_whole() -> None:
    with pytest.raises(SpecError) as raised:
        load_spec(tiny_spec(**{"x" * 100_000: 1}))
    assert len(str(raised.value)) < 2_000


# ------------------------------------------------------------------ 500s on hostile numbers
HOSTILE_NUMBERS = [
    ("search_space.n_estimators.values[0]", space(n_estimators={"type": "choice", "values": [HUGE, 5]})),
    ("search_space.n_estimators.upper", space(n_estimators={"type": "randint", "upper": HUGE})),
    ("trial.params.n_bins", tiny_spec(trial={**tiny_spec()["trial"], "params": {"n_bins": HUGE}})),
    ("dataset.max_rows", tiny_spec(dataset={**tiny_spec()["dataset"], "max_rows": HUGE})),
    ("sampling_algorithm.seed", tiny_spec(sampling_algorithm={"type": "random", "seed": -HUGE})),
    ("limits.max_total_trials", tiny_spec(limits={"max_total_trials": HUGE})),
    ("compute.n_workers", tiny_spec(compute={"backend": "local", "n_workers": HUGE})),
]


@pytest.mark.parametrize(("loc", "document"), HOSTILE_NUMBERS, ids=[loc for loc, _ in HOSTILE_NUMBERS])
def test_a_huge_integer_anywhere_is_a_422_naming_its_path(client, ctx, loc, document):
    refused(post_json_text(client, json.dumps(document)), 422, loc, "2**53")
    assert stored(ctx) == 0


def test_integers_up_to_the_cap_are_numbers_like_any_other() -> None:
    spec = load_spec(tiny_spec(trial={**tiny_spec()["trial"], "params": {"min_samples_leaf": 1_000_000}}))
    assert spec.trial.params["min_samples_leaf"] == 1_000_000
    with pytest.raises(SpecError, match="out of range"):  # at the cap: the range speaks, nothing overflows
        load_spec(space(n_estimators={"type": "choice", "values": [MAX_INTEGER]}))


@pytest.mark.parametrize(
    ("entry", "loc"),
    [
        ({"type": "quniform", "min_value": 0.3, "max_value": 1.0, "q": 5e-324}, "search_space.max_features.q"),
        ({"type": "qloguniform", "min_value": -3, "max_value": 0, "q": 1e-300}, "search_space.max_features.q"),
        ({"type": "qnormal", "mu": 0.5, "sigma": 0.1, "q": 5e-324}, "search_space.max_features.q"),
        ({"type": "qlognormal", "mu": -1, "sigma": 0.1, "q": 1e-12}, "search_space.max_features.q"),
    ],
)
def test_a_q_finer_than_a_million_steps_is_refused(client, entry, loc):
    refused(post_json_text(client, json.dumps(space(max_features=entry))), 422, loc, "steps")


def test_a_sensible_q_is_accepted() -> None:
    spec = load_spec(space(max_features={"type": "quniform", "min_value": 0.3, "max_value": 1.0, "q": 0.05}))
    assert spec.search_space["max_features"].q == 0.05


def test_a_grid_past_its_cap_is_refused() -> None:
    leaves = {"type": "choice", "values": list(range(1, 1001))}
    trees = {"type": "choice", "values": list(range(1, 1001))}
    document = tiny_spec(
        search_space={"min_samples_leaf": leaves, "n_estimators": trees}, sampling_algorithm={"type": "grid"}
    )
    with pytest.raises(SpecError, match=f"at most {MAX_GRID_POINTS}") as raised:
        load_spec(document)
    assert raised.value.errors[0]["loc"] == "search_space"


@pytest.mark.parametrize("field", ["timeout", "trial_timeout"])
@pytest.mark.parametrize("seconds", [1e14, MAX_RUN_SECONDS + 1])
def test_a_timeout_past_the_credential_lifetime_is_refused(client, ctx, field, seconds):
    document = tiny_spec(limits={**tiny_spec()["limits"], field: seconds})
    refused(post_json_text(client, json.dumps(document)), 422, f"limits.{field}", str(MAX_RUN_SECONDS))
    assert stored(ctx) == 0


def test_the_longest_timeout_fits_the_credential() -> None:
    from shared.backends.vmcluster.settings import sas_lifetime_s
    from shared.store.compute import MAX_TTL

    spec = load_spec(tiny_spec(limits={**tiny_spec()["limits"], "timeout": MAX_RUN_SECONDS}))
    assert sas_lifetime_s(spec) <= MAX_TTL.total_seconds()


# ------------------------------------------------------------------ page tokens
def token_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


PAGE_TOKENS = {
    "deep nesting": token_of(b"[" * 3000),
    "wrong types": token_of(json.dumps({"created_us": [1], "id": {"a": 1}}).encode()),
    "a string for the time": token_of(json.dumps({"created_us": "1", "id": "x"}).encode()),
    "an SQLite overflow": token_of(json.dumps({"created_us": 2**70, "id": "x"}).encode()),
    "extra keys": token_of(json.dumps({"created_us": 1, "id": "x", "after": "t:"}).encode()),
    "not base64": "%%%",
    "not ASCII": "é" * 10,
    "too long": "A" * 1000,
}


@pytest.mark.parametrize("token", PAGE_TOKENS.values(), ids=PAGE_TOKENS.keys())
def test_a_forged_page_token_is_a_422_naming_it(client, ctx, token):
    refused(client.get("/api/experiments", params={"page_token": token}), 422, "query.page_token")
    with pytest.raises(InvalidPageToken):
        ctx.store.list_experiments(page_token=token)


def test_a_real_page_token_still_pages(client, ctx):
    for _ in range(3):
        client.post("/api/experiments", json=tiny_spec())
    first = client.get("/api/experiments", params={"limit": 2}).json()
    rest = client.get("/api/experiments", params={"limit": 2, "page_token": first["next_page_token"]}).json()
    assert len(first["items"]) == 2 and len(rest["items"]) == 1 and rest["next_page_token"] is None


# ------------------------------------------------------------------ the queue path
def test_a_queue_envelope_with_a_huge_value_fails_its_id(ctx):
    document = space(n_estimators={"type": "choice", "values": [HUGE]})
    body = json.dumps({"id": "exp-huge", "spec": document})
    with pytest.raises(InvalidRequest) as raised:
        handle_request_message(ctx, body, message_id="m-1")
    assert raised.value.errors[0]["loc"] == "search_space.n_estimators.values[0]"
    record = ctx.store.get_experiment("exp-huge")
    assert record.status is ExperimentStatus.FAILED and "2**53" in (record.error or "")


def test_a_bad_message_harms_only_itself(ctx):
    bad = json.dumps({"id": "exp-bad", "spec": space(n_estimators={"type": "choice", "values": [HUGE]})})
    assert take_request_message(ctx, bad, message_id="m-1") is None  # not raised: the host will not retry it
    take_request_message(ctx, json.dumps({"id": "exp-good", "spec": tiny_spec()}), message_id="m-2")
    assert ctx.store.get_experiment("exp-bad").status is ExperimentStatus.FAILED
    assert ctx.store.get_experiment("exp-good").status is ExperimentStatus.SUBMITTED
    [poisoned] = ctx.queues.queue(poison_queue_name(QUEUE_REQUESTS)).receive(5, 30)
    assert poisoned.body == bad


def test_a_transient_failure_is_still_retried(ctx, monkeypatch):
    def unreachable(record):
        raise ConnectionError("store down")

    monkeypatch.setattr(ctx.store, "create_experiment", unreachable)
    monkeypatch.setattr(ctx.store, "create_keyed_experiment", unreachable)  # the message id is its key
    with pytest.raises(ConnectionError):  # raised: the host redelivers what may succeed
        take_request_message(ctx, json.dumps(tiny_spec()), message_id="m-1")
    assert ctx.queues.queue(poison_queue_name(QUEUE_REQUESTS)).count() == 0


# ------------------------------------------------------------------ idempotency keys
def test_the_same_key_with_another_spec_is_a_422_naming_the_header(client, ctx):
    first = client.post("/api/experiments", json=tiny_spec(), headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    other = client.post("/api/experiments", json=tiny_spec(name="other"), headers={"Idempotency-Key": "k-1"})
    refused(other, 422, "header.idempotency-key", "another spec")
    assert stored(ctx) == 1


def test_the_same_key_with_the_same_spec_however_written_replays(client, ctx):
    first = client.post("/api/experiments", json=tiny_spec(), headers={"Idempotency-Key": "k-2"})
    yaml_text = "\n".join(f"{key}: {json.dumps(value)}" for key, value in reversed(tiny_spec().items()))
    again = client.post(
        "/api/experiments", content=yaml_text, headers={"Idempotency-Key": "k-2", "content-type": "application/yaml"}
    )
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


def test_a_reserved_key_prefix_is_refused_over_http(client, ctx):
    refused(
        client.post("/api/experiments", json=tiny_spec(), headers={"Idempotency-Key": "queue:m-1"}),
        422,
        "header.idempotency-key",
        "reserved",
    )
    assert stored(ctx) == 0


def test_a_queue_message_cannot_take_another_messages_key(ctx):
    taken = handle_request_message(ctx, json.dumps(tiny_spec()), message_id="m-7")
    forged = json.dumps({"spec": tiny_spec(name="forged"), "idempotency_key": "queue:m-7"})
    with pytest.raises(InvalidRequest) as raised:
        handle_request_message(ctx, forged, message_id="m-8")
    assert raised.value.errors[0]["loc"] == "idempotency_key"
    assert [r.id for r in ctx.store.list_experiments()[0]] == [taken.id]


# ------------------------------------------------------------------ network rules, hosted security, SAS
def vmcluster(**changes: Any) -> dict[str, Any]:
    compute = {"backend": "vmcluster", "location": "westeurope", "resource_group": "rg", **changes}
    return tiny_spec(compute=compute)


@pytest.mark.parametrize(
    "prefix",
    [
        "0.0.0.0/1",
        "0.0.0.0/0",
        "10.0.0.0/8",
        "100.64.0.0/15",
        "::/0",
        "2001:db8::/32",
        "::ffff:0:0/96",
        "AzureCloud",
        "AzureCloud.westeurope",
        "VirtualNetwork",
        "Internet",
        "*",
    ],
)
def test_a_broad_admin_source_or_a_service_tag_is_refused(client, prefix):
    document = vmcluster(network={"allowed_source_prefixes": ["203.0.113.0/24", prefix]})
    refused(post_json_text(client, json.dumps(document)), 422, "compute.network.allowed_source_prefixes[1]")


@pytest.mark.parametrize("prefix", ["203.0.113.0/24", "10.1.0.0/16", "198.51.100.7", "2001:db8:1::/48"])
def test_a_named_admin_network_is_accepted(prefix):
    spec = load_spec(vmcluster(network={"allowed_source_prefixes": [prefix]}))
    assert spec.compute.network.allowed_source_prefixes == [prefix]  # type: ignore[union-attr]


def test_hosted_mode_requires_dask_tls(client, ctx):
    ctx.settings = replace(ctx.settings, hosted=True)
    refused(post_json_text(client, json.dumps(vmcluster(security=False))), 422, "compute.security", "security: true")
    assert stored(ctx) == 0


SAS_URIS = [
    "https://acct.blob.core.windows.net/c/flights.csv?sv=2024-01-01&se=2030-01-01&sp=r&sig=c2VjcmV0",
    "https://acct.blob.core.windows.net/c/flights.csv?SIG=c2VjcmV0",
    "abfss://c@acct.dfs.core.windows.net/flights.parquet?sig=c2VjcmV0",
    "https://user:secret@data.example.org/flights.csv",
]


@pytest.mark.parametrize("uri", SAS_URIS)
def test_a_credential_in_the_dataset_uri_is_never_stored(client, ctx, uri):
    document = tiny_spec(dataset={**tiny_spec()["dataset"], "uri": uri})
    answer = refused(post_json_text(client, json.dumps(document)), 422, "dataset.uri", "credential")
    assert "c2VjcmV0" not in json.dumps(answer) and "secret" not in json.dumps(answer)
    assert stored(ctx) == 0
    with pytest.raises(InvalidRequest):
        handle_request_message(ctx, json.dumps({"id": "exp-sas", "spec": document}), message_id="m-1")
    assert "c2VjcmV0" not in ctx.store.get_experiment("exp-sas").model_dump_json()


# ------------------------------------------------------------------ CloudEvents stay bounded
def test_events_clip_what_the_caller_and_the_compute_wrote(ctx):
    from shared.events import catalog
    from shared.records import BestTrial, Transition, TrialRecord, TrialState
    from shared.records import ExperimentStatus as S

    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    long_text = "x" * 100_000
    hostile = {f"p{i}": long_text for i in range(10_000)} | {"nan": float("nan"), "huge": HUGE}
    # Records refuse all of this since issue 20 (shared/bounded.py); model_construct stands for one stored
    # before the bounds, so the catalogue's own clipping is still what is tested.
    trial = TrialRecord.model_construct(
        experiment_id=record.id, number=0, params=hostile, state=TrialState.COMPLETED, value=0.5, engine="e" * 10**5
    )
    record = record.model_copy(
        update={
            "best": BestTrial.model_construct(number=0, value=0.5, params=hostile, metrics=hostile),
            "history": [
                *record.history,
                Transition.model_construct(at=datetime(2026, 12, 4, tzinfo=UTC), status=S.FAILED, reason="r" * 10**5),
            ],
        }
    )
    events = [
        catalog.trial_finished(record, trial, "/test"),
        catalog.best_trial_improved(record, trial, None, "/test"),
        catalog.status_changed(record, "/test"),
    ]
    for event in events:
        text = json.dumps(event.data, allow_nan=False)  # valid JSON: no NaN, no 10**400
        assert len(text) < 32_000, (event.type, len(text))
    finished = events[0].data
    assert len(finished["params"]) == catalog.MAX_PARAMS and finished["params_clipped"] is True
    assert finished["params"]["p0"].endswith("…") and len(finished["params"]["p0"]) == catalog.MAX_TEXT_CHARS


@pytest.mark.parametrize("threads", ["x", 1e300, -5, 0, True, 10**6])
def test_worker_threads_are_a_small_integer(client, threads):
    """Found by the generated specs: ``nthreads: "x"`` was a 422 without a field, ``1e300`` accepted."""
    document = vmcluster(worker_options={"nthreads": threads})
    answer = post_json_text(client, json.dumps(document))
    assert answer.status_code == 422 and any("nthreads" in e["loc"] + e["msg"] for e in answer.json()["errors"])


def test_a_huge_float_cannot_become_a_huge_integer(client):
    document = tiny_spec(dataset={**tiny_spec()["dataset"], "max_rows": 1e300})
    refused(post_json_text(client, json.dumps(document)), 422, "dataset.max_rows", "2**53")


@pytest.mark.parametrize(
    "uri", ["https://[::1", "https://[]/x.csv", "abfss://c@[]/x", "https://a.blob.core.windows.net:99999/x"]
)
def test_a_malformed_url_is_a_422_even_where_hosted_mode_parses_it(client, ctx, uri):
    """Found by the generated specs: hosted mode's URI check raised ValueError (a 500) on an unclosed '['."""
    ctx.settings = replace(ctx.settings, hosted=True)
    document = tiny_spec(dataset={**tiny_spec()["dataset"], "uri": uri}, compute={"backend": "azureml"})
    refused(post_json_text(client, json.dumps(document)), 422, "dataset.uri", "malformed URL")
    assert stored(ctx) == 0


def test_an_unreadable_message_of_any_bytes_is_dead_lettered_within_the_queue_limit(ctx):
    from shared.queues import MAX_MESSAGE_BYTES

    body = b"\xff" * MAX_MESSAGE_BYTES  # each byte becomes U+FFFD (3 bytes) once decoded
    assert take_request_message(ctx, body, message_id="m-1") is None
    [poisoned] = ctx.queues.queue(poison_queue_name(QUEUE_REQUESTS)).receive(1, 30)
    assert 0 < len(poisoned.body.encode()) <= MAX_MESSAGE_BYTES
