"""Fan-out of committed events to Subscribe streams.

After every commit the hub reads the new events ONCE (read connection: committed state
only), keeps the most recent ones in memory, and wakes the streams; each stream filters
that shared window in memory instead of querying the database. A stream whose cursor is
older than the window (a replay from far back) reads from the database until it catches
up.

An event's protobuf form is built once, when a stream first needs it (with nobody
subscribed, none is built: that cost ~8 us per event on the event loop).

Waiters take `current()` *before* reading, so a commit between their read and their wait
is never missed.
"""

from __future__ import annotations

import asyncio
import bisect

from server.kernel import events
from server.rpc import convert
from server.storage.store import Store

WINDOW = 10_000  # recent events kept in memory
PAGE = 200       # events handed to a stream per step


class EventHub:
    def __init__(self, reader: Store) -> None:
        self._reader = reader
        self._event = asyncio.Event()
        self.last_seq = events.last_seq(reader)
        self._seqs: list[int] = []
        self._items: list[list] = []  # [event dict, proto Event or None until needed]
        # Called with each list of newly committed events (e.g. server.metrics).
        self.listeners: list = []

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        """After a commit: load what is new, then wake every stream."""
        while True:
            new = events.since(self._reader, self.last_seq)
            for ev in new:
                self._seqs.append(ev["seq"])
                self._items.append([ev, None])
            if new:
                self.last_seq = new[-1]["seq"]
                for listener in self.listeners:
                    listener(new)
            if len(new) < 5000:
                break
        if len(self._seqs) > 2 * WINDOW:
            del self._seqs[:-WINDOW]
            del self._items[:-WINDOW]
        self._event.set()
        self._event = asyncio.Event()

    def after(self, after: int, types: tuple, artifact_set: frozenset,
              principal_set: frozenset) -> tuple[list, int]:
        """Up to PAGE matching events (as protobuf) with seq > after, and the new cursor."""
        if not self._seqs or after < self._seqs[0] - 1:
            found, cursor = events.scan(self._reader, after=after, limit=PAGE, types=types,
                                        artifact_ids=artifact_set, principal_ids=principal_set)
            return [convert.event(ev) for ev in found], cursor
        out = []
        cursor = after
        items = self._items
        for i in range(bisect.bisect_right(self._seqs, after), len(self._seqs)):
            item = items[i]
            ev = item[0]
            cursor = ev["seq"]
            if events.matches(ev, types, artifact_set, principal_set):
                message = item[1]
                if message is None:
                    message = item[1] = convert.event(ev)
                out.append(message)
                if len(out) >= PAGE:
                    break
        return out, cursor
