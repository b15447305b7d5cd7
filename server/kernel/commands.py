"""Every state change of the world is a named command (exact replay).

The world is a state machine: its state changes only by writer operations
(server/storage/executor.py), and each of them is one of the commands below, a function
`run(world, conn, inputs)` of the kernel, its JSON-serialisable inputs and what it reads
from outside the kernel (the tape, server/kernel/tape.py). When a command commits, it
appends one row to the oplog (server/storage/oplog.py) inside its own savepoint: its name,
its inputs, and its recording (every clock reading, every outside answer it consumed, its
outcome and how many rows it changed). `ecology replay` (server/replay.py) runs the same
commands in oplog order through the same kernel code, from an empty data directory, with
the recorded readings, and must reach the same state - it re-executes, it never copies
rows.

What counts as an input: everything the call site hands the operation, including the
answers computed outside the writer for it - contract decisions and their CPU (`Work`),
the recorded run of user code (`invocation.Chain`: what the code asked, was told and
returned, its CPU), the LLM's answer and usage, the mint's scores. What counts as a
reading (the tape): the clock, new token hashes, code-check outcomes picked up inside the
write. The effective configuration is an input of `start`, the command every server start
runs first (bootstrap of the genesis artifacts + release of LLM reservations a crash left):
replay builds a fresh kernel from it there, as a restart does, so in-memory state (the
world's LLM tokens-per-minute bucket, caches) restarts too.

Not recorded: operations that changed no row (the oplog would only grow), and dry runs of
user-code invocations (rolled back by design). An operation that raises is rolled back
and leaves no row.

Adding a state change: register a command here and submit it through `Commands`
(`await commands.run(name, inputs)`); a plain `executor.run(op)` that changes rows is
logged as `unrecorded` and replay stops there, naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from server.errors import KernelError
from server.kernel import contracts, invocation, traces, grants
from server.kernel.tape import Divergence, Playback, Recording
from server.storage import oplog
from server.storage.executor import Failed


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


@dataclass
class World:
    """What commands run against: the kernel and the LLM gateway's writer steps."""

    kernel: Any
    llm: Any = None
    # Replay only: reservation id -> the Plan its llm_reserve made (the settle and release
    # rows name their plan by digest instead of repeating the prompt).
    plans: dict | None = None


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[World, Any, dict], Any]
    encode: Callable[[dict], Any]                 # inputs -> JSON (called after the run)
    decode: Callable[[World, Any, Any], dict]     # (world, conn, JSON) -> inputs
    skip: Callable[[Any], bool]                   # result -> committed nothing by design
    always: bool = False                          # recorded even if it changed no row
    # (world, inputs) -> may this run twice? True only where the run's every effect is on
    # the store and the inputs are not consumed by it: the executor may then roll it back
    # with its whole batch and run it again (server/storage/executor.py "Held batches").
    # Not so where a run touches memory (genesis_llm's tokens-per-minute bucket, the
    # kernel's pre-checked code outcomes, a user-code run's recorded chain).
    rerunnable: Callable[[World, dict], bool] = lambda w, i: False


COMMANDS: dict[str, Command] = {}


def _same(inputs):
    return inputs


def command(name: str, encode=None, decode=None, skip=None, always=False, rerunnable=None):
    def register(fn):
        COMMANDS[name] = Command(name, fn, encode or _same, decode or (lambda w, c, j: j),
                                 skip or (lambda r: False), always, rerunnable or (lambda w, i: False))
        return fn
    return register


def outcome_of(result: Any) -> str:
    return result.error.reason.value if isinstance(result, Failed) else "ok"


class Commands:
    """Submits commands to the executor, recording each one with its effects."""

    def __init__(self, kernel, executor, llm=None) -> None:
        self.world = World(kernel, llm)
        self.executor = executor

    def op(self, name: str, inputs: dict):
        cmd = COMMANDS[name]
        world = self.world
        tape = world.kernel.tape

        def run(conn):
            rec = Recording()
            before = conn.changes()
            tape.begin(rec)
            try:
                result = cmd.run(world, conn, inputs)
            finally:
                tape.end()
            changes = conn.changes() - before
            if (changes or cmd.always) and not cmd.skip(result):
                oplog.append(conn, name, dumps(cmd.encode(inputs)), dumps(
                    {"t": rec.times, "a": rec.answers, "r": outcome_of(result), "n": changes}))
            return result

        run.command = name  # the executor does not log it as unrecorded
        run.rerunnable = cmd.rerunnable(world, inputs)
        return run

    async def run(self, name: str, inputs: dict) -> Any:
        return await self.executor.run(self.op(name, inputs))

    def run_blocking(self, name: str, inputs: dict) -> Any:
        return self.executor.run_blocking(self.op(name, inputs))


