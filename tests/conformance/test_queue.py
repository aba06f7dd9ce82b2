"""One conformance suite for every ``QueueService``/``EventQueue`` adapter (local SQLite, Azure on Azurite).

Each test gets a fresh service and a fresh queue name. Visibility timeouts are 1-2 s to keep it quick.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Barrier as SyncBarrier
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from shared.errors import NotFound
from shared.ports import EventQueue, Message, QueueService
from shared.queues import MAX_MESSAGE_BYTES, AzureQueueService, LocalQueueService, move_to_poison

QUEUE_IDS = [pytest.param("local", id="local"), pytest.param("azure", id="azure", marks=pytest.mark.azurite)]


@contextmanager
def build_queues(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[QueueService]:
    if kind == "local":
        service = LocalQueueService(tmp_path / "queues.sqlite3")
        yield service
        service.close()
    elif kind == "azure":
        yield AzureQueueService(connection_string=request.getfixturevalue("azurite"))
    else:
        raise ValueError(kind)


@pytest.fixture(params=QUEUE_IDS)
def queues(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueService]:
    with build_queues(request.param, tmp_path, request) as service:
        yield service


@pytest.fixture
def name() -> str:
    """A queue name no other test uses (Azurite is shared by the whole session)."""
    return f"q-{uuid.uuid4().hex[:16]}"


def receive_all(queue: EventQueue, visibility_timeout: int = 30) -> list[Message]:
    received = []
    while batch := queue.receive(max_messages=32, visibility_timeout=visibility_timeout):
        received += batch
    return received


def test_adapter_implements_the_ports(queues: QueueService, name: str) -> None:
    assert isinstance(queues, QueueService)
    queue = queues.queue(name)
    assert isinstance(queue, EventQueue)
    assert queue.name == name


def test_send_receive_delete(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    queue.send("hello")
    assert queue.count() == 1

    [message] = queue.receive(max_messages=5, visibility_timeout=30)

    assert message.body == "hello"
    assert message.dequeue_count == 1
    assert message.id and message.receipt
    assert queue.count() == 1  # received but not deleted: still there, invisible
    assert queue.receive(visibility_timeout=30) == []
    queue.delete(message)
    assert queue.count() == 0
    with pytest.raises(NotFound):
        queue.delete(message)


def test_messages_come_oldest_first(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    for i in range(6):
        queue.send(f"m{i}")

    bodies = [m.body for m in queue.receive(max_messages=3)] + [m.body for m in queue.receive(max_messages=3)]

    assert bodies == [f"m{i}" for i in range(6)]


def test_max_messages_is_respected(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    for i in range(5):
        queue.send(str(i))

    assert len(queue.receive(max_messages=2)) == 2
    assert len(queue.receive(max_messages=32)) == 3
    assert queue.receive(max_messages=32) == []
    with pytest.raises(ValueError):
        queue.receive(max_messages=0)
    with pytest.raises(ValueError):
        queue.receive(max_messages=33)


def _first_visible(queue: EventQueue, *, within: float, visibility_timeout: int = 30) -> tuple[Message, float]:
    """Poll until a message is visible (at most ``within`` seconds); return it and when it came
    (``time.monotonic()``). Polling, not a fixed sleep: a loaded machine stays correct, only slower."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        messages = queue.receive(visibility_timeout=visibility_timeout)
        if messages:
            return messages[0], time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"no message became visible within {within} s")


