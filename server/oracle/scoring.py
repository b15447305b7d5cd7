"""Scorers: how the mint values an artifact, 0-100, with a reason.

A scorer gets the `Evidence` the world already holds about one artifact (gathered in the
kernel's transaction by `gather`) and returns a `Score`, or raises `ScoreError`; a
failure refunds that winner's price and mints nothing for it.

  * OfflineScorer (default, `oracle.scorer = "offline"`): pure and cheap, runs inside the
    resolution op. Rubric (documented in the README):
      - content identical to an older artifact's (created earlier; ties by id) -> 0;
      - empty content -> 0;
      - otherwise 10 for existing
        + 15 for every distinct other principal that invoked it and paid its price since
          it was created (at most 60; the controller and the artifact itself do not count)
        + 30 * succeeded / (succeeded + failed) over its recorded invocations
          (`artifact.invoked` events; 0 when it was never invoked), rounded down;
      capped at 100.
  * LlmScorer (`oracle.scorer = "llm"`): asks the LLM gateway's backend (the same one as
    genesis_llm) with the rubric in RUBRIC, charged to genesis_oracle's own llm_budget
    (reserve the worst case, call, settle: server/llm/reservations.py). It is awaited
    outside the writer thread (server/oracle/runner.py). An unusable answer, a failed
    call or an exhausted budget is a scoring failure.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass
from typing import Protocol

import structlog

from server.kernel import events
from server.kernel.artifacts import Artifact

log = structlog.get_logger("oracle")

ORACLE_ID = "genesis_oracle"
CONTENT_EXCERPT_CHARS = 4000


@dataclass(frozen=True)
class Evidence:
    artifact_id: str
    version: int
    kind: str
    controller: str
    created_at: float
    content: str
    metadata: dict
    methods: list[str]
    payers: int                # distinct other principals who invoked it and paid its price
    invocations_ok: int
    invocations_failed: int
    duplicate_of: str | None   # an older artifact with the same content

    @property
    def key(self) -> tuple[str, int]:
        return (self.artifact_id, self.version)


@dataclass(frozen=True)
class Score:
    score: int     # 0..100
    reason: str


class ScoreError(Exception):
    """The scorer could not score: the winner is refunded and nothing is minted."""


class Scorer(Protocol):
    name: str
    # True: `ascore` is awaited outside the writer before the resolution op;
    # False: `score` runs inside it (pure and cheap).
    is_async: bool

    def score(self, ev: Evidence) -> Score: ...

    async def ascore(self, ev: Evidence) -> Score: ...


def gather(conn, art: Artifact) -> Evidence:
    """What the world holds about `art`, read in the current transaction."""
    controller = art.controller or ""
    excluded = {controller, art.id}
    # Paid its price: memo "price" or "price of ..." (case-insensitive prefix, as it always was).
    payers = conn.event_payers(art.id, "ledger.transfer", art.created_at, "price", "price of ") - excluded
    ok, failed = conn.event_ok_counts(art.id, "artifact.invoked", art.created_at)
    dup = conn.artifact_same_content_before(art)
    return Evidence(
        artifact_id=art.id, version=art.version, kind=art.kind, controller=controller,
        created_at=art.created_at, content=art.content, metadata=art.metadata,
        methods=[m["name"] for m in art.interface], payers=len(payers), invocations_ok=int(ok),
        invocations_failed=int(failed), duplicate_of=dup)


def offline_score(ev: Evidence) -> Score:
    if ev.duplicate_of is not None:
        return Score(0, f"duplicates the content of {ev.duplicate_of}, which is older")
    if not ev.content:
        return Score(0, "empty content")
    usage = min(60, 15 * ev.payers)
    runs = ev.invocations_ok + ev.invocations_failed
    reliability = 30 * ev.invocations_ok // runs if runs else 0
    total = min(100, 10 + usage + reliability)
    return Score(total, f"original content (10) + {ev.payers} distinct paying users ({usage}) + "
                        f"{ev.invocations_ok}/{runs} invocations succeeded ({reliability})")


class OfflineScorer:
    name = "offline"
    is_async = False

    def score(self, ev: Evidence) -> Score:
        return offline_score(ev)

    async def ascore(self, ev: Evidence) -> Score:
        return offline_score(ev)


RUBRIC = """You are the mint of an economy of AI agents. You score one artifact from 0 to 100.
Rubric (add the parts):
- usefulness to other agents (0-50): would other agents invoke, read or pay for it? Evidence of real
  use (distinct paying users, successful invocations) counts most.
