"""What column projection saves when a spec's ``dataset.features`` names a few columns of a wide table.

Writes a table (the flights columns trials use, plus ``--extra`` numeric columns a spec leaves out, as
a taxi table's fare components are) as Parquet and CSV, then reads it the way a trial does
(``gpu_jobs.data.read_selected``: the features and the target only) and whole (every column, then the
selection), in the same process, alternating, ``--repeats`` times each. Prints the median seconds and
the peak traced memory of each, and the ratio projected / whole: the figure that does not depend on
this machine's pace.

Where cuDF imports (a GPU host with RAPIDS), the same reads run with cuDF's own readers too (what the GPU
engine reads with), alternating with the pandas reads they are compared to: seconds only (traced memory
is host memory), the ratio projected / whole on cuDF, and cuDF's projected read against pandas' in the
same process. ``--library pandas`` skips them.

    python bench/read_projection.py                # 200,000 rows, 40 unused columns
    python bench/read_projection.py --rows 50000 --extra 10
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_jobs.data import read_selected, read_table, select_columns

FEATURES = ["month", "day_of_week", "distance", "carrier", "origin", "dep_delay"]
TARGET = "arr_delay"


def table(rows: int, extra: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "month": rng.integers(1, 13, rows),
            "day_of_week": rng.integers(0, 7, rows),
            "distance": rng.integers(80, 5000, rows).astype(float),
            "carrier": rng.choice(["AA", "B6", "DL", "UA", "WN"], rows),
            "origin": rng.choice(["EWR", "JFK", "LGA"], rows),
            "dep_delay": rng.normal(10, 30, rows),
            TARGET: rng.normal(5, 40, rows),
        }
    )
    unused = pd.DataFrame(rng.normal(size=(rows, extra)), columns=[f"unused_{i}" for i in range(extra)])
    return pd.concat([frame, unused], axis=1)


def measure(read: Callable[[], Any]) -> tuple[float, float]:
    tracemalloc.start()
    started = time.perf_counter()
    frame = read()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert list(frame.columns) == [*FEATURES, TARGET]
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--extra", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--library",
        choices=["auto", "pandas", "cudf"],
        default="auto",
        help="pandas: its reads only; cudf: cuDF's too (fails without cuDF); auto: cuDF's where it imports",
    )
    args = parser.parse_args()
    libraries: list[ModuleType] = [pd]
    if args.library == "cudf" or (args.library == "auto" and importlib.util.find_spec("cudf") is not None):
        import cudf

        libraries.append(cudf)
    data = table(args.rows, args.extra)
    print(f"{args.rows:,} rows, {len(FEATURES)} features + target read of {data.shape[1]} columns")
    with tempfile.TemporaryDirectory() as folder:
        for fmt in ("parquet", "csv"):
            path = Path(folder) / f"wide.{fmt}"
            data.to_parquet(path) if fmt == "parquet" else data.to_csv(path, index=False)
            uri = str(path)
            runs: dict[str, list[tuple[float, float]]] = {}
            reads = {f"{name}-{how}": read for name, how, read in _reads(uri, fmt, libraries)}
            for read in reads.values():
                read()  # warm: the first read imports pyarrow's dataset machinery (and cuDF's readers)
            for _ in range(args.repeats):
                for name, read in reads.items():
                    runs.setdefault(name, []).append(measure(read))
            medians = {
                name: (statistics.median(s for s, _ in found), statistics.median(m for _, m in found))
                for name, found in runs.items()
            }
            (p_s, p_mb), (w_s, w_mb) = medians["pandas-projected"], medians["pandas-whole"]
            size = path.stat().st_size / 2**20
            print(
                f"{fmt:8} ({size:6.1f} MiB file): projected {p_s:6.2f} s, peak {p_mb:7.1f} MiB | "
                f"whole {w_s:6.2f} s, peak {w_mb:7.1f} MiB | projected/whole: time {p_s / w_s:.2f}, "
                f"memory {p_mb / w_mb:.2f}"
            )
            if "cudf-projected" in medians:
                c_s, c_w = medians["cudf-projected"][0], medians["cudf-whole"][0]
                print(
                    f"{'':8} cuDF readers: projected {c_s:6.3f} s | whole {c_w:6.3f} s | projected/whole: "
                    f"time {c_s / c_w:.2f} | cuDF projected / pandas projected: time {c_s / p_s:.2f}"
                )


def _reads(uri: str, fmt: str, libraries: list[ModuleType]) -> list[tuple[str, str, Callable[[], Any]]]:
    """Each library's projected read (as a trial reads) and whole read (every column, then the selection)."""
    reads: list[tuple[str, str, Callable[[], Any]]] = []
    for library in libraries:

        def whole(library: ModuleType = library) -> Any:
            return select_columns(read_table(uri, TARGET, fmt, frame=library), TARGET, FEATURES, uri)

        projected = functools.partial(read_selected, uri, TARGET, fmt, FEATURES, frame=library)
        reads += [(library.__name__, "projected", projected), (library.__name__, "whole", whole)]
    return reads


if __name__ == "__main__":
    main()
