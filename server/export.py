"""`ecology export`: the world's tables as Parquet or CSV files, for analysis (DuckDB,
pandas, polars, R, a spreadsheet).

    ecology export --data-dir D --format parquet|csv --out DIR [--force]
    ecology export --database postgresql://... --format parquet|csv --out DIR [--force]

writes one file per table, DIR/<table>.parquet or DIR/<table>.csv, and DIR/manifest.json
(the columns with their types, row counts, the export time, the schema version).

Decisions, in one place:

* Where the world is: `--database URL` (a world that `ecology serve --database URL` keeps
  in PostgreSQL; the same flag as `serve` and `replay`; --data-dir is then not read),
  else the SQLite file in --data-dir.
* Read-only and consistent. SQLite: the database is opened with `db.connect(readonly=True)`
  and every table is read inside ONE read transaction; PostgreSQL: ONE `REPEATABLE READ
  READ ONLY` transaction. Either way the files are a single snapshot of the world even
  while a server keeps writing to it (SQLite WAL: readers never block the writer, nor it
  them). It works after a SIGKILL too: the committed transactions are in
  the WAL file, which the reader sees. (On a cleanly stopped world SQLite still opens the
  WAL index, so world.sqlite3-wal / -shm may appear beside the database; they are empty
  and the next server start removes them. The database file itself is never written.)
* `--force` overwrites the tables' files and manifest.json in a non-empty --out; other files
  there are left alone.
* All reading is in server/storage/export_source.py (behind the storage seam):
  `SqliteSource` and `PostgresSource` have the same methods, which yield the same plain
  rows per table; everything else (the derived `agents` table, types, writing) only
  consumes those iterators, so the files do not depend on the backend.
* Column types are chosen, not inferred: integers (seq, amount, scrip, version, bytes,
  micro-dollars) stay 64-bit integers; flags are booleans; JSON columns (event data,
  artifact interface/metadata/state, decision fields, prompts) are JSON text (in Parquet
  with the JSON logical type, which DuckDB reads as JSON: `data->>'amount'`); times are
  float64 Unix seconds (UTC), the way the server stores them: `to_timestamp(at)` in
  DuckDB, `pd.to_datetime(df.at, unit="s")` in pandas. Unknown values are null.
* CSV: RFC 4180 (pyarrow's writer), a header line, booleans `true`/`false`, nulls empty.
  CSV has no types: manifest.json lists them.
* Big tables are streamed in batches (BATCH rows), never held whole in memory.
* Files are written under temporary names and renamed into place, so a failed export
  never leaves a half-written file under a table's name.

The tables:

  ledger_entries  the double-entry journal, as genesis_ledger.history shows it: seq, at,
                  debit, credit, amount, kind (mint | burn | transfer), memo. The issuance
                  account `genesis_system` is the debit of mints and the credit of burns.
  events          every committed event: seq, at, type, principal_id, artifact_id,
                  related (JSON list of ids), data (JSON object).
  artifacts       every artifact, tombstones included (deleted = true), content included.
  agents          one row per agent ever created (AGENT_COLUMNS below), with its money,
                  resources, debts and activity derived from the other tables.
  decisions       the decision traces: what each agent observed, the action, its outcome,
                  plus action_name and outcome_ok pulled out for grouping.
  llm_exchanges   the exact prompt and raw answer of every genesis_llm call (the
                  decisions' llm_request_ids point here by (agent_id, request_id)).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

FORMATS = ("parquet", "csv")

# Column types by name: i = int64, f = float64 (times: Unix seconds), s = text, b = bool, j = JSON text.
LEDGER_COLUMNS = [("seq", "i"), ("at", "f"), ("debit", "s"), ("credit", "s"), ("amount", "i"), ("kind", "s"),
                  ("memo", "s")]
EVENT_COLUMNS = [("seq", "i"), ("at", "f"), ("type", "s"), ("principal_id", "s"), ("artifact_id", "s"),
                 ("related", "j"), ("data", "j")]
ARTIFACT_COLUMNS = [("id", "s"), ("created_by", "s"), ("billed_to", "s"), ("access_contract_id", "s"),
                    ("kind", "s"), ("has_standing", "b"), ("can_execute", "b"), ("version", "i"),
                    ("size_bytes", "i"), ("created_at", "f"), ("updated_at", "f"), ("deleted", "b"),
                    ("interface", "j"), ("metadata", "j"), ("state", "j"), ("content", "s")]
DECISION_COLUMNS = [("seq", "i"), ("agent_id", "s"), ("at", "f"), ("step", "i"), ("action_name", "s"),
                    ("outcome_ok", "b"), ("observed", "j"), ("action", "j"), ("outcome", "j"),
                    ("llm_request_ids", "j"), ("truncated", "b")]
LLM_COLUMNS = [("agent_id", "s"), ("request_id", "s"), ("at", "f"), ("model", "s"), ("prompt", "j"),
               ("answer", "s"), ("truncated", "b")]
# What an analyst asks of an agent. Money: scrip = scrip_minted + scrip_received - scrip_paid - scrip_burned
# (the ledger, per account). Compute is a token bucket: compute_balance is its level at the export time
# (`as_of` in manifest.json); negative is debt, repaid at compute_rate per second.
AGENT_COLUMNS = [
    ("agent_id", "s"), ("alive", "b"),          # alive: not deleted (a process's state is not recorded)
    ("created_by", "s"), ("created_at", "f"), ("deleted_at", "f"),
    ("scrip", "i"),                               # balance now
    ("endowment", "i"),                           # minted at creation
    ("scrip_minted", "i"),                        # every mint credited: endowment, grants, mint rounds
    ("scrip_received", "i"), ("scrip_paid", "i"),  # transfers in / out (trades, loans, fees...)
    ("scrip_burned", "i"),
    ("transfers_in", "i"), ("transfers_out", "i"),
    ("llm_budget_micro_usd", "i"),                # what remains
    ("llm_spent_micro_usd", "i"),
    ("compute_rate", "f"), ("compute_capacity", "f"), ("compute_balance", "f"),
    ("compute_seconds_until_usable", "f"),        # > 0 while in compute debt
    ("disk_quota_bytes", "i"), ("disk_used_bytes", "i"),
    ("rpc_rate", "f"), ("rpc_burst", "f"),        # per-agent overrides; null = the configured default
    ("artifacts_created", "i"),                   # live artifacts it created (itself excluded)
    ("debt_owed", "i"),                           # still to repay on its active and defaulted loans
    ("loans_defaulted", "i"),                     # loans it took that defaulted
    ("credit_held", "i"),                         # still to be repaid on debts it holds (lent or bought)
    ("decisions", "i"), ("last_decision_at", "f"),
    ("events", "i"), ("last_event_at", "f"),      # events it caused (principal_id)
]
TABLES = {"ledger_entries": LEDGER_COLUMNS, "events": EVENT_COLUMNS, "artifacts": ARTIFACT_COLUMNS,
          "agents": AGENT_COLUMNS, "decisions": DECISION_COLUMNS, "llm_exchanges": LLM_COLUMNS}
TYPE_NAMES = {"i": "int64", "f": "float64 (times: Unix seconds, UTC)", "s": "string", "b": "bool",
              "j": "JSON text"}


from server.storage.export_source import BATCH, ExportError, open_source, shown_url  # noqa: E402,F401


# ----------------------------------------------------------------- deriving


def agent_rows(facts: dict, as_of: float) -> Iterator[tuple]:
    from server.kernel.buckets import TokenBucket

    owed: dict[str, int] = defaultdict(int)
    held: dict[str, int] = defaultdict(int)
    defaulted: dict[str, int] = defaultdict(int)
    for d in facts["debts"]:
        remaining = max(0, int(d.get("repay_amount", 0)) - int(d.get("repaid", 0)))
        if d.get("status") in ("active", "defaulted"):
            owed[d.get("borrower")] += remaining
            held[d.get("controller")] += remaining
        if d.get("status") == "defaulted" or d.get("defaulted_at"):
            defaulted[d.get("borrower")] += 1
    credits, debits = facts["credits"], facts["debits"]
    for agent_id, created_by, created_at, deleted in facts["agents"]:
        def led(table, kind, i=0):
            return table.get((agent_id, kind), (0, 0))[i]

        flow = facts["flow"].get(agent_id)
        if flow is not None:
            bucket = TokenBucket(*flow)
            compute = (flow[0], flow[1], bucket.level(as_of), bucket.seconds_until_usable(as_of))
        else:
            compute = (None, None, None, None)
        llm = facts["stock"].get((agent_id, "llm_budget"), (None, None))
        disk = facts["stock"].get((agent_id, "disk_bytes"), (None, None))
        rpc = facts["rpc_limits"].get(agent_id, (None, None))
        dec = facts["decisions"].get(agent_id, (0, None))
        ev = facts["events"].get(agent_id, (0, None))
        yield (agent_id, not deleted, created_by, created_at, facts["deleted_at"].get(agent_id),
               facts["balances"].get(agent_id, 0), facts["endowments"].get(agent_id),
               led(credits, "mint"), led(credits, "transfer"), led(debits, "transfer"), led(debits, "burn"),
               led(credits, "transfer", 1), led(debits, "transfer", 1),
               llm[0], llm[1], *compute, disk[0], disk[1], *rpc,
               facts["created"].get(agent_id, 0), owed.get(agent_id, 0), defaulted.get(agent_id, 0),
               held.get(agent_id, 0), dec[0], dec[1], ev[0], ev[1])


# ----------------------------------------------------------------- writing


def _arrow_schema(columns, parquet: bool):
    import pyarrow as pa

    types = {"i": pa.int64(), "f": pa.float64(), "s": pa.string(), "b": pa.bool_(),
             "j": pa.json_() if parquet else pa.string()}
    return pa.schema([pa.field(name, types[t]) for name, t in columns],
                     metadata={"ecology.times": "float64 Unix seconds (UTC)",
                               "ecology.json_columns": ",".join(n for n, t in columns if t == "j")})


def _batches(rows: Iterable[tuple], schema) -> Iterator:
    import pyarrow as pa

    chunk: list[tuple] = []

    def batch():
        cols = list(zip(*chunk))
        return pa.record_batch([pa.array(cols[i], type=f.type) if not isinstance(f.type, pa.ExtensionType)
                                else pa.ExtensionArray.from_storage(f.type, pa.array(cols[i], type=pa.string()))
                                for i, f in enumerate(schema)], schema=schema)

    for row in rows:
        chunk.append(row)
        if len(chunk) >= BATCH:
            yield batch()
            chunk = []
    if chunk:
        yield batch()


def _write(path: Path, fmt: str, columns, rows: Iterable[tuple]) -> int:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    schema = _arrow_schema(columns, fmt == "parquet")
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    if fmt == "parquet":
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
    else:
        writer = pcsv.CSVWriter(tmp, schema)
    try:
        for b in _batches(rows, schema):
            writer.write_batch(b)
            n += b.num_rows
    finally:
        writer.close()
    os.replace(tmp, path)
    return n


def export(data_dir, fmt: str, out, *, force: bool = False, as_of: float | None = None,
           database: str | None = None) -> dict:
    """Write every table of the world in `data_dir` (or, given, the PostgreSQL `database`)
    into `out`; returns the manifest."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: use parquet or csv")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; use --force to overwrite the files in it")
    source = open_source(data_dir, database)
    try:
        out.mkdir(parents=True, exist_ok=True)
        as_of = time.time() if as_of is None else as_of
        readers = {"ledger_entries": source.ledger_entries, "events": source.events,
                   "artifacts": source.artifacts, "decisions": source.decisions,
                   "llm_exchanges": source.llm_exchanges,
                   "agents": lambda: agent_rows(source.agent_facts(), as_of)}
        counts = {}
        for table, columns in TABLES.items():
            counts[table] = _write(out / f"{table}.{fmt}", fmt, columns, readers[table]())
    finally:
        source.close()
    manifest = {
        "format": fmt, "as_of": as_of, "schema_version": source.schema_version,
        **({"database": shown_url(database)} if database else {"data_dir": str(Path(data_dir).resolve())}),
        "times": "float64 Unix seconds (UTC)",
        "tables": {t: {"file": f"{t}.{fmt}", "rows": counts[t],
                       "columns": {n: TYPE_NAMES[c] for n, c in TABLES[t]}} for t in TABLES},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
