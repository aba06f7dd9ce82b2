"""What the VMs' ``boot.py`` notes of failed starts (``artifacts/boot/<vm>.json`` in the area), read by poll.

A note is the compute's writing: parsed as untrusted (a dict, its ``vm`` checked against a strict pattern and
the cluster's names, every text clipped). A *final* note says the VM will not start its node again (the
restart policy is spent, or the container never started): for the head the run fails at once; for a worker
the VM is deleted and replaced, at most :func:`replacement_budget` times per run, then the run fails with
the last note's reason (a worker that cannot start usually shares its cause with the next one: a bad image,
``worker_options`` its class refuses, no route out).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from shared.backends.vmcluster.settings import worker_vm_prefix

if TYPE_CHECKING:
    from shared.backends.vmcluster.section import VMClusterCompute

VM_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


BOOT_NOTES = "boot"
"""Where ``boot.py`` notes a failed start (``artifacts/boot/<vm>.json`` in the area)."""


def describe_note(note: dict[str, Any]) -> str:
    """One line of a boot note, clipped (the compute wrote it)."""
    starts = note.get("starts")
    start = "the container never started" if starts == 0 else f"container start {starts}"
    text = f"{note.get('vm')}: {note.get('stage')}: {note.get('error')} ({start})"
    return text[:500]


def boot_log_hint(compute: VMClusterCompute, note: dict[str, Any] | None) -> str:
    vm = str(note.get("vm")) if note else "<vm>"
    vm = vm if VM_NAME.fullmatch(vm) else "<vm>"  # the compute wrote it
    return f" (the VM's boot log: az vm boot-diagnostics get-boot-log -g {compute.resource_group} -n {vm})"


def replacement_budget(compute: VMClusterCompute) -> int:
    """How many worker VMs that could not start a run replaces before it fails: one per worker slot."""
    return compute.n_workers


def unbootable_workers(notes: list[dict[str, Any]], cluster_id: str) -> list[str]:
    """The cluster's worker VMs whose latest note is final (newest first, each once)."""
    prefix, seen, found = worker_vm_prefix(cluster_id), set(), []
    for note in notes:
        vm = note.get("vm")
        if not isinstance(vm, str) or not VM_NAME.fullmatch(vm) or not vm.startswith(prefix) or vm in seen:
            continue
        seen.add(vm)
        if note.get("final") is True:
            found.append(vm)
    return found
