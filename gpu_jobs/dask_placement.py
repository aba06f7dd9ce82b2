"""Put a Dask collection's partitions on chosen workers, at least one on each, and say where they are.

``repartition(...).persist()`` leaves placement to the scheduler: a single input file becomes one
partition split in place on one worker, and ``cuml.dask``'s forest then fails ("Data was not split among
all workers"). :func:`place_partitions` computes partition ``i`` on ``workers[i % n]`` as a task restricted
to that worker, after splitting the collection into at least ``n`` partitions, and checks the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placed:
    """A collection built from ``futures``: partition ``i`` is computed and held on ``worker_of(i)``."""

    collection: Any
    futures: list[Any]
    workers: tuple[str, ...]

    def worker_of(self, index: int) -> str:
        return self.workers[index % len(self.workers)]

    def by_worker(self) -> dict[str, list[Any]]:
        """Each worker's futures, in partition order."""
        owned: dict[str, list[Any]] = {worker: [] for worker in self.workers}
        for index, future in enumerate(self.futures):
            owned[self.worker_of(index)].append(future)
        return owned


def cluster_workers(client: Any) -> tuple[str, ...]:
    """Every worker's address, sorted (``n_workers=-1``: some releases list only 5 by default)."""
    return tuple(sorted(client.scheduler_info(n_workers=-1)["workers"]))


def place_partitions(
    client: Any,
    collection: Any,
    workers: Sequence[str],
    *,
    transform: Callable[[Any], Any] | None = None,
    meta: Any = None,
) -> Placed:
    """Compute ``collection`` (a Dask DataFrame or Series) so that every one of ``workers`` holds at least
    one partition; ``transform`` (a function of one partition, with the result's ``meta``) runs on the
    worker that will hold it, e.g. to move a pandas partition to the GPU. Blocks until all are in memory."""
    import dask.dataframe as dd
    from dask.delayed import delayed
    from distributed import wait

    if not workers:
        raise ValueError("no workers to place partitions on")
    if collection.npartitions < len(workers):
        collection = collection.repartition(npartitions=len(workers))
    parts = collection.to_delayed()
    if transform is not None:
        parts = [delayed(transform)(part) for part in parts]
    futures = [
        client.compute(part, workers=[workers[index % len(workers)]], allow_other_workers=False)
        for index, part in enumerate(parts)
    ]
    wait(futures)
    placed = Placed(
        dd.from_delayed(futures, meta=collection._meta if meta is None else meta, verify_meta=False),
        futures,
        tuple(workers),
    )
    require_every_worker_holds_data(client, placed)
    return placed


def publish(client: Any, name: str, placed: Placed) -> None:
    """Publish ``placed`` under ``name``; its futures stay in memory until unpublished (the futures are
    published themselves: a collection built from futures does not always show them to the scheduler)."""
    client.publish_dataset((placed.collection, placed.futures, placed.workers), name=name)


def published(client: Any, name: str) -> Placed:
    """The :class:`Placed` collection published under ``name``."""
    collection, futures, workers = client.get_dataset(name)
    return Placed(collection, list(futures), tuple(workers))


def holders(client: Any, futures: Sequence[Any]) -> dict[str, int]:
    """How many of ``futures`` each worker holds (a future held twice counts for both)."""
    counts: dict[str, int] = {}
    for addresses in client.who_has(list(futures)).values():
        for address in addresses:
            counts[address] = counts.get(address, 0) + 1
    return counts


def require_every_worker_holds_data(client: Any, placed: Placed) -> None:
    """``RuntimeError`` naming the workers that hold no partition (e.g. one died and its data moved)."""
    held = holders(client, placed.futures)
    empty = [worker for worker in placed.workers if not held.get(worker)]
    if empty:
        raise RuntimeError(f"workers {', '.join(empty)} hold no partition after placement (held: {held})")
