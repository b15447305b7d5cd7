"""The storage seam: the one interface between the world's rules and the database.

Everything the kernel, the genesis artifacts, the LLM gateway, the oracle and the RPC layer
store or fetch goes through a `Store`. A store is one database connection: the writer's
(inside the executor's transaction, see executor.py) or a reader's (committed state only).
Code outside server/storage receives a store where it used to receive a connection (the
parameter is still often called `conn`) and calls only the methods below.

Rules of the seam (tests/test_storage_seam.py enforces the first one):
- SQL, SQL dialects and the table layout live only in server/storage (this interface and
  its implementations: sqlite.py, the default, and later a PostgreSQL one). No module
  outside server/storage writes SQL or calls `execute`.
- Storage stores and fetches; it decides nothing. Every check of the world's rules (who may
  do what, balances never negative, quotas, idempotency semantics, which error a caller
  gets) stays in the kernel and genesis code. A method may refuse only what the schema
  itself forbids (e.g. a CHECK constraint), and says so by returning a value (None/False)
  or by the backend's integrity error, never by a KernelError. One refusal has a type of
  its own, because the kernel relies on it: `RequestSeen` (idem_put).
- Methods are small, typed and named for what they do to the world's state, not for SQL
  (`balance_debit`, not `update_balances`). Values in and out are plain Python values,
  dicts and the kernel's `Artifact`; JSON columns are encoded and decoded here.
- One method may do several statements (or one smarter statement) when that saves round
  trips, as long as its effect is the one documented: e.g. `balance_debit` debits only when
  the balance suffices, in one statement.
- Transactions: only the executor (and migrations, and tools before the writer starts)
  begins and commits. Kernel code nests with `savepoint` / `rollback_to` / `release`.
- Readers never write. Reads that must agree with each other while the writer commits
  (the ledger's audit, its totals) run inside `one_snapshot(store)`: one committed state.

An implementation must give every method below the same meaning; the test suite runs on
each backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.kernel.artifacts import Artifact


class RequestSeen(Exception):
    """idem_put: this (principal, request id) is remembered already; nothing was stored."""


class Store:
    """The storage interface. Backends subclass it and implement every method."""

    # -- transactions (executor, migrations, tools) ---------------------------------------

    def tx_begin(self) -> None:
        """Begin a write transaction (the writer's lock is taken here)."""
        raise NotImplementedError

    def tx_commit(self) -> None:
        """Commit durably: when this returns the transaction survives a crash."""
        raise NotImplementedError

    def tx_rollback(self) -> None:
        raise NotImplementedError

    def savepoint(self, name: str) -> None:
        raise NotImplementedError

    def rollback_to(self, name: str) -> None:
        """Undo everything since `savepoint(name)`; the savepoint stays open."""
        raise NotImplementedError

    def release(self, name: str) -> None:
        raise NotImplementedError

    def follow(self, writer: "Store") -> None:
        """Make this reader a follower of `writer`, the same world's writer in this process
        (the server's): where the backend can, it answers from what the writer published
        at its last COMMIT instead of asking the database (committed state either way).
        A backend whose reads cost no round trip does nothing."""
        raise NotImplementedError

    # Whether this store holds writes back (flush() may send something): the executor
    # then runs a batch of ops that may run twice with `hold_writes(True)` (executor.py
    # "Held batches").
    holds_writes = False

    def hold_writes(self, on: bool) -> None:
        """While on, flush() sends nothing (nor does idem_put): every held-back write waits
        for the flush() after `hold_writes(False)` or for COMMIT, and a refused one - a
        RequestSeen included - is raised there, for the whole batch. A backend that holds
        nothing back (holds_writes False) does nothing."""
        raise NotImplementedError

    def tx_commit_held(self) -> None:
        """COMMIT a transaction run with hold_writes, its held writes with it (PostgreSQL:
        in one round trip, the rows they leave checked in the same string). If it raises,
        nothing was committed - unless connection_lost(err), when the outcome is unknown."""
        raise NotImplementedError

    def flush(self) -> None:
        """Send the writes this store has held back to save round trips (postgres.py);
        raises what they raise. The executor calls it at the end of every operation,
        inside the operation's savepoint. A backend that holds nothing back does nothing."""
        raise NotImplementedError

    def changes(self) -> int:
        """Rows inserted, updated or deleted on this connection so far (a counter: callers
        take differences). Exact replay compares an operation's count with its record."""
        raise NotImplementedError

    def read_begin(self) -> None:
        """A reader's snapshot: every read until read_end() sees one committed state."""
        raise NotImplementedError

    def read_end(self) -> None:
        raise NotImplementedError

    def in_transaction_now(self) -> bool:
        """A transaction (or a read_begin snapshot) is open on this connection."""
        raise NotImplementedError

    # -- agents the operator stopped (Admin.StopAgent / StartAgent) --------------------

    def stopped_all(self) -> set[str]:
        raise NotImplementedError

    def stopped_add(self, agent_id: str, at: float, memo: str) -> bool:
        """True when the agent was not stopped before."""
        raise NotImplementedError

    def stopped_remove(self, agent_id: str) -> bool:
        """True when the agent was stopped."""
        raise NotImplementedError

    # -- the operation log (exact replay: oplog.py, server/kernel/commands.py) -----------

    def oplog_append(self, command: str, inputs: str, record: str) -> None:
        """Append one operation (the next seq) inside the current savepoint."""
        raise NotImplementedError

    def oplog_insert(self, seq: int, command: str, inputs: str, record: str) -> None:
        """Insert an operation under a given seq (a replayed world keeps the recorded numbers)."""
        raise NotImplementedError

    def oplog_rows(self) -> Iterable[tuple[int, str, str, str]]:
        """(seq, command, inputs, record) in seq order."""
        raise NotImplementedError

    def has_oplog(self) -> bool:
        raise NotImplementedError

    def artifacts_total(self) -> int:
        """Artifacts ever stored, tombstones included (0: an empty world)."""
        raise NotImplementedError

    def state_tables(self) -> list[str]:
        """The names of the tables that hold the world's state (not the oplog, not the
        schema's own bookkeeping), sorted."""
        raise NotImplementedError

    def table_rows(self, table: str) -> tuple[list[str], Iterable[tuple]]:
        """(column names, every row as a tuple in a canonical order: all columns)."""
        raise NotImplementedError
    # -- the writer lease (several servers on one database; server/standby.py) -----------
    # Only backends a second server can share implement these (PostgreSQL); SQLite's
    # single server is enforced by the data directory's lock file.

    supports_lease = False

    def lease_try(self) -> bool:
        """Try to take the world's writer lock for this store's session, without waiting.
        True: this session holds it (until the session ends, however it ends)."""
        raise NotImplementedError

    def lease_publish(self, address: str, pid: int, host: str, at: float) -> None:
        """As the lock's holder: record the address clients should use (autocommit)."""
        raise NotImplementedError

    def lease_holder(self) -> dict | None:
        """{"address", "pid", "host", "since"} of the server holding the lock now, or None
        when nobody holds it (or it never said where it is)."""
        raise NotImplementedError

    def ping(self) -> None:
        """One round trip to the database: raises if the session is gone."""
        raise NotImplementedError

    def connection_lost(self, err: BaseException) -> bool:
        """Whether `err` (raised by this store) means the database session is gone, so
        that whatever it held (its transaction, the writer lock) is gone with it."""
        return False

    # -- artifacts ---------------------------------------------------------------------

    def artifact_get(self, artifact_id: str) -> "Artifact | None":
        """The artifact (also a tombstone), or None."""
        raise NotImplementedError

    def artifact_insert(self, art: "Artifact") -> None:
        raise NotImplementedError

    def artifact_save(self, art: "Artifact") -> None:
        """Write back every mutable field of an existing artifact."""
        raise NotImplementedError

    def artifacts_page(self, *, after: str, limit: int, created_by: str = "", has_standing: bool | None = None,
                       can_execute: bool | None = None, include_deleted: bool = False,
                       metadata_equals: dict | None = None, query: str = "") -> "list[Artifact]":
        """Up to `limit` artifacts with id > after, in id order, matching every filter.
        metadata_equals: each key's JSON value equals the given one (a JSON true/false only
        equals a boolean). query: case-insensitive substring of id, metadata or interface."""
        raise NotImplementedError

    def artifact_counts(self) -> tuple[int, int, int]:
        """(live artifacts, tombstones, live agents not genesis)."""
        raise NotImplementedError

    def agents_page(self, after: str, limit: int) -> list[tuple[str, bool]]:
        """(id, deleted) of agents (standing and code, not genesis_*) with id > after, in id order."""
        raise NotImplementedError

    def live_agent_ids(self) -> list[str]:
        """Ids of live agents (standing and code, not deleted, not genesis_*), in id order."""
        raise NotImplementedError

    def agents_with_compute_rate(self, not_created_by: str) -> list[str]:
        """Live agents, not genesis_* and not created by `not_created_by`, whose compute
        rate is > 0, in id order."""
        raise NotImplementedError

    def artifacts_created_by_count(self, created_by: str) -> int:
        """How many artifacts (also tombstones) `created_by` created."""
        raise NotImplementedError

    def artifacts_state_due(self, created_by: str, status: str, due_before: float) -> list[str]:
        """Live artifacts of `created_by` whose state has `status` and `due_at` <= due_before."""
        raise NotImplementedError

    def artifacts_state_involving(self, created_by: str, principal_id: str) -> list[str]:
        """Live artifacts of `created_by` where `principal_id` is state.lender, state.borrower,
        state.controller or the seller of its escrow listing; oldest first (created_at, id)."""
        raise NotImplementedError

    def artifact_same_content_before(self, art: "Artifact") -> str | None:
        """The id of the oldest other live artifact with the same non-empty content,
        created before `art` (ties: lower id)."""
        raise NotImplementedError

    # -- scrip: balances and the journal -------------------------------------------------

    def balance_open(self, principal_id: str) -> None:
        """An account with 0 scrip, unless it exists."""
        raise NotImplementedError

    def balance_get(self, principal_id: str) -> int | None:
        raise NotImplementedError

    def balances_of(self, principal_ids: Iterable[str]) -> dict[str, int]:
        raise NotImplementedError

    def balance_credit(self, principal_id: str, amount: int) -> bool:
        """Add `amount`; False if there is no such account."""
        raise NotImplementedError

    def balance_debit(self, principal_id: str, amount: int) -> int | None:
        """Take `amount` if the balance is at least that much: the new balance, else None
        (and nothing changed: no account or not enough)."""
        raise NotImplementedError

    def ledger_entry(self, at: float, debit: str, credit: str, amount: int, kind: str, memo: str) -> int:
        """Append a journal entry; returns its seq."""
        raise NotImplementedError

    def ledger_totals_add(self, *, minted: int = 0, burned: int = 0) -> None:
        raise NotImplementedError

    def ledger_issued(self) -> tuple[int, int]:
        """(minted, burned): the running totals, one row."""
        raise NotImplementedError

    def ledger_history(self, principal_id: str, after: int, limit: int) -> list[dict]:
        """Entries debiting or crediting `principal_id` with seq > after: dicts of seq, at,
        debit, credit, amount, kind, memo."""
        raise NotImplementedError

    def ledger_totals(self) -> dict:
        """minted, burned, total_balances, entries."""
        raise NotImplementedError

    def ledger_audit(self) -> dict:
        """For the invariant check: negative (count of balances < 0), sums (kind -> sum of
        amounts), entries (list of (debit, credit, amount)), balances (principal -> scrip)."""
        raise NotImplementedError

    # -- resources: flow (token buckets) and stock --------------------------------------

    def flow_create(self, principal_id: str, resource: str, rate: float, capacity: float, balance: float,
                    updated_at: float) -> None:
        raise NotImplementedError

    def flow_get(self, principal_id: str, resource: str) -> tuple[float, float, float, float] | None:
        """(rate, capacity, balance, updated_at) or None."""
        raise NotImplementedError

    def flow_put(self, principal_id: str, resource: str, rate: float, capacity: float, balance: float,
                 updated_at: float) -> None:
        raise NotImplementedError

    def flow_all(self, principal_id: str) -> list[tuple[str, float, float, float, float]]:
        """(resource, rate, capacity, balance, updated_at) by resource name."""
        raise NotImplementedError

    def principal_state(self, principal_id: str) -> tuple[list, list, int | None, int]:
        """What GetState shows, in one read: (flow_all, stock_all, balance_get, events_last_seq)
        of one principal. One statement on PostgreSQL (one round trip instead of four)."""
        raise NotImplementedError

    def stock_create(self, principal_id: str, resource: str, quota: int, *, if_missing: bool = False) -> None:
        """A stock row with `quota` and used 0 (if_missing: keep an existing row)."""
        raise NotImplementedError

    def stock_get(self, principal_id: str, resource: str) -> tuple[int, int] | None:
        """(quota, used) or None."""
        raise NotImplementedError

    def stock_all(self, principal_id: str) -> list[tuple[str, int, int]]:
        """(resource, quota, used) by resource name."""
        raise NotImplementedError

    def resources_of(self, principal_ids: Iterable[str]) -> tuple[dict[str, list], dict[str, list]]:
        """flow_all and stock_all of many principals at once (listings): two dicts by
        principal id; a principal without rows is absent."""
        raise NotImplementedError

    def stock_set_used(self, principal_id: str, resource: str, used: int) -> None:
        raise NotImplementedError

    def stock_add(self, principal_id: str, resource: str, *, quota: int = 0, used: int = 0) -> None:
        """Add the (possibly negative) deltas to quota and used."""
        raise NotImplementedError

    # -- events --------------------------------------------------------------------------

    def event_append(self, at: float, type_: str, principal_id: str, artifact_id: str, related: list[str],
                     data: dict) -> int:
        """Append an event; returns its seq (dense, in commit order)."""
        raise NotImplementedError

    def events_last_seq(self) -> int:
        raise NotImplementedError

    def events_page(self, after: int, limit: int,
                    keep_type: Callable[[str], bool] | None = None) -> tuple[list[dict], int, int]:
        """Examine up to `limit` events with seq > after, oldest first; returns (the
        examined events whose type passes keep_type, as dicts of seq, at, type,
        principal_id, artifact_id, related_ids, data; the last seq examined, or `after`;
        how many were examined)."""
        raise NotImplementedError

    def event_payers(self, artifact_id: str, type_: str, since: float, memo: str, memo_prefix: str) -> set[str]:
        """principal_id of events of `type_` about `artifact_id` at or after `since` whose
        data.memo equals `memo` or starts with `memo_prefix`."""
        raise NotImplementedError

    def event_ok_counts(self, artifact_id: str, type_: str, since: float) -> tuple[int, int]:
        """(events with data.ok true, with data.ok false) of `type_` about `artifact_id` at or after `since`."""
        raise NotImplementedError

    # -- escrow ------------------------------------------------------------------------

    def escrow_get(self, artifact_id: str) -> tuple[str, int, float] | None:
        """(seller, price, listed_at), or None."""
        raise NotImplementedError

    def escrow_insert(self, artifact_id: str, seller: str, price: int, listed_at: float) -> None:
        raise NotImplementedError

    def escrow_delete(self, artifact_id: str) -> None:
        raise NotImplementedError

    def escrow_all(self) -> list[dict]:
        """artifact_id, seller, price, listed_at; by listed_at, artifact_id."""
        raise NotImplementedError

    # -- idempotency -------------------------------------------------------------------

    def idem_get(self, principal_id: str, request_id: str) -> tuple[str, bool, Any] | None:
        """(method, ok, outcome as decoded JSON) of a remembered call, or None."""
        raise NotImplementedError

    def idem_exists(self, principal_id: str, request_id: str) -> bool:
        raise NotImplementedError

    def idem_put(self, principal_id: str, request_id: str, method: str, ok: bool, outcome: Any, at: float) -> None:
        """Remember an outcome. A (principal, request id) remembered already raises
        RequestSeen at once (a backend that holds writes back sends them here); the row
        stays as it was and changes() does not count the refused insert."""
        raise NotImplementedError

    def idem_purge(self, before: float) -> int:
        """Forget outcomes recorded before `before`; returns how many."""
        raise NotImplementedError

    # -- credentials and per-agent RPC limits ------------------------------------------

    def credential_add(self, token_hash: str, principal_id: str, created_at: float) -> None:
        raise NotImplementedError

    def credentials_all(self) -> dict[str, str]:
        """token hash -> principal id."""
        raise NotImplementedError

    def rpc_limits_set(self, principal_id: str, rate: float | None, burst: float | None) -> None:
        raise NotImplementedError

    def rpc_limits_all(self) -> dict[str, tuple[float | None, float | None]]:
        raise NotImplementedError

    # -- LLM reservations --------------------------------------------------------------

    def reservation_add(self, principal_id: str, amount: int, tokens: int, compute: float, model: str,
                        request_id: str, created_at: float) -> int:
        raise NotImplementedError

    def reservation_take(self, reservation_id: int) -> dict | None:
        """Remove a reservation and return it (id, principal_id, amount, tokens, compute,
        model, request_id, created_at), or None."""
        raise NotImplementedError

    def reservations_take_all(self) -> list[dict]:
        """Remove every reservation and return them, in id order."""
        raise NotImplementedError

    def reservations_held(self, principal_id: str) -> tuple[int, int]:
        """(sum of amounts, count) of a principal's reservations."""
        raise NotImplementedError

    def reservation_exists(self, principal_id: str, request_id: str) -> bool:
        raise NotImplementedError

    # -- the oracle (genesis_oracle) ---------------------------------------------------

    def oracle_init(self, start_at: float) -> None:
        """The oracle's state row, unless it exists (start_at, carry 0, bid_seq 0)."""
        raise NotImplementedError

    def oracle_state(self) -> tuple[float, int, int]:
        """(start_at, carry, bid_seq)."""
        raise NotImplementedError

    def oracle_set(self, *, carry: int | None = None, bid_seq: int | None = None) -> None:
        raise NotImplementedError

    def oracle_last_round(self) -> tuple[int, float | None]:
        """(number, at) of the last resolved round, or (0, None)."""
        raise NotImplementedError

    def oracle_round_result(self, number: int) -> dict | None:
        raise NotImplementedError

    def oracle_round_add(self, number: int, at: float, resolved_at: float, result: dict) -> None:
        raise NotImplementedError

    def oracle_bid_get(self, artifact_id: str) -> dict | None:
        """artifact_id, bidder, amount, placed_at, seq; or None."""
        raise NotImplementedError

    def oracle_bid_put(self, artifact_id: str, bidder: str, amount: int, placed_at: float, seq: int) -> None:
        """Insert or replace the bid on `artifact_id`."""
        raise NotImplementedError

    def oracle_bid_delete(self, artifact_id: str) -> None:
        raise NotImplementedError

    def oracle_bids(self, *, bidder: str | None = None, placed_until: float | None = None) -> list[dict]:
        """Bids (as oracle_bid_get) by seq, of `bidder` / placed at or before `placed_until`."""
        raise NotImplementedError

    def oracle_bids_total(self) -> tuple[int, int]:
        """(open bids, scrip they hold)."""
        raise NotImplementedError

    # -- decision traces ---------------------------------------------------------------

    def decision_add(self, agent_id: str, at: float, step: int, observed: str, action: str, outcome: str,
                     llm_request_ids: list[str], truncated: bool) -> int:
        """observed/action/outcome are JSON text (bounded by the caller); returns the seq."""
        raise NotImplementedError

    def decisions_page(self, agent_id: str, after: int, limit: int) -> list[dict]:
        """seq, at, step, observed, action, outcome (decoded), llm_request_ids, truncated."""
        raise NotImplementedError

    def llm_exchange_put(self, agent_id: str, request_id: str, at: float, model: str, prompt: Any, answer: str,
                         truncated: bool) -> None:
        """Insert or replace; `prompt` is stored as JSON."""
        raise NotImplementedError

    def llm_exchange_get(self, agent_id: str, request_id: str) -> dict | None:
        """request_id, model, prompt (decoded), answer, truncated, at; or None."""
        raise NotImplementedError

    # -- whole-database views (tests, tools) ------------------------------------------

    def schema_version(self) -> int:
        """The schema version the database is at (0: empty)."""
        raise NotImplementedError

    def dump(self) -> dict:
        """Every table, every row, in a fixed order, plus the schema: {"schema_version": n,
        "schema": [...], TABLE: [row tuples sorted by all columns], ...}. Two dumps of one
        backend are equal exactly when the stored state is (tests/test_durability.py compares
        the world before and after a crash this way, on either backend)."""
        raise NotImplementedError


@contextlib.contextmanager
def one_snapshot(store: Store) -> Iterator[None]:
    """The reads inside see one committed state (read_begin .. read_end), for reads that
    must agree with each other while the writer commits (the ledger's audit: its journal
    and its balances read apart could straddle a transfer). Inside an open transaction it
    adds nothing: there the reads already agree."""
    if store.in_transaction_now():
        yield
        return
    store.read_begin()
    try:
        yield
    finally:
        store.read_end()
