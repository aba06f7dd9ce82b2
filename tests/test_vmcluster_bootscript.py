"""The VMs' boot script with hostile spec values: refused by the spec (4xx naming the field), and even
when forced past it, quoted so that nothing extra runs (proved by parsing the YAML, splitting the shell
line with shlex, and running the line under sh with a recording ``docker``)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.backends.vmcluster.bootscript import NODE_DIR, docker_command, render_cloud_init
from shared.spec import SpecError, load_spec
from tests.control_plane import tiny_spec

HOSTILE = [
    "x'; touch {canary}; echo '",
    "x; touch {canary}",
    "$(touch {canary})",
    "`touch {canary}`",
    "x\ntouch {canary}",
    'x" && touch {canary} && "',
    "x | touch {canary}",
]
FIELDS = ("docker_image", "docker_args", "worker_class")


def _spec(**compute: Any) -> dict[str, Any]:
    document = tiny_spec()
    document["compute"] = {"backend": "vmcluster", "location": "westeurope", "resource_group": "rg", **compute}
    return document


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", HOSTILE)
def test_the_spec_refuses_hostile_values_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec(**{field: value.format(canary="/tmp/x")}))
    assert [e["loc"] for e in info.value.errors] == [f"compute.{field}"]


@pytest.mark.parametrize("value", HOSTILE)
def test_the_spec_refuses_hostile_worker_options(value: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec(worker_options={"memory_limit": value.format(canary="/tmp/x")}))
    assert info.value.errors[0]["loc"].startswith("compute.worker_options")
    with pytest.raises(SpecError):
        load_spec(_spec(worker_options={value.format(canary="/tmp/x"): 1}))


def test_ordinary_values_pass() -> None:
    spec = load_spec(
        _spec(
            docker_image="nvcr.io/nvidia/rapidsai/base:26.10-cuda12-py3.12",
            docker_args="--shm-size=1g --ulimit=memlock=-1 --ipc=host",
            worker_class="dask_cuda.CUDAWorker",
            worker_options={"rmm-pool-size": "20GB", "device_memory_limit": 0.8, "enable_nvlink": True},
        )
    )
    assert spec.compute.docker_args == "--shm-size=1g --ulimit=memlock=-1 --ipc=host"  # type: ignore[union-attr]


def _render(image: str, args: str, worker_class: str, option: str) -> tuple[str, list[str]]:
    """The cloud-init for hostile values forced past validation, and the docker argv meant."""
    env = {"RAPIDS_HPO_EXPERIMENT_ID": "exp-1", "EXTRA_PIP_PACKAGES": "optuna>=4.2,<6 pydantic>=2.10,<3"}
    argv = docker_command(docker_image=image, docker_args=args, gpus=True, env=env)
    node = {"role": "worker", "worker_class": worker_class, "worker_options": {"memory_limit": option}}
    return render_cloud_init(node=node, image=image, docker_argv=argv, install_docker=False), argv


@pytest.mark.parametrize("value", HOSTILE)
def test_forced_hostile_values_stay_data_and_one_quoted_command(value: str, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    hostile = value.format(canary=canary)
    cloud_init, argv = _render(hostile, f"--shm-size=1g {shlex.quote(hostile)}", hostile, hostile)

    document = yaml.safe_load(cloud_init)
    assert cloud_init.startswith("#cloud-config\n") and set(document) == {"write_files", "runcmd"}
    node = json.loads(next(f["content"] for f in document["write_files"] if f["path"].endswith("node.json")))
    assert node["worker_class"] == hostile and node["worker_options"]["memory_limit"] == hostile  # data, verbatim
    owner, pull, line = document["runcmd"]
    assert shlex.split(owner) == ["chown", "-R", "1001", NODE_DIR]  # the image's user reads its files
    assert shlex.quote(hostile) in pull  # the pull loop names the image as one quoted word
    assert isinstance(line, str)
    run, _, on_failure = line.rpartition(" || ")  # the host's note when no container starts: fixed text
    assert on_failure == f'python3 {NODE_DIR}/boot.py --never-started "$?" "${{pulled:-0}}"'
    assert shlex.split(run) == argv  # exactly the tokens meant: the image is one token, and so on
    assert argv[-3:] == [hostile, "python", f"{NODE_DIR}/boot.py"]  # the image: one token, then our command
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    assert not {";", "&&", "||", "|", "&", ">", "<", "(", ")"} & set(lexer), "an unquoted shell operator"

    # Run the pull and the run as cloud-init would (sh), with a docker that records its arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.json"
    (bin_dir / "docker").write_text(
        f"#!{os.environ.get('PYTHON', '/usr/bin/env python3')}\n"
        "import json, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", f"{pull}\n{line}"], env=env, check=True, timeout=30)
    assert [json.loads(call) for call in record.read_text().splitlines()] == [["pull", hostile], argv[1:]]
    assert not canary.exists(), "the hostile value ran a command"


def test_workers_preload_the_training_stack_through_their_own_option() -> None:
    """dask-cuda's CUDAWorker hands its own ``preload`` list to each Nanny, so distributed never reads the
    ``distributed.worker.preload`` config there: the preload must be a worker option (issue 22)."""
    import inspect

    from distributed import Nanny

    from shared.backends.vmcluster import boot

    for given, expected in (({}, ["gpu_jobs.preload"]), ({"preload": "mine"}, ["mine", "gpu_jobs.preload"])):
        config = {"worker_class": "dask_cuda.CUDAWorker", "worker_options": given, "scheduler_address": "tls://h:1"}
        command = boot.worker_command(config)
        spec = json.loads(command[command.index("--spec") + 1])
        assert spec == {"cls": "dask_cuda.CUDAWorker", "opts": {**given, "preload": expected}}
    assert "preload" in inspect.signature(Nanny).parameters  # the option both worker classes pass on
    assert "DASK_DISTRIBUTED__WORKER__PRELOAD" not in boot.environment({"role": "worker"}, Path("/code"))


def test_the_dashboard_listens_on_loopback_only() -> None:
    """Issue 20: the dashboard had a random port outside the NSG's Dask rules; now no network reaches it."""
    from shared.backends.vmcluster import boot

    assert boot.DASHBOARD_ADDRESS == "127.0.0.1:8787"
    source = Path(boot.__file__).read_text()
    assert '"--dashboard-address", DASHBOARD_ADDRESS' in source and "dashboard_address" not in source
