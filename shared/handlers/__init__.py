"""The control plane's steps: request intake, the experiment state machine, the timer sweeps.

- :mod:`shared.handlers.intake`: a spec (HTTP or request queue) becomes an experiment; cancel requests.
- :mod:`shared.handlers.machine`: one short idempotent step per ``experiment-events`` message.
- :mod:`shared.handlers.sweeper`: re-drive stalled experiments, delete orphaned compute.
"""

from shared.cost.guard import cost_guard_reason
from shared.handlers.intake import (
    IdempotencyConflict,
    InvalidRequest,
    handle_request_message,
    new_experiment_id,
    request_cancel,
    reserved_key_problem,
    submit_experiment,
    take_request_message,
)
from shared.handlers.machine import (
    EVENT_FOR_STATUS,
    MAX_REDRIVES,
    STATUS_FOR_EVENT,
    handle_event,
    progress_updates,
    status_message,
)
from shared.handlers.sweeper import sweep, sweep_orphans

__all__ = [
    "EVENT_FOR_STATUS",
    "MAX_REDRIVES",
    "STATUS_FOR_EVENT",
    "IdempotencyConflict",
    "InvalidRequest",
    "cost_guard_reason",
    "handle_event",
    "handle_request_message",
    "new_experiment_id",
    "progress_updates",
    "request_cancel",
    "reserved_key_problem",
    "status_message",
    "submit_experiment",
    "sweep",
    "sweep_orphans",
    "take_request_message",
]