- novelty (0-25): does it add something new to the world? A copy of existing content scores 0 overall.
- quality (0-25): is it correct, clear, robust (few failed invocations), well described?
Answer with a JSON object only: {"score": <integer 0-100>, "reason": "<one sentence>"}"""


def score_messages(ev: Evidence) -> list[dict]:
    content = ev.content if len(ev.content) <= CONTENT_EXCERPT_CHARS else ev.content[:CONTENT_EXCERPT_CHARS] + "\n[...]"
    facts = {
        "artifact_id": ev.artifact_id, "kind": ev.kind, "metadata": ev.metadata, "methods": ev.methods,
        "distinct_paying_users": ev.payers, "invocations_succeeded": ev.invocations_ok,
        "invocations_failed": ev.invocations_failed, "duplicate_of": ev.duplicate_of,
    }
    return [{"role": "system", "content": RUBRIC},
            {"role": "user", "content": "Facts: " + json.dumps(facts, sort_keys=True) + "\nContent:\n" + content}]


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_score(text: str) -> Score:
    m = _JSON_OBJECT.search(text or "")
    try:
        data = json.loads(m.group(0) if m else text)
    except (ValueError, TypeError):
        raise ScoreError("the model's answer is not a JSON object") from None
    score = data.get("score") if isinstance(data, dict) else None
    if isinstance(score, float) and score.is_integer():
        score = int(score)
    if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 100:
        raise ScoreError(f"the model's answer has no integer score 0-100: {text[:200]!r}")
    reason = data.get("reason")
    return Score(score, reason[:500] if isinstance(reason, str) and reason else "(no reason given)")


class LlmScorer:
    """Scores through the gateway's backend, charged to genesis_oracle's llm_budget."""

    name = "llm"
    is_async = True
    MAX_TOKENS = 200

    def __init__(self, kernel, executor, backend, model: str = "") -> None:
        self.kernel = kernel
        self.executor = executor
        self.backend = backend
        self.model = model or kernel.config.llm["default_model"]
        self.timeout = kernel.config.llm["timeout_seconds"]

    def score(self, ev: Evidence) -> Score:  # never called inside the writer
        raise ScoreError("the LLM scorer runs outside the writer thread")

    async def ascore(self, ev: Evidence) -> Score:
        from server.llm.backend import BackendError, Request

        llm = self.kernel.genesis["genesis_llm"]
        plan = llm.plan({"messages": score_messages(ev), "model": self.model, "max_tokens": self.MAX_TOKENS,
                         "response_format": {"type": "json_object"}})

        from server.kernel.commands import Commands

        commands = Commands(self.kernel, self.executor)
        try:
            rid = await commands.run("oracle_score_reserve", {"plan": plan})
        except Exception as e:  # budget exhausted (INSUFFICIENT_RESOURCES) or no budget row
            raise ScoreError(f"the mint cannot pay for scoring: {getattr(e, 'message', e)}") from None
        request = Request(model=plan.model, messages=plan.messages, max_tokens=plan.max_tokens,
                          response_format=plan.response_format)
        try:
            answer = await asyncio.wait_for(self.backend.complete(request), self.timeout)
        except (BackendError, asyncio.TimeoutError, Exception) as e:
            await commands.run("oracle_score_release", {"rid": rid})
            raise ScoreError(f"LLM backend failed: {getattr(e, 'message', None) or type(e).__name__}") from None
        await commands.run("oracle_score_settle", {"rid": rid, "plan": plan, "answer": answer,
                                                   "artifact_id": ev.artifact_id})
        return parse_score(answer.content)


# The LLM scorer's writer steps (commands oracle_score_*, server/kernel/commands.py).

def reserve_scoring(kernel, conn, plan) -> int:
    from server.llm import reservations

    return reservations.reserve(conn, ORACLE_ID, amount=plan.cost, tokens=plan.tokens, compute=0.0,
                                model=plan.model, request_id="", now=kernel.clock())


def settle_scoring(kernel, conn, rid: int, plan, answer, artifact_id: str) -> int:
    from server.llm import reservations

    charged = reservations.settle(conn, rid, plan.actual_cost(answer.prompt_tokens, answer.completion_tokens))
    events.append(conn, "llm.completed", principal_id=ORACLE_ID, artifact_id="genesis_llm",
                  now=kernel.clock(), data={
                      "model": answer.model, "prompt_tokens": answer.prompt_tokens,
                      "completion_tokens": answer.completion_tokens, "cost_micro_usd": charged,
                      "reserved_micro_usd": plan.cost, "purpose": f"oracle score of {artifact_id}"})
    return charged


def evidence_dict(ev: Evidence) -> dict:
    d = asdict(ev)
    d.pop("content")
    return d
