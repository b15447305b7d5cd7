"""`ecology replay DATA_DIR --into NEW_DIR [--until SEQ]`: rebuild a world from its oplog.

The world's state changes only by recorded commands (server/kernel/commands.py). Replay
creates an empty world in NEW_DIR and runs every command of DATA_DIR's oplog again, in
commit order, through the same kernel code, with the recorded clock readings and outside
answers (server/kernel/tape.py) - no clock, no sandbox, no LLM, no network. At each `start`
command (a server start) it builds a fresh kernel from the configuration recorded there, as
the restart did. Each command must end as recorded (outcome, rows changed, every reading
used); the first that does not is a divergence, reported with its oplog seq.

Then it compares the two states: a digest (sha256) of a canonical dump of every table but
the oplog, table by table, rows in order of all their columns. Everything is compared:
artifacts, balances, ledger entries, totals, flow and stock resources (with the recorded
times, compute buckets come out equal), events, escrow, oracle tables, reservations,
idempotency outcomes, credentials (token hashes), decisions, LLM exchanges. Not state and
not compared: the RPC rate-limit buckets and the world's LLM tokens-per-minute bucket
(in memory only; they restart with the server).

`--until SEQ` stops as soon as the world's events reach SEQ (events.seq): after the
command that wrote event SEQ. A command writes its events atomically; if one would go
past SEQ (it writes SEQ-1..SEQ+1, say), replay stops before it and says so. The digest
printed is that of the world at that moment.

The replayed directory is a data directory like any other (`ecology status`, `ecology
serve`, the dashboard); its oplog is the source's up to where replay stopped. Tokens in it
are duds: only token hashes are recorded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.config import Config
from server.kernel.commands import World, replay_one
from server.kernel.tape import Divergence
from server.storage import db
from server.storage.store import Store

COMMIT_EVERY = 500


class ReplayError(Exception):
    """A replay that cannot start or run (one line for the operator)."""


class ReplaySandbox:
    """Stands in for the sandbox during replay: the kernel needs its version keys; it never
    runs code (every run of code and every check is a recorded answer)."""

    isolation = "replay"

    @staticmethod
    def key(artifact_id: str, source: str, methods: list[str]) -> tuple[str, str]:
        from server.sandbox import Sandbox

        return Sandbox.key(artifact_id, source, methods)

    def _refuse(self, *args, **kwargs):
        raise Divergence("the kernel tried to run code in the sandbox during replay")

    call = check = _refuse

    def close(self) -> None:
        pass


class _ReplayScorer:
    """The mint's scorer during replay: an async (LLM) scorer's scores are inputs of the
    resolution; an offline scorer runs inside it as it did."""

    name = "replay"
    is_async = True

    def score(self, ev):
        raise Divergence("the LLM scorer was asked for a score that was not recorded")


def make_world(config: Config, last_time: float) -> World:
    from server.kernel.kernel import Kernel
    from server.llm.gateway import LlmGateway

    # Outside a command the replayed kernel's clock stands at the last recorded reading.
    box: list[World] = []
    kernel = Kernel(config, clock=lambda: box[0].last_time if box else last_time, sandbox=ReplaySandbox())
    if config.oracle["scorer"] == "llm":
        kernel.genesis["genesis_oracle"].scorer = _ReplayScorer()
    world = World(kernel)
    world.llm = LlmGateway(kernel, None, None)
    world.last_time = last_time
    box.append(world)
    return world


# -- digest ---------------------------------------------------------------------------------------

def _canonical(value) -> str:
    if isinstance(value, float):
        return "f" + repr(value)
    if isinstance(value, bytes):
        return "b" + value.hex()
    if value is None:
        return "n"
    if isinstance(value, int):
        return "i" + str(value)
    return "s" + json.dumps(value, ensure_ascii=False)


def _row_text(row) -> str:
    return "\x1f".join(_canonical(v) for v in row)


def digest(conn: Store) -> tuple[str, dict[str, tuple[str, int]]]:
    """(overall sha256, {table: (sha256, rows)}) over the world's state."""
    overall = hashlib.sha256()
    tables: dict[str, tuple[str, int]] = {}
    for table in conn.state_tables():
        h = hashlib.sha256()
        cols, cur = conn.table_rows(table)
        h.update(("\x1f".join(cols) + "\n").encode())
        n = 0
        for row in cur:
            h.update((_row_text(row) + "\n").encode())
            n += 1
        tables[table] = (h.hexdigest(), n)
        overall.update(f"{table}:{tables[table][0]}\n".encode())
    return overall.hexdigest(), tables


