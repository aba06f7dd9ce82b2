"""A failure whose traceback has an entry without a line number is reported as a failure, not as an
INTERNALERROR that ends the whole run.

CPython 3.11 (the project's venv) can leave ``tb_lineno`` as None on an entry whose instruction has no
line (seen in CI: one failing test stopped the run at that test, its report lost, and the session
fixtures were torn down only after the leak check had killed Azurite). pytest 9.2 subtracts 1 from it
while rendering. Such an entry is read as its function's first line, which is where the frame is, if not
the exact line. Checked by ``tests/test_suite_hygiene.py``.
"""

from __future__ import annotations

from _pytest._code.code import TracebackEntry


def _lineno(entry: TracebackEntry) -> int:
    raw = entry._rawentry.tb_lineno
    return (raw if raw is not None else entry.frame.code.firstlineno + 1) - 1


TracebackEntry.lineno = property(_lineno)  # type: ignore[method-assign,assignment]  # pytest's own is a property too
