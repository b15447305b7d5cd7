"""Decision traces: for every action of every agent, what it decided from.

An agent reports each decision (World.RecordDecision): a summary of what it observed, the
parsed action, its outcome, and the request ids of the genesis_llm calls behind it. The LLM
gateway records each of those calls itself (the exact messages sent and the model's raw
answer), so an LLM brain's decision is traceable to its prompt and answer without trusting
the agent to report them. Operators read traces with Admin.ListDecisions
(`ecology agent decisions NAME`).

Sizes are bounded by `[traces] max_field_bytes`: a field larger than that is replaced by
{"truncated": true, "bytes": N, "preview": "<first bytes of its JSON>"} and the record's
`truncated` flag is set: truncation is marked, never silent. Traces are the agent's own
report about itself, recorded durably like everything else, and cost no compute.
"""

from __future__ import annotations

from server.errors import invalid
from server.kernel import artifacts
from server.kernel.artifacts import dumps

MAX_LLM_IDS = 16


def _bounded(value, max_bytes: int) -> tuple[object, bool]:
    text = dumps(value)
    size = len(text.encode())
    if size <= max_bytes:
        return value, False
    preview = text.encode()[: max(0, max_bytes - 100)].decode(errors="ignore")
    return {"truncated": True, "bytes": size, "preview": preview}, True


def _bounded_text(text: str, max_bytes: int) -> tuple[str, bool]:
    data = text.encode()
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode(errors="ignore") + f"\n[truncated: {len(data)} bytes in all]", True


def record_decision(conn, agent_id: str, *, step: int, observed: dict, action: dict, outcome: dict,
                    llm_request_ids: list[str], max_bytes: int, now: float) -> int:
    if step < 0:
        raise invalid("step", "must not be negative")
    if not action:
        raise invalid("action", "a decision names its action")
    if len(llm_request_ids) > MAX_LLM_IDS or any(not isinstance(r, str) or not 0 < len(r) <= 128
                                                for r in llm_request_ids):
        raise invalid("llm_request_ids", f"at most {MAX_LLM_IDS} request ids of 1..128 characters")
    cut = False
    fields = []
    for value in (observed, action, outcome):
        bounded, was_cut = _bounded(value, max_bytes)
        cut |= was_cut
        fields.append(dumps(bounded))
    return conn.decision_add(agent_id, now, step, *fields, list(llm_request_ids), cut)


def record_llm_exchange(conn, agent_id: str, request_id: str, *, model: str, messages: list, answer: str,
                        max_bytes: int, now: float) -> None:
    """The exact prompt and the raw answer of one genesis_llm call (the gateway calls this
    inside the call's settling transaction). Calls without a request id are recorded under
    a generated one and so cannot be linked to a decision."""
    prompt, cut_prompt = _bounded(messages, max_bytes)
    text, cut_answer = _bounded_text(answer or "", max_bytes)
    conn.llm_exchange_put(agent_id, request_id, now, model, prompt, text, cut_prompt or cut_answer)


def list_decisions(conn, agent_id: str, *, after: int = 0, limit: int = 100) -> tuple[list[dict], int]:
    """Decisions of `agent_id` with seq > after, oldest first, each with its LLM exchanges.
    Returns (decisions, cursor): pass cursor as `after` for the next page (0 = no more)."""
    artifacts.check_id(agent_id, "agent_id")
    if after < 0:
        raise invalid("after_seq", "must not be negative")
    if not 0 <= limit <= 500:
        raise invalid("limit", "0..500 (0 means 100)")
    limit = limit or 100
    rows = conn.decisions_page(agent_id, after, limit + 1)
    out = []
    for r in rows[:limit]:
        ids = r["llm_request_ids"]
        exchanges = []
        for rid in ids:
            x = conn.llm_exchange_get(agent_id, rid)
            if x is not None:
                exchanges.append(x)
        out.append({"seq": r["seq"], "at": r["at"], "step": r["step"], "observed": r["observed"],
                    "action": r["action"], "outcome": r["outcome"],
                    "llm": exchanges, "llm_request_ids": ids, "truncated": r["truncated"]})
    return out, (out[-1]["seq"] if len(rows) > limit else 0)
