"""Every conformance case must be able to fail for each adapter it is collected for.

A case that returns early, or whose checks are all guarded by the adapter's own flags, passes for that
adapter without checking anything: the suite then says "conforms" about what it never looked at. Here
each case is counted: every ``assert`` that passes while it runs (pytest's ``pytest_assertion_pass``,
enabled in ``pyproject.toml``; the harness helpers' asserts are rewritten too, so a step checked by
``apply_update`` counts) and every ``pytest.raises`` that caught what it expected. A case that passes
with neither fails, naming the adapter. The hook is this folder's, so only these cases pay for it.

The price: pytest builds a passing ``assert``'s explanation before handing it to the hook, and with ``CI``
set (or ``-v``) that is a full ``difflib`` diff of both sides, quadratic in their printed lines. A record
of 225 near-identical 4 KB entries took over 300 s in CI for an assert that passed. So here a comparison is
explained only when it is false (:func:`_explain_only_failures`); a failing one keeps pytest's diff.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

import pytest
from _pytest.assertion import util as assertion_util

pytest.register_assert_rewrite("tests.conformance.backend")

CHECKS = pytest.StashKey[int]()
"""Passing asserts and expected raises while a case ran."""
HOOKED = "_check_if_assertion_pass_impl"
"""A name the rewritten code of an ``assert`` refers to only when the pass hook was on when it was rewritten."""


def pytest_assertion_pass(item: pytest.Item, lineno: int, orig: str, expl: str) -> None:
    item.stash[CHECKS] = item.stash.get(CHECKS, 0) + 1


class _CountedRaises:
    """``pytest.raises`` as a context manager, counted when it caught the expected exception."""

    def __init__(self, context: Any, item: pytest.Item) -> None:
        self.context, self.item = context, item

    def __enter__(self) -> Any:
        return self.context.__enter__()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> Any:
        suppressed = self.context.__exit__(kind, error, tb)  # raises Failed when nothing (or the wrong thing) came
        if suppressed:
            self.item.stash[CHECKS] = self.item.stash.get(CHECKS, 0) + 1
        return suppressed


@pytest.fixture(autouse=True)
def _count_expected_raises(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    original: Callable[..., Any] = pytest.raises
    item = request.node

    def raises(*args: Any, **kwargs: Any) -> Any:
        made = original(*args, **kwargs)
        if len(args) > 1:  # the call form: it returned the caught exception's info, or raised
            item.stash[CHECKS] = item.stash.get(CHECKS, 0) + 1
            return made
        return _CountedRaises(made, item)

    monkeypatch.setattr(pytest, "raises", raises)


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "is": operator.is_,
    "is not": operator.is_not,
    "in": lambda left, right: left in right,
    "not in": lambda left, right: left not in right,
}


@pytest.fixture(autouse=True)
def _explain_only_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest's comparison explainer (``_pytest.assertion.util._reprcompare``, set for each test by the
    assertion plugin) wrapped to skip a comparison that holds: its explanation feeds only the pass hook,
    which reads none of it. The comparison is evaluated again to tell; an error there counts as false."""
    explain = assertion_util._reprcompare
    if explain is None:
        return

    def explain_failures(op: str, left: Any, right: Any) -> str | None:
        compare = _COMPARISONS.get(op)
        try:
            holds = compare is not None and bool(compare(left, right))
        except Exception:
            holds = False
        return None if holds else explain(op, left, right)

    monkeypatch.setattr(assertion_util, "_reprcompare", explain_failures)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to count with code rewritten before the hook was enabled (a ``__pycache__`` older than
    the setting): every case would look like one that checks nothing."""
    if not config.getini("enable_assertion_pass_hook"):
        raise pytest.UsageError("tests/conformance needs enable_assertion_pass_hook = true (pyproject.toml)")
    for item in items:
        code = getattr(getattr(item, "function", None), "__code__", None)
        if code is not None and "_format_explanation" in code.co_names and HOOKED not in code.co_names:
            raise pytest.UsageError(
                f"{item.path} was rewritten without the assertion pass hook: remove {item.path.parent}/__pycache__"
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if call.when == "call" and report.passed and not item.stash.get(CHECKS, 0):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} passed without checking anything (no assert passed, no pytest.raises caught): "
            "a case that cannot fail for this adapter is a defect; collect it only for the adapters it checks"
        )
    return report