def replay_one(world: World, conn, seq: int, name: str, inputs_json: str, record_json: str) -> Any:
    """Run one recorded command again, with its recorded readings (no clock, no sandbox,
    no LLM). Raises Divergence where it does not end as recorded."""
    cmd = COMMANDS.get(name)
    if cmd is None:
        if name == "unrecorded":
            raise Divergence(f"an operation that was not a command changed the world: {inputs_json}")
        raise Divergence(f"unknown command {name!r}")
    record = json.loads(record_json)
    inputs = cmd.decode(world, conn, json.loads(inputs_json))
    playback = Playback(record["t"], record["a"])
    tape = world.kernel.tape
    before = conn.changes()
    tape.begin(playback)
    try:
        result = cmd.run(world, conn, inputs)
    except KernelError as err:
        raise Divergence(f"{name} failed {err.reason.value} ({err.message}); it committed "
                         f"with outcome {record['r']} when recorded") from None
    finally:
        tape.end()
        world.last_time = playback.last_time if playback.last_time is not None else getattr(world, "last_time", 0.0)
    playback.check_used_up()
    if outcome_of(result) != record["r"]:
        detail = f" ({result.error.message})" if isinstance(result, Failed) else ""
        raise Divergence(f"{name} ended {outcome_of(result)}{detail}; recorded: {record['r']}")
    changes = conn.changes() - before
    if changes != record["n"]:
        raise Divergence(f"{name} changed {changes} rows; recorded: {record['n']}")
    return result


# -- encodings of the outside answers ------------------------------------------------------------

def encode_work(work: invocation.Work) -> dict:
    return {"d": [[list(k), d.allowed, d.reason] for k, d in work.decisions.items()], "cpu": work.cpu_seconds}


def decode_work(j: dict) -> invocation.Work:
    return invocation.Work(decisions={tuple(k): contracts.Decision(a, r) for k, a, r in j["d"]},
                           cpu_seconds=j["cpu"])


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _encode_run(run: invocation.CodeRun) -> dict:
    # The source is named by its digest (it is the invoked artifact's content at the time).
    return {"id": run.artifact_id, "src": _sha(run.source), "m": run.method, "args": run.args, "ctx": run.context,
            "payer": run.payer, "out": list(run.outcome) if run.outcome is not None else None,
            "cpu": run.cpu_seconds,
            "req": [{"msg": r.msg, "reply": r.reply, "local": r.local,
                     "child": _encode_run(r.child) if r.child is not None else None} for r in run.requests]}


def _decode_run(conn, j: dict) -> invocation.CodeRun:
    from server.kernel import artifacts

    art = artifacts.get(conn, j["id"])
    source = art.content if art is not None and _sha(art.content) == j["src"] else f"<source sha256 {j['src']}>"
    run = invocation.CodeRun(j["id"], source, j["m"], j["args"], j["ctx"], j["payer"],
                             outcome=tuple(j["out"]) if j["out"] is not None else None, cpu_seconds=j["cpu"])
    run.requests = [invocation.Request(r["msg"], r["reply"], _decode_run(conn, r["child"]) if r["child"] else None,
                                       r["local"]) for r in j["req"]]
    return run


def encode_chain(chain: invocation.Chain) -> dict:
    return {"now": chain.now, "work": encode_work(chain.work),
            "root": _encode_run(chain.root) if chain.root is not None else None,
            "abort": chain.abort.to_dict() if chain.abort is not None else None}


def decode_chain(conn, j: dict) -> invocation.Chain:
    return invocation.Chain(now=j["now"], work=decode_work(j["work"]),
                            root=_decode_run(conn, j["root"]) if j["root"] is not None else None,
                            abort=KernelError.from_dict(j["abort"]) if j["abort"] is not None else None)


def _with_work(encode_rest=None):
    def encode(i):
        return {**{k: v for k, v in i.items() if k != "work"}, "work": encode_work(i["work"])}

    def decode(w, conn, j):
        return {**j, "work": decode_work(j["work"])}
    return encode, decode


