"""Store operations over many keys (manifest reads, deletes), run concurrently with a bound.

Against a bucket every call is a round trip: a history of 100 steps read one manifest after
another costs 100 of them. Each item is retried on its own, so one transient failure neither
fails the batch nor repeats the items that already succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from respawn.store.backend import CorruptError, StoreConfigError, StoreError

T = TypeVar("T")
R = TypeVar("R")

#: Calls in flight at once for one many-key operation: enough to hide a 200 ms round trip
#: over a history of hundreds of steps, few enough for a bucket's per-account rate limits.
MAX_IN_FLIGHT = 32
ATTEMPTS = 3
#: First retry after this many seconds, doubling (tests set it to 0).
RETRY_WAIT_S = 0.2


def _transient(e: BaseException) -> bool:
    # A corrupt object or a bad key stays so however often it is asked for.
    return isinstance(e, StoreError) and not isinstance(e, CorruptError | StoreConfigError)


def retried(fn: Callable[[T], R]) -> Callable[[T], R]:
    """`fn` retried (bounded, with backoff) on store errors that may pass."""

    def call(item: T) -> R:
        return retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(ATTEMPTS),
            wait=wait_exponential(multiplier=RETRY_WAIT_S, max=5),
            reraise=True,
        )(fn)(item)

    return call


def each(fn: Callable[[T], R], items: Sequence[T], bound: int = MAX_IN_FLIGHT) -> list[R]:
    """fn over items, at most `bound` at once, results in order; the first error is raised
    after every item has been tried (none is left half-started)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=max(1, min(bound, len(items)))) as pool:
        futures = [pool.submit(fn, i) for i in items]
    return [f.result() for f in futures]


def each_outcome(
    fn: Callable[[T], R], items: Sequence[T], bound: int = MAX_IN_FLIGHT
) -> list[R | StoreError]:
    """Like `each`, but a store error is that item's result, not the batch's failure."""

    def one(item: T) -> R | StoreError:
        try:
            return fn(item)
        except StoreError as e:
            return e

    return each(one, items, bound)
