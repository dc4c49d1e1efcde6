"""Timing helpers the benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def seconds(
    fn: Callable[[], object], repeat: int, best: bool = False, sync: Callable[[], object] | None = None
) -> float:
    """The median (or, with ``best``, the fastest) wall time of ``repeat`` calls of ``fn``;
    ``sync`` runs after each call inside the timing (e.g. ``torch.cuda.synchronize``)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return min(times) if best else statistics.median(times)