_WORK = _with_work()


# -- the commands --------------------------------------------------------------------------------

@command("start", always=True)
def _start(w: World, conn, i: dict) -> int:
    """Every server start: bootstrap (genesis artifacts) and release the LLM reservations a
    crash left. inputs: config (the effective configuration), fresh (an empty world)."""
    from server.llm import reservations

    if "fresh" not in i:
        i["fresh"] = conn.artifacts_total() == 0
    w.kernel.bootstrap(conn)
    return reservations.release_all(conn, w.kernel.clock())


@command("purge_idempotency")
def _purge(w: World, conn, i: dict) -> int:
    return w.kernel.purge_idempotency(conn)


@command("read", *_WORK, rerunnable=lambda w, i: True)
def _read(w: World, conn, i: dict) -> dict:
    k = w.kernel
    return k.with_work(conn, i["caller"], i["work"], lambda: k.op_read(conn, i["caller"], i["artifact_id"]))


@command("write", *_WORK)
def _write(w: World, conn, i: dict) -> dict:
    k, caller = w.kernel, i["caller"]
    return k.idempotent(conn, caller, i["request_id"], "WriteArtifact", lambda: k.with_work(
        conn, caller, i["work"], lambda: k.op_write(conn, caller, i["req"])))


@command("delete", *_WORK)
def _delete(w: World, conn, i: dict) -> dict:
    k, caller = w.kernel, i["caller"]
    return k.idempotent(conn, caller, i["request_id"], "DeleteArtifact", lambda: k.with_work(
        conn, caller, i["work"], lambda: k.op_delete(conn, caller, i["artifact_id"], i["expected_version"])))


@command("invoke",
         encode=lambda i: {**{k: v for k, v in i.items() if k != "chain"}, "chain": encode_chain(i["chain"])},
         decode=lambda w, conn, j: {**j, "chain": decode_chain(conn, j["chain"])},
         skip=lambda result: isinstance(result, invocation.DryRun),
         # A genesis method: only the store (genesis_llm.complete, the one with memory,
         # goes through server/llm/gateway.py, not this command).
         rerunnable=lambda w, i: i["artifact_id"] in w.kernel.genesis)
def _invoke(w: World, conn, i: dict) -> Any:
    k, caller, chain = w.kernel, i["caller"], i["chain"]
    return k.idempotent(conn, caller, i["request_id"], f"InvokeArtifact:{i['artifact_id']}.{i['method']}",
                        lambda: k.with_work(conn, caller, chain.work, lambda: k.op_invoke(
                            conn, caller, i["artifact_id"], i["method"], i["args"], chain, i["max_spend"])))


@command("create_agent", *_WORK)
def _create_agent(w: World, conn, i: dict) -> dict:
    k = w.kernel
    return k.with_work(conn, "admin", i["work"], lambda: k.op_create_agent(
        conn, i["name"], i["config"], metadata=i["metadata"], overrides=i["overrides"],
        access_contract_id=i["access_contract_id"], interface=i["interface"]))


@command("issue_token")
def _issue_token(w: World, conn, i: dict) -> str:
    return w.kernel.op_issue_token(conn, i["agent_id"])


@command("decision")
def _decision(w: World, conn, i: dict) -> int:
    return traces.record_decision(conn, i["caller"], step=i["step"], llm_request_ids=i["llm_request_ids"],
                                  max_bytes=i["max_bytes"], now=w.kernel.clock(), observed=i["observed"],
                                  action=i["action"], outcome=i["outcome"])


@command("control")
def _control(w: World, conn, i: dict) -> None:
    grants.record_control(conn, i["type"], w.kernel.clock(), i["data"])


@command("agent_control")
def _agent_control(w: World, conn, i: dict) -> bool:
    return grants.set_stopped(conn, i["agent_id"], i["memo"], i["stop"], w.kernel.clock())


@command("query_genesis")
def _query_genesis(w: World, conn, i: dict) -> Any:
    """Admin.QueryGenesis: a read-only genesis method, on the writer as an agent's call of it
    runs (genesis_debt.status settles overdue debts first: then it changes rows)."""
    from server.kernel.artifacts import SYSTEM_ACCOUNT

    return w.kernel.genesis[i["artifact_id"]].call(conn, SYSTEM_ACCOUNT, i["method"], i["args"], w.kernel.clock())


