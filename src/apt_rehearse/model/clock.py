"""Seconds spent in named phases: the report's phases, the replay's parts, bench/."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class PhaseClock:
    """Each phase timed, in order (one timed twice is listed twice); ``seconds``
    sums them by name."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []

    def add(self, name: str, seconds: float) -> None:
        self.phases.append((name, round(seconds, 3)))

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started)

    __call__ = timed

    @property
    def seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for name, seconds in self.phases:
            totals[name] = round(totals.get(name, 0.0) + seconds, 3)
        return totals
