"""The suite's own rule: a test that leaves a process running fails the run (see ``conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, leftover_processes

pytest_plugins = ["pytester"]

INNER_CONFTEST = """
import tests.conftest
from tests.conftest import pytest_sessionfinish  # noqa: F401

tests.conftest.LEFTOVER_GRACE_S = 1.0
"""

LEAKY_TEST = """
import subprocess, sys

def test_starts_a_process_and_forgets_it():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
"""

TIDY_TEST = """
import subprocess, sys

def test_starts_a_process_and_waits_for_it():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""

RESOURCE_TRACKER_TEST = """
from multiprocessing import resource_tracker

def test_starts_the_resource_tracker():
    resource_tracker.ensure_running()
"""

PARENT_OF_A_SLEEPER = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "time.sleep(60)\n"
)


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, body: str) -> pytest.RunResult:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=body)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "addopts=")


def test_a_leaked_process_fails_the_run_and_is_killed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, LEAKY_TEST)
    result.stdout.fnmatch_lines(["*FAILED: 1 process(es) started by the tests outlived them*", "*time.sleep(120)*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    leaked_pid = int(result.stdout.str().split("pid ")[1].split(":")[0])
    assert not psutil.pid_exists(leaked_pid) or psutil.Process(leaked_pid).status() == psutil.STATUS_ZOMBIE


def test_a_tidy_run_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, TIDY_TEST)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "outlived" not in result.stdout.str()


def test_the_check_sees_grandchildren() -> None:
    """Dask's Nanny starts the worker: the leak the issue found was a grandchild of the test process."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_A_SLEEPER])
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        found = {process.pid for process in leftover_processes(grace_s=0.1)}
        grandchildren = {process.pid for process in psutil.Process(parent.pid).children()}
        assert parent.pid in found and grandchildren and grandchildren <= found
    finally:
        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()
        parent.kill()
        parent.wait()


def test_the_interpreters_own_multiprocessing_helper_is_no_leak(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """multiprocessing's resource tracker lives until the interpreter exits, which is after the check."""
    result = _run(pytester, monkeypatch, RESOURCE_TRACKER_TEST)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


def test_the_check_sees_an_orphan_of_this_run() -> None:
    """A process whose parent exited first belongs to init, no descendant any more: the stand-in VM's
    worker (started in a session of its own by the boot script) leaked like that and the first check missed it."""
    script = (
        "import subprocess, sys\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]]\n"
        "subprocess.Popen(sleeper, start_new_session=True)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(ROOT)], check=True)  # the parent exits; its child lives on
    orphans = [p for p in psutil.process_iter(["cmdline"]) if str(ROOT) in (p.info["cmdline"] or [""])[-1]]
    try:
        assert orphans and all(process.ppid() != os.getpid() for process in orphans)
        found = {process.pid for process in leftover_processes(grace_s=0.1)}
        assert {process.pid for process in orphans} <= found
    finally:
        for process in orphans:
            process.kill()
