"""One conformance suite for every ``EventPublisher`` adapter (Optuna-storages style).

Each adapter declares ``delivers``, and the declaration decides which cases are collected for it: a
delivering adapter is checked against what its topic received (Event Grid: the real SDK client posting
to ``tests.topic_receiver``), one that delivers nothing by design (no topic configured) for accepting
every batch and for the announcer staging nothing for it; both for the protocol and for what the
announcer stages. No case is collected for an adapter it cannot fail for, and none returns early.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest

from shared.events import Announcer, DisabledPublisher, Event, EventPublisher, PublishError
from shared.events.eventgrid import EventGridPublisher
from shared.records import ExperimentRecord, TrialRecord, TrialState, utcnow
from shared.spec import load_spec
from tests.control_plane import tiny_spec
from tests.tls import mint_certificate
from tests.topic_receiver import TopicReceiver


@dataclass
class Harness:
    publisher: EventPublisher
    delivered: Callable[[], list[dict]]
    """What the topic received, in order (empty for an adapter that delivers nothing)."""
    broken: Callable[[int], EventPublisher]
    """The same adapter aimed at a topic that answers with the given status (0: nothing listens)."""
    receiver: TopicReceiver | None = None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def topic_receiver() -> Iterator[TopicReceiver]:
    receiver = TopicReceiver().start()
    yield receiver
    receiver.stop()


def _eventgrid(receiver: TopicReceiver) -> Harness:
    def broken(status: int) -> EventPublisher:
        if status == 0:
            return EventGridPublisher.from_settings(f"http://127.0.0.1:{_closed_port()}/api/events", receiver.key)
        receiver.fail(1, status)
        return EventGridPublisher.from_settings(receiver.endpoint, receiver.key)

    publisher = EventGridPublisher.from_settings(receiver.endpoint, receiver.key)
    return Harness(publisher, lambda: receiver.events, broken, receiver)


def _disabled(receiver: TopicReceiver) -> Harness:
    return Harness(DisabledPublisher(), lambda: [], lambda status: DisabledPublisher())


ADAPTERS: dict[str, tuple[type[EventPublisher], Callable[[TopicReceiver], Harness]]] = {
    "eventgrid": (EventGridPublisher, _eventgrid),
    "disabled": (DisabledPublisher, _disabled),
}
"""Each adapter's class (its ``delivers`` is a class attribute, read at collection) and harness."""
DELIVERING = sorted(name for name, (adapter, _) in ADAPTERS.items() if adapter.delivers)
SILENT = sorted(name for name, (adapter, _) in ADAPTERS.items() if not adapter.delivers)


@pytest.fixture(params=sorted(ADAPTERS))
def harness(request, topic_receiver) -> Harness:
    return ADAPTERS[request.param][1](topic_receiver)


@pytest.fixture(params=DELIVERING)
def delivering(request, topic_receiver) -> Harness:
    """An adapter that sends to a topic: what the topic received is checked."""
    return ADAPTERS[request.param][1](topic_receiver)


@pytest.fixture(params=SILENT)
def silent(request, topic_receiver) -> Harness:
    """An adapter that delivers nothing by design."""
    return ADAPTERS[request.param][1](topic_receiver)


def events(n: int, prefix: str = "exp-1") -> list[Event]:
    return [
        Event(
            id=f"{prefix}/trials/{i}/1",
            type="RapidsHpo.TrialFinished",
            source="/rapids-hpo-control/test",
            subject=f"/experiments/{prefix}/trials/{i}",
            time=f"2026-12-01T08:00:{i % 60:02d}.123456+00:00",
            data={"number": i, "value": 0.5 + i / 1000, "params": {"max_depth": 4}, "state": "COMPLETED"},
        )
        for i in range(n)
    ]


def test_adapter_satisfies_the_protocol(harness):
    assert isinstance(harness.publisher, EventPublisher)
    assert harness.publisher.max_batch >= 1 and isinstance(harness.publisher.delivers, bool)
    declared = {name for name, (adapter, _) in ADAPTERS.items() if isinstance(harness.publisher, adapter)}
    assert len(declared) == 1 and harness.publisher.delivers == ADAPTERS[declared.pop()][0].delivers


def test_the_announcer_stages_events_exactly_for_an_adapter_that_delivers(harness):
    """``delivers`` is what the state machine reads: events are staged in the outbox (one more write per
    step) only for an adapter that sends them; the announcement markers advance either way, so turning
    a topic on later does not replay old trials."""
    spec = load_spec(tiny_spec())
    record = ExperimentRecord(id="exp-1", name=spec.name, spec=spec.to_document(), backend="local")
    finished = TrialRecord(
        experiment_id=record.id, number=0, params={}, state=TrialState.COMPLETED, value=0.8, ended_at=utcnow()
    )
    staged = Announcer(publisher=harness.publisher).stage_trials(record, [finished])
    assert bool(staged.pending) == harness.publisher.delivers
    assert staged != record.event_log, "the markers did not advance"


def test_a_batch_arrives_in_order_with_every_attribute(delivering):
    batch = events(3)
    delivering.publisher.publish(batch)
    received = delivering.delivered()
    assert [e["id"] for e in received] == [e.id for e in batch]
    for sent, got in zip(batch, received, strict=True):
        assert got["specversion"] == "1.0"
        assert (got["type"], got["source"], got["subject"], got["data"]) == (
            sent.type,
            sent.source,
            sent.subject,
            sent.data,
        )
        assert datetime.fromisoformat(got["time"].replace("Z", "+00:00")) == datetime.fromisoformat(sent.time)


