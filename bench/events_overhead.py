"""Cost of CloudEvents on the state machine: the same scripted experiments with events off, with events
on (the real Event Grid client posting to a local topic receiver), and with the topic down (connection
refused, the default retry budget). Local store and queues, the scripted backend of tests/; each
experiment: submit, provision, submit run, ``--polls`` polls that each find ``--trials-per-poll``
finished trials, finalize, teardown.

    python bench/events_overhead.py [--experiments 20] [--polls 5] [--trials-per-poll 4]

Last line: ``events_on_ratio=<on/off>`` (time per experiment).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.events import Announcer  # noqa: E402
from shared.events.eventgrid import EventGridPublisher  # noqa: E402
from shared.handlers import handle_event, submit_experiment  # noqa: E402
from shared.ports import RunState  # noqa: E402
from shared.records import TrialRecord, TrialState, utcnow  # noqa: E402
from shared.spec import load_spec  # noqa: E402
from tests.control_plane import local_context, tiny_spec  # noqa: E402
from tests.fakes.scripted import ScriptedBackend  # noqa: E402
from tests.topic_receiver import TopicReceiver  # noqa: E402


def one_experiment(ctx, polls: int, per_poll: int) -> tuple[float, int]:
    """Seconds spent in the control plane's steps (not in writing trials), and steps taken."""
    spec = load_spec(tiny_spec(limits={"max_total_trials": polls * per_poll, "max_concurrent_trials": per_poll}))
    ctx.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING] * polls + [RunState.SUCCEEDED])
    spent, steps = 0.0, 0
    started = time.perf_counter()
    record, _ = submit_experiment(ctx, spec)
    spent += time.perf_counter() - started
    number = 0
    while True:
        messages = ctx.events.receive(1, visibility_timeout=60)
        if not messages:
            return spent, steps
        if ctx.store.get_experiment(record.id).status.value == "RUNNING":
            for _ in range(per_poll):  # what the compute wrote since the last poll
                ctx.store.put_trial(
                    TrialRecord(
                        experiment_id=record.id,
                        number=number,
                        params={"max_depth": number % 7},
                        state=TrialState.COMPLETED,
                        value=0.5 + (number * 37 % 100) / 1000,
                        ended_at=utcnow(),
                        duration_s=1.0,
                    )
                )
                number += 1
        started = time.perf_counter()
        handle_event(ctx, messages[0].body)
        spent += time.perf_counter() - started
        steps += 1
        ctx.events.delete(messages[0])


def run(mode: str, experiments: int, polls: int, per_poll: int) -> tuple[list[float], int, int]:
    receiver = TopicReceiver().start()
    if mode == "topic down":
        receiver.stop()
    with tempfile.TemporaryDirectory() as home:
        ctx = local_context(Path(home))
        if mode != "off":
            ctx.announcer = Announcer(EventGridPublisher.from_settings(receiver.endpoint, receiver.key), source="/b")
        times, steps = [], 0
        for _ in range(experiments):
            spent, taken = one_experiment(ctx, polls, per_poll)
            times.append(spent)
            steps += taken
    receiver.stop()
    return times, steps, len(receiver.events)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--polls", type=int, default=5)
    parser.add_argument("--trials-per-poll", type=int, default=4)
    args = parser.parse_args()
    results = {}
    for mode in ("off", "on", "topic down"):
        times, steps, received = run(mode, args.experiments, args.polls, args.trials_per_poll)
        results[mode] = statistics.mean(times)
        print(
            f"{mode:>10}: {statistics.mean(times) * 1000:8.1f} ms per experiment "
            f"(median {statistics.median(times) * 1000:.1f}), {sum(times) / steps * 1000:6.2f} ms per step, "
            f"{received / args.experiments:.0f} events received per experiment"
        )
    print(f"topic_down_ratio={results['topic down'] / results['off']:.2f}")
    print(f"events_on_ratio={results['on'] / results['off']:.2f}")


if __name__ == "__main__":
    main()
