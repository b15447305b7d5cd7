"""What a writer operation reads from outside the kernel, on tape (exact replay).

The kernel is a deterministic state machine except where it asks the outside world:
the clock, random values (new bearer tokens), and answers computed outside the writer
thread that it picks up inside an operation (code-check outcomes). Every such read goes
through the kernel's `Tape`:

  * recording (the server): while a command runs on the writer thread
    (server/kernel/commands.py), each reading is taken live and appended to the
    operation's `Recording`, which is stored with the operation in the oplog;
  * playback (`ecology replay`): a `Playback` hands out the recorded readings in the
    same order and never looks at the clock or the outside. Asking for one more than was
    recorded, for a different kind, or leaving one unused is a `Divergence`.

Readings made outside a command (on other threads, or between operations) are live and
never recorded: they cannot change the state except as a command's inputs, which are
recorded themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Divergence(BaseException):
    """Replay took a path the recording did not (a BaseException: no kernel code may
    turn it into an ordinary failure)."""


class Recording:
    """The readings of one operation, live."""

    __slots__ = ("times", "answers")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.answers: list[list] = []

    def time(self, clock: Callable[[], float]) -> float:
        t = clock()
        self.times.append(t)
        return t

    def answer(self, kind: str, compute: Callable[[], Any]) -> Any:
        value = compute()
        self.answers.append([kind, value])
        return value


class Playback:
    """The recorded readings of one operation, handed out in order."""

    def __init__(self, times: list[float], answers: list[list]) -> None:
        self.times = list(times)
        self.answers = list(answers)
        self._t = 0
        self._a = 0
        self.last_time = None

    def time(self, clock: Callable[[], float]) -> float:
        if self._t >= len(self.times):
            raise Divergence(f"the kernel read the clock {self._t + 1} times; {len(self.times)} readings were recorded")
        t = self.times[self._t]
        self._t += 1
        self.last_time = t
        return t

    def answer(self, kind: str, compute: Callable[[], Any]) -> Any:
        if self._a >= len(self.answers):
            raise Divergence(f"the kernel asked for a {kind} answer that was not recorded")
        recorded_kind, value = self.answers[self._a]
        if recorded_kind != kind:
            raise Divergence(f"the kernel asked for a {kind} answer where a {recorded_kind} answer was recorded")
        self._a += 1
        return value

    def check_used_up(self) -> None:
        if self._t != len(self.times):
            raise Divergence(f"the kernel read the clock {self._t} times; {len(self.times)} readings were recorded")
        if self._a != len(self.answers):
            kinds = ", ".join(k for k, _ in self.answers[self._a:])
            raise Divergence(f"recorded answers were left unused: {kinds}")


class Tape:
    """The kernel's clock and outside answers, recorded or played back per operation."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._local = threading.local()

    def clock(self) -> float:
        rec = self._local.__dict__.get("rec")
        if rec is None:
            return self._clock()
        return rec.time(self._clock)

    def answer(self, kind: str, compute: Callable[[], Any]) -> Any:
        """`compute()` live (recorded when inside a command), or the recorded answer."""
        rec = self._local.__dict__.get("rec")
        if rec is None:
            return compute()
        return rec.answer(kind, compute)

    def begin(self, rec: Recording | Playback) -> None:
        self._local.rec = rec

    def end(self) -> None:
        self._local.rec = None
