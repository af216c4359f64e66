"""Rate-limited logging for the datagram relays: a noisy peer must not fill a disk."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """At most ``burst`` records per ``interval`` seconds, then one line saying how many
    were suppressed. ``context`` (which relay) prefixes every message."""

    def __init__(self, logger: logging.Logger, context: str, *, interval: float = 10.0,
                 burst: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logger = logger
        self._context = context
        self._interval = interval
        self._burst = burst
        self._window_start = -interval
        self._count = 0
        self._suppressed = 0

    def _allow(self) -> bool:
        now = self._clock()
        if now - self._window_start >= self._interval:
            if self._suppressed:
                self._logger.warning("%s: %d similar messages suppressed", self._context,
                                     self._suppressed)
            self._window_start = now
            self._count = 0
            self._suppressed = 0
        if self._count < self._burst:
            self._count += 1
            return True
        self._suppressed += 1
        return False

    def warning(self, msg: str, *args: object) -> None:
        if self._logger.isEnabledFor(logging.WARNING) and self._allow():
            self._logger.warning("%s: " + msg, self._context, *args)

    def info(self, msg: str, *args: object) -> None:
        if self._logger.isEnabledFor(logging.INFO) and self._allow():
            self._logger.info("%s: " + msg, self._context, *args)