def test_an_empty_batch_sends_nothing(delivering):
    delivering.publisher.publish([])
    assert delivering.delivered() == []
    assert delivering.receiver is not None and delivering.receiver.requests == []


def test_a_full_batch_is_one_request(delivering):
    batch = events(delivering.publisher.max_batch)
    delivering.publisher.publish(batch)
    assert [e["id"] for e in delivering.delivered()] == [e.id for e in batch]
    assert delivering.receiver is not None and len(delivering.receiver.requests) == 1


@pytest.mark.parametrize(
    ("status", "retryable", "permanent"),
    [
        (0, True, False),
        (500, True, False),
        (503, True, False),
        (429, True, False),
        (400, False, True),
        (401, False, False),
    ],
)
def test_a_failing_topic_raises_a_classified_publish_error_at_once(delivering, status, retryable, permanent):
    publisher = delivering.broken(status)
    started = time.monotonic()
    with pytest.raises(PublishError) as caught:
        publisher.publish(events(2))
    assert (caught.value.retryable, caught.value.permanent) == (retryable, permanent)
    assert time.monotonic() - started < 5, "the adapter must not retry by itself"
    assert delivering.delivered() == []


def test_an_adapter_that_delivers_nothing_accepts_every_batch(silent):
    """With no topic there is nothing to fail: any batch up to ``max_batch`` is accepted, none raises
    (a raise here would fail every state-machine step of an unconfigured deployment)."""
    for size in (0, 1, silent.publisher.max_batch):
        assert silent.publisher.publish(events(size)) is None


def test_eventgrid_speaks_the_topic_protocol(topic_receiver, caplog):
    """What the real client sends (checked by the receiver too): path, api-version, key, content type."""
    with caplog.at_level(logging.WARNING):
        EventGridPublisher.from_settings(topic_receiver.endpoint, topic_receiver.key).publish(events(1))
    assert not [r for r in caplog.records if "not a known attribute" in r.getMessage()]  # no noise per send
    (request,) = topic_receiver.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["path"] == "/api/events" and request["query"] == "api-version=2018-01-01"
    assert headers["aeg-sas-key"] == topic_receiver.key
    assert headers["content-type"].startswith("application/cloudevents-batch+json")


def test_eventgrid_with_a_wrong_key_is_not_authorized(topic_receiver):
    publisher = EventGridPublisher.from_settings(topic_receiver.endpoint, "not-the-key")
    with pytest.raises(PublishError) as caught:
        publisher.publish(events(1))
    assert caught.value.status == 401 and not caught.value.retryable


# ------------------------------------------------------------------------ the managed-identity path
@dataclass
class RecordingCredential:
    """A ``TokenCredential`` at the one boundary unreachable here (Entra ID): hands out a fixed token and
    records the scopes asked for; everything after it (the SDK's bearer policy, TLS, the request) is real."""

    token: str = "managed-identity-token"
    scopes: list[tuple[str, ...]] | None = None

    def get_token(self, *scopes: str, **kwargs: object):
        from azure.core.credentials import AccessToken

        self.scopes = [*(self.scopes or []), scopes]
        return AccessToken(self.token, int(time.time()) + 3600)


def test_eventgrid_with_the_managed_identity_sends_a_bearer_token_for_event_grid(tmp_path, monkeypatch):
    cert, key = (str(path) for path in mint_certificate(tmp_path))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)  # trust the stand-in topic's certificate
    credential = RecordingCredential()
    receiver = TopicReceiver(token=credential.token, tls=(cert, key)).start()
    try:
        EventGridPublisher(receiver.endpoint, credential).publish(events(2))
    finally:
        receiver.stop()
    assert [e["id"] for e in receiver.events] == [e.id for e in events(2)]
    assert credential.scopes == [("https://eventgrid.azure.net/.default",)]
    headers = {k.lower() for k in receiver.requests[0]["headers"]}
    assert "aeg-sas-key" not in headers


def test_the_factory_picks_the_adapter_and_credential_from_the_settings(monkeypatch):
    """The topic is read once, at the edge (``Settings.from_env``): the announcer takes what it is given."""
    from azure.core.credentials import AzureKeyCredential
    from azure.identity import DefaultAzureCredential

    from shared.config import EventSettings, Settings
    from shared.events import open_announcer

    monkeypatch.delenv("EVENTGRID_TOPIC_ENDPOINT", raising=False)
    monkeypatch.delenv("RAPIDS_HPO_EVENTS_SOURCE", raising=False)
    announcer = open_announcer(Settings.from_env().events)
    assert not announcer.enabled and announcer.source == "/rapids-hpo-control"
    monkeypatch.setenv("EVENTGRID_TOPIC_ENDPOINT", "https://topic.example.invalid/api/events")
    monkeypatch.setenv("EVENTGRID_TOPIC_KEY", "k")
    monkeypatch.setenv("RAPIDS_HPO_EVENTS_SOURCE", "/rapids-hpo-control/func-x")
    settings = Settings.from_env().events
    assert "'k'" not in repr(settings)  # the key stays out of logs
    monkeypatch.delenv("EVENTGRID_TOPIC_ENDPOINT")  # read at the edge: the announcer no longer looks
    announcer = open_announcer(settings)
    assert announcer.enabled and announcer.source == "/rapids-hpo-control/func-x"
    assert isinstance(announcer.publisher, EventGridPublisher)
    assert isinstance(announcer.publisher.credential, AzureKeyCredential)
    managed = open_announcer(EventSettings(topic_endpoint=settings.topic_endpoint)).publisher
    assert isinstance(managed, EventGridPublisher) and isinstance(managed.credential, DefaultAzureCredential)
