"""Operator grants: scrip and LLM budget given to an agent by the operator (Admin.Grant).

A scrip grant is a mint (the only way scrip is created besides the endowment and the oracle),
recorded in the ledger and as a `ledger.mint` event; an LLM budget grant raises the agent's
`llm_budget` stock quota, recorded as a `quota.granted` event. Both in one operation.
"""

from __future__ import annotations

from server.errors import KernelError, Reason, invalid
from server.kernel import artifacts, events, ledger, resources
from server.kernel.artifacts import SYSTEM_ACCOUNT


def grant(conn, agent_id: str, scrip: int, llm_budget: int, memo: str, now: float) -> dict:
    artifacts.check_id(agent_id, "agent_id")
    art = artifacts.get(conn, agent_id)
    if art is None or art.deleted or not (art.has_standing and art.can_execute) \
            or agent_id.startswith(artifacts.RESERVED_PREFIX):
        raise KernelError(Reason.NOT_FOUND, f"no agent {agent_id!r}", field="agent_id")
    for field, amount in (("scrip", scrip), ("llm_budget_micro_usd", llm_budget)):
        if not isinstance(amount, int) or amount < 0:
            raise invalid(field, "must be a non-negative integer")
    if scrip == 0 and llm_budget == 0:
        raise invalid("scrip", "grant a positive amount of scrip or llm_budget_micro_usd")
    if len(memo) > 200:
        raise invalid("memo", "at most 200 characters")
    memo = f"grant: {memo}" if memo else "grant"
    if scrip:
        ledger.mint(conn, agent_id, scrip, now=now, memo=memo)  # emits its ledger.mint event
    if llm_budget:
        resources.stock(conn, agent_id, "llm_budget")  # exists, or QUOTA_EXCEEDED names it
        conn.stock_add(agent_id, "llm_budget", quota=llm_budget)
        events.append(conn, "quota.granted", principal_id=SYSTEM_ACCOUNT, artifact_id=agent_id, now=now,
                      related=[agent_id], data={"to": agent_id, "resource": "llm_budget", "amount": llm_budget,
                                                "memo": memo})
    return {"scrip": ledger.balance(conn, agent_id) or 0,
            "llm_budget_micro_usd": resources.stock(conn, agent_id, "llm_budget")[0]}


def record_control(conn, type_: str, now: float, data: dict) -> None:
    """`world.paused`, `world.resumed` or `world.stepped`: the operator's run control."""
    events.append(conn, type_, principal_id=SYSTEM_ACCOUNT, now=now, data=data)


def set_stopped(conn, agent_id: str, memo: str, stop: bool, now: float) -> bool:
    """Admin.StopAgent / StartAgent: the durable flag (the server's in-memory set,
    server/rpc/pause.py WorldGate.stopped, follows it) and its event. True if it changed."""
    changed = conn.stopped_add(agent_id, now, memo) if stop else conn.stopped_remove(agent_id)
    if changed:
        events.append(conn, "agent.stopped" if stop else "agent.started", principal_id=SYSTEM_ACCOUNT,
                      artifact_id=agent_id, now=now, related=[agent_id], data={"memo": memo})
    return changed

