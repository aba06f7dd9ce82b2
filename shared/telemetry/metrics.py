"""The metrics the control plane and the driver record: one table, so the workbook (infra/) and the
code name the same things. Names follow OpenTelemetry's dotted style; Application Insights stores them
in ``customMetrics`` (``name``, ``value``, ``customDimensions`` holding the attributes).

Attributes are low-cardinality (status, backend, step, outcome) except on the spend and budget gauges,
which are per experiment by nature (``rapids_hpo.experiment.id``).
"""

from __future__ import annotations

SUBMITTED = "rapids_hpo.experiments.submitted"
ENDED = "rapids_hpo.experiments.ended"
STEP_DURATION = "rapids_hpo.step.duration"
QUEUE_LAG = "rapids_hpo.queue.lag"
TRIALS_FINISHED = "rapids_hpo.trials.finished"
SPEND = "rapids_hpo.experiment.spend"
BUDGET = "rapids_hpo.experiment.budget"
EVENTS_STAGED = "rapids_hpo.events.staged"
EVENTS_SENT = "rapids_hpo.events.sent"
EVENTS_FAILED = "rapids_hpo.events.failed"

INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    SUBMITTED: ("counter", "{experiment}", "experiments stored by a submit (attributes: backend)"),
    ENDED: ("counter", "{experiment}", "experiments that reached a final status (status, backend)"),
    STEP_DURATION: ("histogram", "s", "one state-machine step, dequeue to return (step, outcome, backend)"),
    QUEUE_LAG: ("histogram", "s", "a step's message age at dequeue, less its visibility delay (step)"),
    TRIALS_FINISHED: ("counter", "{trial}", "trials ended on the compute (state, backend); per minute in charts"),
    SPEND: ("gauge", "USD", "an experiment's cost ledger so far (experiment.id, backend)"),
    BUDGET: ("gauge", "USD", "an experiment's limits.max_cost (experiment.id, backend)"),
    EVENTS_STAGED: ("counter", "{event}", "CloudEvents staged in the outbox"),
    EVENTS_SENT: ("counter", "{event}", "CloudEvents the topic accepted"),
    EVENTS_FAILED: ("counter", "{event}", "failed sends (kind: failed, retried later; dropped, refused)"),
}
