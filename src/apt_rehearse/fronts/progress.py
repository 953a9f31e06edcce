"""Progress on a terminal, apt-style; silence everywhere else."""

from __future__ import annotations

import shutil
import sys
from typing import Callable, TextIO


class Progress:
    """Quiet by default: --json and non-interactive runs show nothing."""

    def phase(self, name: str) -> None:
        pass

    def update(self, percent: float, message: str) -> None:
        pass

    def done(self) -> None:
        pass


class TerminalProgress(Progress):
    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.shown = False

    def phase(self, name: str) -> None:
        self._line(f"apt-rehearse: {name} ...")

    def update(self, percent: float, message: str) -> None:
        self._line(f"Rehearsing: [{percent:3.0f}%] {message}")

    def _line(self, text: str) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self.stream.write("\r" + " " * width + "\r")
            self.stream.flush()
            self.shown = False


class Relayed(Progress):
    """A rehearsal's progress, shown as before and also told to whoever
    waits for this rehearsal (store/inflight: the hook of the same transaction)."""

    def __init__(self, inner: Progress, tell: Callable[[str], None]) -> None:
        self.inner = inner
        self.tell = tell

    def phase(self, name: str) -> None:
        self.inner.phase(name)
        self.tell(name)

    def update(self, percent: float, message: str) -> None:
        self.inner.update(percent, message)
        self.tell(f"[{percent:3.0f}%] {message}")

    def done(self) -> None:
        self.inner.done()


def for_stream(stream: TextIO, quiet: bool) -> Progress:
    if quiet or not stream.isatty():
        return Progress()
    return TerminalProgress(stream)
