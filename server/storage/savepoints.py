"""Kernel savepoints over the database's own, for both backends (sqlite.py, postgres.py).

The kernel nests savepoints freely: an operation, its idempotency record, its work, each
invocation inside it (four deep for one transfer), and most of them are released without
a rollback. A savepoint costs a statement to open and one to release (on PostgreSQL they
travel in a query string, but PostgreSQL still runs each, and a write under four of them
is a write in four nested subtransactions). So:

- A savepoint opened when nothing changed since the innermost savepoint the database has
  is only a mark here, an alias of that one: rolling back to either undoes the same
  changes. Only a savepoint with changes before it is created in the database, under a
  name of its own among those open (`s1`, `s2`, ... by depth: kernel names repeat when
  calls nest).
- Releasing an alias does nothing; releasing a real one releases it (and what it holds).
- A rollback to a mark with nothing changed since, and no real savepoint opened after it,
  does nothing at all.

"Changed" is the backend's count of changed rows (Store.changes), which only grows; a
statement that failed counts as a change too (PostgreSQL must then be rolled back even if
it changed nothing, SQLite loses nothing by it). The outermost savepoint of a transaction is
always real, so a savepoint outside a transaction still begins one, and its release still
commits it, as SQLite's own do. tests/test_pg_writer_view.py runs random programs of
savepoints, rollbacks and writes on both backends and compares every answer.
"""

from __future__ import annotations

from typing import NamedTuple


class Mark(NamedTuple):
    name: str  # the kernel's name
    sql: str  # the database savepoint it stands for
    real: bool  # it is that savepoint (else an alias of it)
    undo: int  # for the backend: where its undo log stood (postgres.py), else 0


class Savepoints:
    """The open kernel savepoints of one connection's transaction. Each method says what
    to send: an SQL statement, or None for nothing."""

    def __init__(self) -> None:
        self.marks: list[Mark] = []
        self._since: dict[str, int] = {}  # open real savepoint -> the change count it holds from

    def reset(self) -> None:
        self.marks = []
        self._since = {}

    def open(self, name: str, changes: int, undo: int = 0) -> str | None:
        marks = self.marks
        if marks and self._since[marks[-1].sql] == changes:
            marks.append(Mark(name, marks[-1].sql, False, undo))
            return None
        # Named by depth among the open real savepoints (s1 is the outermost): a name is
        # never that of another open one, and the statements repeat, so SQLite's statement
        # cache has them prepared (a fresh name cost ~3.5 us more per SAVEPOINT + RELEASE).
        sql = f"s{len(self._since) + 1}"
        marks.append(Mark(name, sql, True, undo))
        self._since[sql] = changes
        return f"SAVEPOINT {sql}"

    def find(self, name: str) -> int:
        for i in range(len(self.marks) - 1, -1, -1):
            if self.marks[i].name == name:
                return i
        raise RuntimeError(f"no savepoint {name!r} is open")

    def rollback_to(self, name: str, changes: int) -> tuple[Mark, str | None]:
        """The mark rolled back to, and the statement (None: nothing changed since it)."""
        i = self.find(name)
        mark = self.marks[i]
        later = self.marks[i + 1:]
        del self.marks[i + 1:]
        for m in later:
            if m.real:
                del self._since[m.sql]
        # (No change since the mark also means no real savepoint was opened after it:
        # one is opened only after a change.)
        if self._since[mark.sql] == changes:
            return mark, None
        self._since[mark.sql] = changes  # the count moves on; the state is back
        return mark, f"ROLLBACK TO SAVEPOINT {mark.sql}"

    def release(self, name: str) -> str | None:
        i = self.find(name)
        released = self.marks[i:]
        del self.marks[i:]
        real = [m for m in released if m.real]
        for m in real:
            del self._since[m.sql]
        return f"RELEASE SAVEPOINT {real[0].sql}" if real else None
