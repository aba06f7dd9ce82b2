"""The ``azureml`` backend offline: what a run would create, and how it bills (one profile, used by the
dry run, the cost estimate, the ledger and the cost guard)."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from shared.backends.azureml.sweep_job import ROOT, azureml_compute, build_compute, build_sweep_job
from shared.spec import ExperimentSpec

ESTIMATED_TRIAL_SECONDS = 1800
"""Per-trial estimate when the spec sets no time limit: the seed's recorded run (5 concurrent trials on
Standard_NC6s_v3 took about 35 minutes, node start and image pull included)."""


class AzureMLPlanner:
    """Implements ``shared.ports.Planner`` for AzureML sweeps."""

    full_plan_shows = "the AmlCompute and sweep job YAML"

    def describe(self, spec: ExperimentSpec) -> list[str]:
        compute = azureml_compute(spec)
        tier = "low-priority" if compute.low_priority else "dedicated"
        trials = f"{spec.effective_total_trials()} trials, {spec.limits.max_concurrent_trials} at a time"
        return [
            f"AmlCompute cluster {compute.compute_name!r}: {compute.vm_size}, {compute.min_instances}-"
            f"{compute.max_instances} {tier} nodes, idle scale-down after {compute.idle_time_before_scale_down} s",
            "a data check command job first (the sweep starts only if the data fits)",
            f"one AzureML sweep job: {trials}, each scoring only",
            "a refit command job for the best trial once the sweep ended (its model is the experiment's)",
        ]

    def estimate(self, spec: ExperimentSpec) -> dict[str, Any]:
        """Node-hours the sweep may use: ``node_hours(nodes x per_trial x waves)``, capped by ``limits.timeout``.

        ``nodes`` = ``AzureMLCompute.nodes_held``, ``waves`` = ceil(total trials / nodes), ``per_trial`` =
        ``trial_timeout``, else ``timeout``, else :data:`ESTIMATED_TRIAL_SECONDS`. With a time limit the
        figure is an upper bound on trial time; add the idle tail (each node stays
        ``idle_time_before_scale_down`` after its last trial), reported apart.
        """
        compute = azureml_compute(spec)
        limits = spec.limits
        nodes = compute.nodes_held(spec)
        if limits.trial_timeout is not None:
            per_trial, basis = float(limits.trial_timeout), "trial_timeout"
        elif limits.timeout is not None:
            per_trial, basis = float(limits.timeout), "timeout"
        else:
            per_trial, basis = float(ESTIMATED_TRIAL_SECONDS), "estimate"
        waves = math.ceil(spec.effective_total_trials() / nodes)
        seconds = per_trial * waves
        if limits.timeout is not None:
            seconds = min(seconds, float(limits.timeout))
        profile = compute.billing(spec)
        trial_hours = profile.node_hours(seconds, overheads=False)
        idle_hours = profile.node_hours(compute.idle_time_before_scale_down, overheads=False)
        return {
            "node_hours": round(trial_hours + idle_hours, 3),
            "trial_node_hours": round(trial_hours, 3),
            "idle_node_hours": round(idle_hours, 3),
            "nodes": nodes,
            "waves": waves,
            "per_trial_seconds": per_trial,
            "basis": basis,
            "vm_size": compute.vm_size,
            "tier": "low_priority" if compute.low_priority else "dedicated",
        }

    def dry_run(self, spec: ExperimentSpec, experiment_id: str = "exp-DRYRUN") -> dict[str, Any]:
        """What an ``azureml`` run would create, offline: the AmlCompute, the sweep job and the estimate.

        The job's ``code`` here is the repository root; ``submit`` uploads a staged copy of ``gpu_jobs`` only.
        """
        compute = build_compute(azureml_compute(spec))
        job = build_sweep_job(spec, experiment_id, code_dir=ROOT)
        compute_doc = json.loads(json.dumps(compute._to_dict()))  # plain dicts (the SDK nests OrderedDicts)
        return {
            "backend": "azureml",
            "job_name": job.name,
            "compute": compute_doc,
            "compute_yaml": yaml.safe_dump(compute_doc, sort_keys=False),
            "sweep_job": job._to_dict(),
            "sweep_job_yaml": str(job),
            "estimate": self.estimate(spec),
        }
