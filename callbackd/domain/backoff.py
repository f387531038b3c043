"""Exponential back-off with a cap: how long to wait before the next try.

Pure arithmetic: the caller sleeps, and passes its own random number when it wants jitter,
so the same inputs always give the same delay.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``initial`` seconds before the second try, times ``factor`` after each failure, at most ``cap``.

    ``jitter`` (0 up to 1) spreads a delay over ``delay * (1 - jitter) .. delay * (1 + jitter)``, still at
    most ``cap``, so many daemons restarted together do not knock at the same moment.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap <= 0:
            raise ValueError("initial and cap must be positive")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if not 0 <= self.jitter < 1:  # 1 would allow a zero delay: a busy loop
            raise ValueError("jitter must be at least 0 and less than 1")

    def delay(self, failures: int, rand: float = 0.5) -> float:
        """Seconds to wait after ``failures`` failed tries in a row (1 for the first failure).

        ``rand`` in [0, 1) picks the point in the jitter band; 0.5 is its middle (no jitter).
        """
        if failures < 1:
            return 0.0
        # Grows without overflow: once past the cap, more failures change nothing.
        delay = self.initial
        for _ in range(failures - 1):
            delay *= self.factor
            if delay >= self.cap:
                break
        delay = min(delay, self.cap)
        if self.jitter:
            delay *= 1 + self.jitter * (2 * min(max(rand, 0.0), 1.0) - 1)
        return min(delay, self.cap)