@command("grant")
def _grant(w: World, conn, i: dict) -> dict:
    return grants.grant(conn, i["agent_id"], i["scrip"], i["llm_budget"], i["memo"], w.kernel.clock())


# -- the LLM gateway's writer steps (server/llm/gateway.py) ---------------------------------------

def _plan_sha(plan) -> str:
    return _sha(dumps(asdict(plan)))


def _encode_reserved(r: dict) -> dict:
    return {"id": r["id"], "plan": _plan_sha(r["plan"])}


def _decode_reserved(w: World, j: dict) -> dict:
    plan = (w.plans or {}).get(j["id"])
    if plan is None or _plan_sha(plan) != j["plan"]:
        raise Divergence(f"LLM reservation {j['id']} was not made by a replayed llm_reserve with the same plan")
    return {"id": j["id"], "plan": plan}


@command("llm_reserve")
def _llm_reserve(w: World, conn, i: dict) -> Any:
    result = w.llm._reserve(conn, i["caller"], i["args"], i["request_id"])
    if w.plans is not None and isinstance(result, dict) and "plan" in result:
        w.plans[result["id"]] = result["plan"]
    return result


def _encode_settle(i):
    return {**i, "reserved": _encode_reserved(i["reserved"]), "answer": asdict(i["answer"])}


def _decode_settle(w, conn, j):
    from server.llm.backend import Completion

    return {**j, "reserved": _decode_reserved(w, j["reserved"]), "answer": Completion(**j["answer"])}


@command("llm_settle", _encode_settle, _decode_settle)
def _llm_settle(w: World, conn, i: dict) -> dict:
    return w.llm._settle(conn, i["caller"], i["reserved"], i["answer"], i["request_id"], i["seconds"])


def _encode_release(i):
    return {**i, "reserved": [_encode_reserved(r) for r in i["reserved"]],
            "failure": i["failure"].to_dict() if i["failure"] is not None else None}


def _decode_release(w, conn, j):
    return {**j, "reserved": [_decode_reserved(w, r) for r in j["reserved"]],
            "failure": KernelError.from_dict(j["failure"]) if j["failure"] is not None else None}


@command("llm_release", _encode_release, _decode_release)
def _llm_release(w: World, conn, i: dict) -> None:
    for r in i["reserved"]:
        w.llm._release(conn, r, i["caller"], i["request_id"], i["failure"])


# -- the mint (server/oracle/runner.py, scoring.py) ---------------------------------------------

def _encode_scores(i):
    from server.oracle.scoring import Score

    return {"final": i["final"], "scores": [
        [k[0], k[1], s.score, s.reason] if isinstance(s, Score) else [k[0], k[1], None, str(s)]
        for k, s in i["scores"].items()]}


def _decode_scores(w, conn, j):
    from server.oracle.scoring import Score, ScoreError

    return {"final": j["final"], "scores": {(a, v): Score(s, r) if s is not None else ScoreError(r)
                                            for a, v, s, r in j["scores"]}}


@command("oracle_resolve", _encode_scores, _decode_scores)
def _oracle_resolve(w: World, conn, i: dict) -> Any:
    return w.kernel.genesis["genesis_oracle"].resolve(conn, i["scores"], i["final"])


def _encode_plan(i):
    return {**i, "plan": asdict(i["plan"])}


def _decode_plan(w, conn, j):
    from server.genesis.llm import Plan

    return {**j, "plan": Plan(**j["plan"])}


@command("oracle_score_reserve", _encode_plan, _decode_plan)
def _score_reserve(w: World, conn, i: dict) -> int:
    from server.oracle import scoring

    return scoring.reserve_scoring(w.kernel, conn, i["plan"])


@command("oracle_score_release")
def _score_release(w: World, conn, i: dict) -> Any:
    from server.llm import reservations

    return reservations.release(conn, i["rid"], w.kernel.clock())


def _encode_score_settle(i):
    return {**_encode_plan(i), "answer": asdict(i["answer"])}


def _decode_score_settle(w, conn, j):
    from server.llm.backend import Completion

    return {**_decode_plan(w, conn, j), "answer": Completion(**j["answer"])}


@command("oracle_score_settle", _encode_score_settle, _decode_score_settle)
def _score_settle(w: World, conn, i: dict) -> int:
    from server.oracle import scoring

    return scoring.settle_scoring(w.kernel, conn, i["rid"], i["plan"], i["answer"], i["artifact_id"])
