"""Process-wide settings that make CPU work fast, applied by the layers that run models, and
:func:`process_map`, the one way geopose runs work in worker processes.

:func:`reuse_freed_memory`: glibc's malloc gives every block above its mmap threshold (128 KiB
at start, rising to at most 32 MiB as such blocks are freed) fresh pages from the kernel, and
returns them when it is freed. PyTorch on the CPU allocates each activation anew, so a model's
forward pass touches all its activation memory as new pages every call; keeping freed
memory for reuse removes those page faults and makes a 1024² tile about a third faster
(BENCHMARKS.md, Satellite scenes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from geopose.errors import GeoposeError

MMAP_THRESHOLD = 1 << 30
"""Blocks of at least this many bytes (1 GiB) still get their own mapping."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap returned to the system only beyond this (2 GiB)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
"""glibc's own variables: a user who set one keeps their choice."""


@functools.lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Keep freed heap memory in the process for reuse (glibc ``mallopt``: mmap threshold
    :data:`MMAP_THRESHOLD`, trim threshold :data:`TRIM_THRESHOLD`) instead of giving it back to
    the system after every large tensor (module doc). The resident memory then stays near its
    peak instead of falling between calls (a few percent more peak memory). Once per process;
    returns whether it applied (False off Linux/glibc, or when ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` is set in the environment)."""
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


def process_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int,
    what: str,
    initializer: Callable[[], None] | None = None,
    start_method: str | None = None,
) -> Iterator[Any]:
    """``fn`` over ``items`` in ``workers`` processes, results in the items' order.

    ``start_method``: ``"spawn"``, ``"fork"``, ... (None: the platform's default). A worker that
    dies (killed for memory, or a calling script that starts the pool when it is imported,
    which ``spawn`` and ``forkserver`` workers do first) raises one :class:`GeoposeError`
    naming ``what`` and both causes, instead of ``BrokenProcessPool``.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context(start_method)
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer) as pool:
            yield from pool.map(fn, items, chunksize=1)
    except BrokenProcessPool:
        raise GeoposeError(
            f"{what}: a worker process ended abruptly. Either it ran out of memory (use fewer "
            "workers), or the calling script starts the workers when it is imported: each "
            f"worker imports the main script ({ctx.get_start_method()!r} start), so put the "
            'call under `if __name__ == "__main__":`, or use one worker'
        ) from None