def first_difference(a: Store, b: Store, tables_a: dict, tables_b: dict) -> str:
    """Names the first table (and row) where two states differ."""
    for table in sorted(set(tables_a) | set(tables_b)):
        if tables_a.get(table) == tables_b.get(table):
            continue
        if table not in tables_a or table not in tables_b:
            return f"table {table} exists in only one of them"
        cols, cur_a = a.table_rows(table)
        _, cur_b = b.table_rows(table)
        i = 0
        for row_a, row_b in zip(cur_a, cur_b):
            i += 1
            if row_a != row_b:
                diffs = [f"{c}: {x!r} vs {y!r}" for c, x, y in zip(cols, row_a, row_b) if x != y]
                return f"table {table}, row {i} ({cols[0]}={row_a[0]!r} vs {row_b[0]!r}): " + "; ".join(diffs)[:600]
        n_a, n_b = tables_a[table][1], tables_b[table][1]
        return f"table {table}: {n_a} rows in the recorded world, {n_b} in the replayed one"
    return "no difference"


# -- replay ---------------------------------------------------------------------------------------

@dataclass
class Result:
    ops: int = 0
    stopped_at_event: int | None = None
    note: str = ""
    divergence: str = ""
    seconds: float = 0.0
    source_digest: str = ""
    replay_digest: str = ""
    difference: str = ""
    tables: dict = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not self.divergence and self.source_digest == self.replay_digest


def _open_source(data_dir: Path, database: str | None = None) -> Store:
    if database:  # a world on PostgreSQL (`ecology serve --database`): read it there
        try:
            conn = db.open_store(database, readonly=True)
        except Exception as e:
            raise ReplayError(f"cannot open {database}: {e}") from None
        if not conn.has_oplog():
            raise ReplayError(f"{database} has no operation log; it cannot be replayed")
        return conn
    path = data_dir / db.DB_FILE
    if not path.exists():
        raise ReplayError(f"{data_dir} is not a world's data directory (no {db.DB_FILE})")
    # Read-write (never written): a world whose server was killed has a WAL to read.
    conn = db.open_replay_source(path)
    if not conn.has_oplog():
        raise ReplayError(f"{data_dir} has no operation log (its schema predates exact replay); it cannot be replayed")
    return conn


def _prepare_target(into: Path) -> Store:
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ReplayError(f"--into {into} is not an empty directory; replay writes a new world there")
    into.mkdir(parents=True, exist_ok=True)
    return db.open_replay_target(into / db.DB_FILE)


def replay(data_dir: str | Path, into: str | Path, until: int | None = None, progress=None,
           database: str | None = None) -> Result:
    started = time.monotonic()
    data_dir, into = Path(data_dir), Path(into)
    if until is not None and until < 1:
        raise ReplayError("--until must be an event number (events.seq), 1 or more")
    src = _open_source(data_dir, database)
    dst = _prepare_target(into)
    res = Result()
    # One read transaction: the oplog and the state it is compared with are one snapshot.
    src.read_begin()
    try:
        world: World | None = None
        dst.tx_begin()
        pending = 0
        for seq, name, inputs, record in src.oplog_rows():
            if name == "start":
                first = world is None
                config = json.loads(inputs)
                if first and not config.get("fresh", False):
                    raise ReplayError(f"{data_dir}: its oplog starts on a world created before the oplog existed "
                                      "(an older schema); it cannot be replayed from its initial state")
                plans = world.plans if world is not None else {}
                world = make_world(Config(data=config["config"]), getattr(world, "last_time", 0.0))
                world.plans = plans
            elif world is None:
                raise ReplayError(f"oplog seq {seq}: {name} before the first start; the oplog is damaged")
            dst.savepoint("op")
            try:
                replay_one(world, dst, seq, name, inputs, record)
            except Divergence as d:
                dst.rollback_to("op")
                dst.release("op")
                res.divergence = f"oplog seq {seq} ({name}): {d}"
                break
            if until is not None:
                last = dst.events_last_seq()
                if last > until:
                    dst.rollback_to("op")
                    dst.release("op")
                    res.stopped_at_event = dst.events_last_seq()
                    res.note = (f"oplog seq {seq} ({name}) writes events {res.stopped_at_event + 1}..{last} "
                                f"together; stopped before it, at event {res.stopped_at_event}")
                    break
            dst.oplog_insert(seq, name, inputs, record)
            dst.release("op")
            res.ops += 1
            pending += 1
            if pending >= COMMIT_EVERY:
                dst.tx_commit()
                dst.tx_begin()
                pending = 0
                if progress is not None:
                    progress(res.ops)
            if until is not None and dst.events_last_seq() == until:
                res.stopped_at_event = until
                break
        dst.tx_commit()
        if until is not None and res.stopped_at_event is None and not res.divergence:
            res.stopped_at_event = dst.events_last_seq()
            res.note = f"the world has no event {until}; replayed to its end (event {res.stopped_at_event})"
        res.replay_digest, replay_tables = digest(dst)
        if until is None:
            res.source_digest, source_tables = digest(src)
            res.tables = {t: (source_tables.get(t), replay_tables.get(t)) for t in set(source_tables) | set(replay_tables)}
            if res.source_digest != res.replay_digest:
                res.difference = first_difference(src, dst, source_tables, replay_tables)
    finally:
        src.read_end()
        src.close()
        dst.close()
    res.seconds = time.monotonic() - started
    return res
