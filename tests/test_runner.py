"""The local host's queue workers (``shared.runner.LocalHost``, what ``rapids-hpo serve`` runs) outlive what
the chaos run (``bench/chaos.py``) does to them: the storage account unreachable for a while, and a message
handled past its visibility timeout that another instance received meanwhile. Before, either ended the
workers' thread for good while the API went on answering, and every experiment stalled."""

from __future__ import annotations

import time

from shared.handlers import submit_experiment
from shared.ports import Message
from shared.queues.local import LocalQueue, LocalQueueService
from shared.records import ExperimentStatus
from shared.runner import LocalHost
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend


class UnreachableFor(LocalQueueService):
    """The real local queues, unreachable for the first ``outage`` receives (as Azurite killed mid-run: the
    SDK raises once its retries are spent). A fault at the boundary: killing the session's Azurite would
    fail every other test; ``bench/chaos.py`` kills a real one."""

    def __init__(self, path, outage: int) -> None:
        super().__init__(path)
        self.outage = outage

    def queue(self, name: str) -> LocalQueue:
        queue = super().queue(name)
        service = self
        receive = queue.receive

        def flaky(max_messages: int = 16, visibility_timeout: int = 30) -> list[Message]:
            if service.outage > 0:
                service.outage -= 1
                raise ConnectionError("[Errno 111] Connection refused")
            return receive(max_messages, visibility_timeout)

        queue.receive = flaky  # type: ignore[method-assign]
        return queue


def test_the_queue_workers_outlive_a_storage_outage(tmp_path):
    ctx = local_context(tmp_path)
    ctx.queues = UnreachableFor(tmp_path / "queues.sqlite3", outage=3)
    ctx.backends["local"] = ScriptedBackend()
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    host = LocalHost(ctx, visibility_timeout=1)
    running = host.run(
        until=lambda: ctx.store.get_experiment(record.id).status is ExperimentStatus.RUNNING,
        idle_sleep=0.01,
        timeout=20,
    )
    assert running and ctx.queues.outage == 0


class SlowInstance(LocalQueueService):
    """The real local queues; the first batch of events this instance receives takes it past the visibility
    timeout, and another instance receives one of those messages meanwhile (a new receipt)."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.taken: list[Message] = []

    def queue(self, name: str) -> LocalQueue:
        queue = super().queue(name)
        service = self
        receive = queue.receive

        def slow(max_messages: int = 16, visibility_timeout: int = 30) -> list[Message]:
            messages = receive(max_messages, visibility_timeout)
            if messages and not service.taken and name == "experiment-events":
                time.sleep(visibility_timeout + 0.2)  # this instance is slow: its batch is visible again...
                service.taken.extend(receive(1, 30))  # ...and another instance takes a message of it
            return messages

        queue.receive = slow  # type: ignore[method-assign]
        return queue


def test_a_message_received_again_while_it_was_handled_does_not_stop_the_workers(tmp_path):
    ctx = local_context(tmp_path)
    ctx.queues = SlowInstance(tmp_path / "queues.sqlite3")
    ctx.backends["local"] = ScriptedBackend()
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    host = LocalHost(ctx, visibility_timeout=1)
    host.step()  # handles the batch, then its delete finds the message received again
    assert ctx.queues.taken
    running = host.run(
        until=lambda: ctx.store.get_experiment(record.id).status is ExperimentStatus.RUNNING,
        idle_sleep=0.01,
        timeout=20,
    )
    assert running
