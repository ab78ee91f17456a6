"""Work done ahead on threads, consumed in order (image decoding ahead of a model)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator


def prefetch(fn: Callable, items: Iterable, workers: int, ahead: int) -> Iterator[tuple]:
    """Yield (item, fn(item) or the exception it raised) in order, computing up to `ahead`
    items in advance on `workers` threads (in the caller's thread when workers is 0)."""
    def call(item):
        try:
            return fn(item)
        except Exception as exc:  # reported by the consumer, per item
            return exc

    if workers == 0:
        for item in items:
            yield item, call(item)
        return
    items = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[object, Future]] = deque(
            (item, pool.submit(call, item)) for item in islice(items, max(ahead, 1)))
        try:
            while pending:
                item, future = pending.popleft()
                for following in islice(items, 1):
                    pending.append((following, pool.submit(call, following)))
                yield item, future.result()
        finally:
            for _, future in pending:
                future.cancel()
