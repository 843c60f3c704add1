"""Exponential back-off, one rule for every retry in the agent (stream reconnects, outbox deliveries)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def backoff_delay(
    attempt: int, low: float, high: float, jitter: float = 0.0, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number ``attempt`` (0 first): ``low * 2**attempt`` capped at ``high``, shortened by up to
    ``jitter`` (a share, so that many clients do not retry in step).

    >>> [backoff_delay(n, 1, 5) for n in range(5)]
    [1.0, 2.0, 4.0, 5.0, 5.0]
    """
    base = min(float(high), float(min(low, high)) * 2.0 ** min(attempt, 30))
    return base * (1.0 - jitter * rand())


def backoff_delays(
    low: float, high: float, jitter: float = 0.25, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """Endless delays of :func:`backoff_delay` for attempts 0, 1, 2... (each with its own jitter).

    >>> import itertools
    >>> [round(d, 1) for d in itertools.islice(backoff_delays(1, 5, rand=lambda: 0.0), 5)]
    [1.0, 2.0, 4.0, 5.0, 5.0]
    """
    attempt = 0
    while True:
        yield backoff_delay(attempt, low, high, jitter, rand)
        attempt += 1
