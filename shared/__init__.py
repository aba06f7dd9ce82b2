"""rapids-hpo-control: the control-plane core (spec, HPO engine, store, queues, state machine, API)."""

__version__ = "0.1.0"
