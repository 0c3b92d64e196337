"""Bounded read-ahead: read the next items on a background thread while the current one is
analysed.

One worker thread (a :class:`~concurrent.futures.ThreadPoolExecutor` of one) does every read,
in order, so each checkpoint still has one open shard and reads in file order; file reads
release the GIL, so reading overlaps with the analysis. Memory stays bounded: at most
``ahead`` items are read ahead, and the bytes read but not yet released by the consumer may
not exceed max(:data:`READ_AHEAD_MIN_BYTES`, the largest item) unless nothing else is in
flight, so at most two copies of the largest tensor set are held whatever the model size.
Errors raised by a read surface in the consumer; when the consumer stops early (an error,
Ctrl-C, ``break``), pending reads are cancelled and the worker ends after the read it is in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

READ_AHEAD_MIN_BYTES = 256 << 20
"""Bytes that may be read ahead whatever the item sizes."""
THREAD_NAME = "opdgeo-read-ahead"


def read_ahead(
    keys: Sequence[K], read: Callable[[K], V], size: Callable[[K], int], ahead: int
) -> Iterator[V]:
    """``read(key)`` for every key, in order, up to ``ahead`` items in advance (0: inline)."""
    if ahead <= 0:
        for key in keys:
            yield read(key)
        return
    sizes = [size(key) for key in keys]
    budget = max([READ_AHEAD_MIN_BYTES, *sizes])
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
    pending: deque[tuple[Future[V], int]] = deque()
    in_flight = 0  # bytes submitted and not yet released by the consumer
    nxt = 0
    finished = False
    try:
        while nxt < len(keys) or pending:
            if not pending:  # nothing in flight: the next item goes whatever its size
                pending.append((pool.submit(read, keys[nxt]), sizes[nxt]))
                in_flight += sizes[nxt]
                nxt += 1
            future, nbytes = pending.popleft()
            while nxt < len(keys) and len(pending) < ahead and in_flight + sizes[nxt] <= budget:
                pending.append((pool.submit(read, keys[nxt]), sizes[nxt]))
                in_flight += sizes[nxt]
                nxt += 1
            value = future.result()
            yield value
            del value
            in_flight -= nbytes
        finished = True
    finally:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=finished, cancel_futures=True)
