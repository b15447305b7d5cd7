"""The single writer: every state change runs here, one operation at a time, and is
acknowledged only after its transaction is durably committed.

Operations are plain synchronous functions `op(conn) -> result`; `conn` is the writer's
store (server/storage/store.py). The writer thread takes
every operation waiting in the queue (up to `max_batch`), runs each inside its own
SAVEPOINT in one transaction, and COMMITs once (group commit): many calls share one
fsync. An operation that raises is rolled back to its savepoint, so it changes nothing,
and the others in the batch are unaffected. Results (or errors) are delivered to the
awaiting coroutines only after COMMIT returns.

An operation may return `Failed(err)` instead of raising: its changes so far are kept
(committed) and `err` is raised to the caller. Idempotency uses this to remember a
failed outcome durably.

Because only this thread writes, operations never race: the kernel's check-then-act
sequences are atomic by construction.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from server.errors import KernelError, Reason
from server.storage.store import Store

log = structlog.get_logger("executor")

Op = Callable[[Store], Any]


@dataclass
class Failed:
    """Returned by an op whose partial changes must commit although the call fails."""

    error: KernelError


_STOP = object()


def fenced_error() -> KernelError:
    return KernelError(Reason.STANDBY, "this server lost its database session and with it the writer lock; "
                       "nothing was applied here: call the active server")


class Executor:
    def __init__(self, conn: Store, *, max_batch: int = 512) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kernel-writer", daemon=True)
        self._commit_listeners: list[Callable[[], None]] = []
        self.batches = 0
        self.ops = 0
        self.held_batches = 0  # batches whose writes were all held back to the end (_run_held)
        self.held_refused = 0  # ... that were refused and ran again op by op
        # Called on the writer thread after each batch: (ops in it, seconds BEGIN..COMMIT).
        self.on_batch: Callable[[int, float], None] | None = None
        # Set by the server (exact replay): called inside the op's savepoint after an op
        # that is not a recorded command (server/kernel/commands.py) changed rows, so the
        # oplog says where a replay has to stop.
        self.on_unrecorded: Callable[[Any, Op], None] | None = None
        # Fencing (several servers on one database, server/standby.py): once the writer's
        # database session is gone, so is the writer lock it held, and another server may
        # be writing. From then on nothing is applied here: every op is refused STANDBY
        # without touching the database, and `on_connection_lost` (set by the server) is
        # called once, on the writer thread.
        self.fenced = False
        self.on_connection_lost: Callable[[], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """`callback` runs on the submitting loop after every batch commits."""
        self._commit_listeners.append(callback)

    async def run(self, op: Op) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((op, future, loop))
        return await future

    def run_blocking(self, op: Op) -> Any:
        """For startup and tools before the thread starts: run one op in its own transaction."""
        self._conn.tx_begin()
        try:
            before = self._conn.changes()
            result = op(self._conn)
            self._conn.flush()
            self._check_recorded(op, before)
        except BaseException:
            self._conn.tx_rollback()
            raise
        self._conn.tx_commit()
        if isinstance(result, Failed):
            raise result.error
        return result

    def _check_recorded(self, op: Op, before: int) -> None:
        if self.on_unrecorded is not None and not hasattr(op, "command") and self._conn.changes() != before:
            self.on_unrecorded(self._conn, op)

    def stop(self) -> None:
        """Finish everything queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # -- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in batch):
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list) -> None:
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        committing = False
        if self.fenced:
            self._answer(batch, [(False, fenced_error())] * len(batch), started)
            return
        try:
            held = None
            if self._may_hold(batch):
                held = self._run_held(batch)
                if held is not None:
                    committing = True
                    if not self._commit_held(len(batch)):
                        committing, held = False, None
            if held is not None:
                outcomes = held
            else:
                conn.tx_begin()
                outcomes = self._run_ops(batch, held=False)
                committing = True
                conn.tx_commit()
        except Exception as err:
            lost = conn.connection_lost(err)
            log.exception("commit_failed", error=repr(err), connection_lost=lost, during_commit=committing)
            if lost and committing:
                # COMMIT was sent and no answer came back: the transaction may or may not
                # have committed. Never claim either; a retry with the same request_id
                # (the idempotency record is in the same transaction) tells.
                failure = KernelError(Reason.OUTCOME_UNKNOWN,
                                      "the database connection broke during COMMIT: the outcome is unknown; "
                                      "retry with the same request_id to learn it")
            elif lost:
                failure = fenced_error()  # COMMIT never sent: nothing can have been applied
            else:
                # The commit itself failed (disk full, I/O error): nothing is acknowledged.
                try:
                    conn.tx_rollback()
                except Exception:
                    pass
                failure = KernelError(Reason.INTERNAL, "storage failure; nothing was applied")
            outcomes = [(False, failure)] * len(batch)
            if lost and not self.fenced:
                self.fenced = True
                if self.on_connection_lost is not None:
                    self.on_connection_lost()
        self._answer(batch, outcomes, started)

    def _run_ops(self, batch: list, *, held: bool) -> list[tuple[bool, Any]]:
        """Each op in its savepoint. A KernelError fails its own op; any other exception
        does too (a bug, contained) - except in a held batch, where it may come from an
        earlier op's held-back writes and so ends the attempt (`_run_held`)."""
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        for op, _future, _loop in batch:
            conn.savepoint("op")
            try:
                before = conn.changes()
                result = op(conn)
                conn.flush()  # held-back writes fail this op, not the batch (unless held)
                self._check_recorded(op, before)
            except KernelError as err:
                conn.rollback_to("op")
                outcomes.append((False, err))
            except Exception as err:  # a bug: contain it to this op
                if held:
                    raise
                conn.rollback_to("op")
                log.exception("op_failed", error=repr(err))
                outcomes.append((False, KernelError(Reason.INTERNAL, "internal error")))
            else:
                if isinstance(result, Failed):
                    outcomes.append((False, result.error))
                else:
                    outcomes.append((True, result))
            conn.release("op")
        return outcomes

    # Held batches. Where the store holds writes back (PostgreSQL: server/storage/
    # postgres.py "Round trips"), sending them at the end of every op costs a round trip
    # per op, for the rare op whose writes are refused. A batch of ops that may run twice
    # (`op.rerunnable`: their only effects are on the store, see server/kernel/commands.py)
    # runs with every write held back to the end of the batch instead, and they go with
    # its COMMIT (Store.tx_commit_held: on PostgreSQL one round trip for the whole batch).
    # If any is refused (a request id seen before, a bug), the whole transaction is rolled
    # back - nothing of it was applied or answered - and the batch runs again op by op,
    # where each refusal fails only its op.

    def _may_hold(self, batch: list) -> bool:
        return self._conn.holds_writes and all(getattr(op, "rerunnable", False) for op, _f, _l in batch)

    def _run_held(self, batch: list) -> list[tuple[bool, Any]] | None:
        """The batch's outcomes, its writes still held; None if one was refused while the
        ops ran (rolled back: run the batch again op by op)."""
        conn = self._conn
        conn.tx_begin()
        try:
            conn.hold_writes(True)
            try:
                return self._run_ops(batch, held=True)
            finally:
                conn.hold_writes(False)
        except Exception as err:
            if conn.connection_lost(err):
                raise
            self._refused(len(batch), err)
            return None

    def _commit_held(self, ops: int) -> bool:
        """COMMIT a held batch with its writes (Store.tx_commit_held); False if they were
        refused, and nothing was committed (rolled back: run the batch again op by op)."""
        conn = self._conn
        try:
            conn.tx_commit_held()
        except Exception as err:
            if conn.connection_lost(err):
                raise  # COMMIT may have run: the outcome is unknown
            self._refused(ops, err)
            return False
        self.held_batches += 1
        return True

    def _refused(self, ops: int, err: Exception) -> None:
        log.info("held_batch_refused", ops=ops, error=repr(err))
        self.held_refused += 1
        try:
            self._conn.tx_rollback()
        except Exception:
            pass

    def _answer(self, batch: list, outcomes: list, started: float) -> None:
        self.batches += 1
        self.ops += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for (op, future, loop), outcome in zip(batch, outcomes):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._deliver, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _deliver(self, items: list) -> None:
        for future, (ok, value) in items:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        for callback in self._commit_listeners:
            callback()
