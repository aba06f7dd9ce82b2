"""The suite's own rule: a test that leaves a process running fails the run (see ``conftest.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest

import tests.azurite
from tests.conftest import ROOT, leftover_processes, names_checkout

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


@pytest.mark.slow  # runs a pytest session in a subprocess (~20 s, more under load); CI runs it (make test-all)
def test_a_leaked_process_fails_the_run_and_is_killed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, LEAKY_TEST)
    result.stdout.fnmatch_lines(["*FAILED: 1 process(es) started by the tests outlived them*", "*time.sleep(120)*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    leaked_pid = int(result.stdout.str().split("pid ")[1].split(":")[0])
    assert not psutil.pid_exists(leaked_pid) or psutil.Process(leaked_pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow  # runs a pytest session and two xdist workers in subprocesses; CI runs it (make test-all)
def test_a_leak_in_an_xdist_worker_fails_the_run_once_every_worker_has_ended(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `pytest -n 2` a worker does not check (it would take the other's processes for
    leaks), the controller does, and a worker's leaked process is its descendant or an orphan of the run."""
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY_TEST, test_tidy=TIDY_TEST)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "addopts=", "-n", "2")
    result.stdout.fnmatch_lines(["*FAILED: 1 process(es) started by the tests outlived them*", "*time.sleep(120)*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.slow  # runs a pytest session in a subprocess (~20 s, more under load); CI runs it (make test-all)
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


@pytest.mark.slow  # runs a pytest session in a subprocess (~20 s, more under load); CI runs it (make test-all)
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
    # The sleeper's last argument is this test's own (under the checkout, as the check requires): another
    # process of the run may end its command line with the checkout's path too.
    marker = str(ROOT / f"orphan-{uuid.uuid4().hex}")
    subprocess.run([sys.executable, "-c", script, marker], check=True)  # the parent exits; its child lives on
    orphans = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[-1] == marker]
    try:
        assert orphans and all(process.ppid() != os.getpid() for process in orphans)
        found = {process.pid for process in leftover_processes(grace_s=0.1)}
        assert {process.pid for process in orphans} <= found
    finally:
        for process in orphans:
            process.kill()


# ------------------------------------------------------------ conformance cases that check nothing
CONFORMANCE_CONFTEST = """
from tests.conformance.conftest import (  # noqa: F401
    _count_expected_raises,
    _explain_only_failures,
    pytest_assertion_pass,
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
)
"""

CONFORMANCE_CASES = """
import pytest

@pytest.fixture(params=["checked", "skipped"])
def adapter(request):
    return request.param

def _helper_that_returns_early(adapter):
    if adapter == "skipped":
        return
    assert adapter == "checked"

def test_returns_early_for_one_adapter(adapter):
    _helper_that_returns_early(adapter)

def test_checks_by_an_expected_raise(adapter):
    with pytest.raises(ValueError):
        int(adapter)

def test_checks_by_the_call_form_of_raises(adapter):
    pytest.raises(ValueError, int, adapter)
"""


@pytest.mark.slow  # runs a pytest session in a subprocess (~20 s, more under load); CI runs it (make test-all)
def test_a_conformance_case_that_checks_nothing_for_an_adapter_fails_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/conformance/conftest.py: a case passing for an adapter without one passing assert or caught
    raise fails (the event suite's cases returned early for the disabled publisher and passed)."""
    pytester.makeconftest(CONFORMANCE_CONFTEST)
    pytester.makepyfile(test_cases=CONFORMANCE_CASES)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "addopts=", "-o", "enable_assertion_pass_hook=true"
    )
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*test_returns_early_for_one_adapter?skipped? passed without checking anything*"])


@pytest.mark.slow  # runs a pytest session in a subprocess (~20 s, more under load); CI runs it (make test-all)
def test_the_conformance_check_refuses_to_run_without_the_pass_hook(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the hook no assert would be counted and every case would fail as checking nothing."""
    pytester.makeconftest(CONFORMANCE_CONFTEST)
    pytester.makepyfile(test_cases=CONFORMANCE_CASES)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "addopts=", "-o", "enable_assertion_pass_hook=false"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*needs enable_assertion_pass_hook = true*"])


CONFORMANCE_COMPARISONS = """
class Same:
    \"\"\"Equal to anything, printed differently: a parsed record's datetime (pydantic's TzInfo(UTC))
    against the test's own (datetime.timezone.utc).\"\"\"
    def __init__(self, tag):
        self.tag = tag
    def __eq__(self, other):
        return True
    def __repr__(self):
        return f"Same({self.tag!r})"

def test_a_large_comparison_that_holds():
    assert [Same(f"a{'x' * 4000}{i}") for i in range(300)] == [Same(f"b{'x' * 4000}{i}") for i in range(300)]

def test_a_comparison_that_fails():
    assert [1, 2, 3] == [1, 2, 4]
"""


@pytest.mark.slow  # runs a pytest session in a subprocess (~20 s, more under load); CI runs it (make test-all)
def test_a_conformance_assert_that_holds_is_not_diffed_and_one_that_fails_is(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass hook makes pytest explain every passing assert; with ``CI`` set that was a full diff, and
    a passing record comparison ran past the 300 s timeout in CI. Here a held comparison of 300 lines
    that all print differently passes within 60 s (pytest's diff of them takes far longer), and a failing
    one still shows pytest's full diff."""
    pytester.makeconftest(CONFORMANCE_CONFTEST)
    pytester.makepyfile(test_cases=CONFORMANCE_COMPARISONS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CI", "1")  # pytest's running_on_ci(): full diffs without -v
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "addopts=", "-o", "enable_assertion_pass_hook=true", "--timeout", "60"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Full diff:*", "*-  [1, 2, 4]*"])


# ------------------------------------------------------------ a failure pytest cannot place on a line
ENTRY_WITHOUT_A_LINE = """
import os, sys, types

def test_fails_with_an_entry_without_a_line():
    with open(os.devnull):  # a `with` gives this function instructions that carry no line
        pass
    frame = sys._getframe()
    offsets = [2 * i for i, position in enumerate(frame.f_code.co_positions()) if position[0] is None]
    entry = types.TracebackType(None, frame, offsets[0], -1)
    assert entry.tb_lineno is None
    raise ValueError("the failure to report").with_traceback(entry)

def test_after_it():
    pass
"""


def test_a_traceback_entry_without_a_line_is_a_failure_not_an_internal_error(pytester: pytest.Pytester) -> None:
    """CPython 3.11 leaves ``tb_lineno`` None on some instructions; pytest then crashed rendering the failure
    (INTERNALERROR), which ended a CI run at that test with its report lost (tests/pytest_tracebacks.py)."""
    pytester.makepyfile(test_inner=ENTRY_WITHOUT_A_LINE)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "tests.pytest_tracebacks", "-o", "addopts=")
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*ValueError: the failure to report*"])


# ------------------------------------------------------------ the session's Azurite and a port taken meanwhile
@pytest.mark.slow  # starts Azurite twice (a few seconds); CI runs it (make test-all)
def test_azurite_starts_again_on_new_ports_when_a_port_was_taken(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """``_free_port`` closes the port it found: another process may bind it before Azurite does (a run
    beside other sessions' servers failed its first Azure test that way, EADDRINUSE). The session's
    Azurite then starts again on new ports instead of failing every Azure test."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        picks = iter([busy, *(tests.azurite._free_port() for _ in range(8))])
        monkeypatch.setattr(tests.azurite, "_free_port", lambda: next(picks))
        process, ports, _log_path, log = tests.azurite._start(tests.azurite._azurite_binary(), str(tmp_path))
        try:
            assert busy not in ports.values() and process.poll() is None
            first_log = tests.azurite.LOCAL_PREFIX / "logs" / f"azurite-{busy}.log"
            assert tests.azurite.PORT_TAKEN in first_log.read_text(errors="replace")
        finally:
            tests.azurite._stop(process)
            log.close()


def test_a_process_of_another_checkout_whose_path_extends_this_ones_is_not_this_runs() -> None:
    """Two checkouts (``/tmp/me`` and ``/tmp/me2``, or ``/work/main`` and a clone at ``/tmp/check/work/main``)
    running their suites at once: neither counts the other's."""
    assert names_checkout([f"{ROOT}/.venv/bin/python", "-m", "pytest"], ROOT)
    assert names_checkout(["python", "-c", f"import sys; sys.path.insert(0, '{ROOT}/tests')"], ROOT)
    assert not names_checkout([f"{ROOT}2/.venv/bin/python", "-m", "pytest"], ROOT)
    assert not names_checkout([f"{ROOT}-other/.venv/bin/python"], ROOT)
    assert not names_checkout([f"/tmp/check{ROOT}/.venv/bin/python"], ROOT)  # a clone under another folder
    assert names_checkout(["driver", f"--claims={ROOT}/home"], ROOT)