def test_visibility_timeout_hides_then_redelivers(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    queue.send("retry me")
    hide = 2
    [first] = queue.receive(visibility_timeout=hide)
    received = time.monotonic()
    hidden = queue.receive(visibility_timeout=hide)
    if time.monotonic() - received < hide:  # checked in time: the message must still be hidden
        assert hidden == []

    second, seen = _first_visible(queue, within=hide + 15)

    assert seen - received >= hide - 0.5  # not before its visibility timeout (server clock granularity)
    assert second.id == first.id and second.body == "retry me"
    assert second.dequeue_count == 2
    assert second.receipt != first.receipt
    with pytest.raises(NotFound):
        queue.delete(first)  # stale receipt: someone else holds the message now
    queue.delete(second)
    assert queue.count() == 0


def test_delayed_send_is_invisible_until_due(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    delay = 2
    queue.send("later", delay_seconds=delay)
    sent = time.monotonic()
    queue.send("now")

    now = queue.receive()
    if time.monotonic() - sent < delay:
        assert [m.body for m in now] == ["now"]
    assert queue.count() == 2
    later, seen = _first_visible(queue, within=delay + 15)
    assert later.body == "later" and seen - sent >= delay - 0.5


def test_two_consumers_never_share_a_message(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    sent = {f"message {i}" for i in range(30)}
    for body in sent:
        queue.send(body)
    seen: list[list[Message]] = [[], []]

    def consume(index: int) -> None:
        own = queues.queue(name)
        while batch := own.receive(max_messages=3, visibility_timeout=30):
            seen[index] += batch

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    bodies = [m.body for messages in seen for m in messages]
    assert sorted(bodies) == sorted(sent)  # each delivered once, none lost
    for message in seen[0] + seen[1]:
        queue.delete(message)
    assert queue.count() == 0


def test_move_to_poison(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    queue.send('{"type": "poll"}')
    [message] = queue.receive()

    move_to_poison(queues, queue, message)

    assert queue.count() == 0
    poison = queues.queue(f"{name}-poison")
    assert [m.body for m in receive_all(poison)] == ['{"type": "poll"}']


def test_unicode_and_json_bodies_survive(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    payload = {"experiment_id": "exp-1", "note": 'Grüße, 東京, 🚀, "quotes", <xml/> & \\ \n\t'}
    queue.send(json.dumps(payload, ensure_ascii=False))

    [message] = queue.receive()

    assert json.loads(message.body) == payload


def test_body_size_limit(queues: QueueService, name: str) -> None:
    queue = queues.queue(name)
    biggest = "é" * (MAX_MESSAGE_BYTES // 2)  # two UTF-8 bytes each: exactly the limit
    queue.send(biggest)

    with pytest.raises(ValueError, match="bytes"):
        queue.send(biggest + "x")
    assert [m.body for m in queue.receive()] == [biggest]


def test_invalid_queue_names_are_refused(queues: QueueService) -> None:
    for bad in ("ab", "Upper", "double--hyphen", "-edge", "edge-", "x" * 64, "under_score"):
        with pytest.raises(ValueError, match="invalid queue name"):
            queues.queue(bad)


@pytest.mark.azurite
def test_azure_messages_are_base64_text_for_the_functions_trigger(azurite: str, name: str) -> None:
    AzureQueueService(connection_string=azurite).queue(name).send('{"note": "héllo"}')

    raw = QueueClient.from_connection_string(azurite, name)  # no decode policy: the stored text
    [stored] = raw.peek_messages()

    assert stored.content != '{"note": "héllo"}'
    assert base64.b64decode(stored.content).decode("utf-8") == '{"note": "héllo"}'


def _consume(path: str, name: str, start: SyncBarrier, results: multiprocessing.Queue) -> None:
    queue = LocalQueueService(Path(path)).queue(name)
    received = []
    start.wait(timeout=60)  # all processes are up: they compete for the messages from here
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 0.5:
        batch = queue.receive(max_messages=4, visibility_timeout=60)
        if batch:
            idle_since = time.monotonic()
            time.sleep(0.002)  # a little work per batch, so the others get a turn
        for message in batch:
            received.append(message.body)
            queue.delete(message)
    results.put(received)


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_local_queue_delivers_each_message_once_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "queues.sqlite3"
    queue = LocalQueueService(path).queue("work")
    sent = [f"job {i}" for i in range(150)]
    for body in sent:
        queue.send(body)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_consume, args=(str(path), "work", start, results)) for _ in range(3)]
    for process in processes:
        process.start()
    received = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert sorted(body for bodies in received for body in bodies) == sorted(sent)
    assert sum(1 for bodies in received if bodies) >= 2  # they did compete
    assert queue.count() == 0
