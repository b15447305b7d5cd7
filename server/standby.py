"""Several servers on one PostgreSQL database: exactly one is active, the others stand by.

Why and how (issue 11, DESIGN.md "State and scale"): the world has one writer. Servers
that share a database (each with its own data directory and the same admin credential)
compete for a PostgreSQL session-level advisory lock, `pg_try_advisory_lock(WRITER_LOCK_KEY)`
(server/storage/postgres.py). The winner is *active*; it records its advertised address
(`--advertise`, default its first listen address) in the `server_lease` row. The others
are *standbys*:

- health NOT_SERVING ("" and both services), and every World and Admin call is refused
  UNAVAILABLE / STANDBY before authentication, with ErrorInfo.metadata["active"] = the
  active server's address (empty when nobody holds the lock at that moment);
- every POLL_SECONDS they try the lock again. The one that gets it does exactly what a
  restart does (WorldServer._activate: migrations, genesis bootstrap, release of LLM
  reservations a dead server left, the mint resuming from the rounds in the database,
  the event hub starting from the last event number, credentials from the database)
  and only then reports SERVING.

Fencing. The lock is taken on the *writer's own session* (the connection every write
transaction runs on), not on a side connection: a COMMIT can only succeed while the
session that holds the lock is alive, so a server that lost the lock cannot have
acknowledged anything after it. When that session dies (the server was killed, the
network to the database broke, an operator ran pg_terminate_backend) PostgreSQL
releases the lock and a standby takes it. The server that lost it notices on its next
batch (or the watchdog's ping every WATCHDOG_SECONDS): the executor is fenced (nothing
more is applied; calls are refused STANDBY), health goes NOT_SERVING, and `ecology
serve` exits with status 3 and one loud line; a supervisor restarts it as a standby.
A batch whose COMMIT was sent when the session died is answered OUTCOME_UNKNOWN.

A server whose host silently vanishes (no FIN/RST reaches the database) keeps the lock
until PostgreSQL's TCP keepalive finds the session dead: the writer session sets
tcp_keepalives_idle/interval/count = 1 s/1 s/3, so about 4 s.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog

from server.errors import KernelError, Reason
from server.storage.store import Store

log = structlog.get_logger("standby")

POLL_SECONDS = 0.2
WATCHDOG_SECONDS = 1.0


class Lease:
    """The writer lock, as seen by one server: `store` is its writer's store."""

    def __init__(self, store: Store, advertise: str) -> None:
        self.store = store
        self.advertise = advertise
        self.held = False
        self._holder_cache: tuple[float, str] = (0.0, "")

    def try_acquire(self) -> bool:
        """Blocking (one round trip, two when it wins)."""
        if self.store.lease_try():
            self.store.lease_publish(self.advertise, os.getpid(), socket.gethostname(), time.time())
            self.held = True
        return self.held

    def active_address(self) -> str:
        """The active server's advertised address, read at most every POLL_SECONDS."""
        at, address = self._holder_cache
        now = time.monotonic()
        if now - at >= POLL_SECONDS:
            try:
                holder = self.store.lease_holder()
            except Exception:
                holder = None
            address = holder["address"] if holder else ""
            self._holder_cache = (now, address)
        return address

    def refusal(self) -> KernelError:
        address = self._holder_cache[1]
        return KernelError(
            Reason.STANDBY,
            f"this server is a standby; the active server is {address or 'not known yet (a takeover is under way)'}",
            metadata={"active": address})

    async def wait(self) -> None:
        """Poll until this server holds the lock; refreshes the active hint meanwhile."""
        while not await asyncio.to_thread(self._poll):
            await asyncio.sleep(POLL_SECONDS)

    def _poll(self) -> bool:
        if self.try_acquire():
            return True
        self.active_address()
        return False
