"""The built-in contracts, as invokable genesis artifacts (their logic lives in
server/kernel/contracts.py; invoking them here answers the same question)."""

from __future__ import annotations

from server.errors import invalid
from server.genesis.base import Genesis
from server.kernel import contracts

DESCRIPTIONS = {
    "genesis_freeware": "Default contract: anyone may read and invoke; only the controller may write, delete, transfer.",
    "genesis_self_owned": "For agents: the artifact itself (and its controller, initially itself) reads and invokes; "
                          "only the controller writes, deletes, transfers.",
    "genesis_private": "Only the controller may do anything.",
    "genesis_public": "Anyone may do anything.",
    "genesis_debt_contract": "For debts (genesis_debt): anyone reads; only genesis_debt writes or deletes; "
                             "the controller (the current creditor) transfers an accepted debt.",
}


class BuiltinContract(Genesis):
    def __init__(self, kernel, contract_id: str) -> None:
        self.id = contract_id
        self.description = DESCRIPTIONS[contract_id]
        self._fn = contracts.BUILTIN[contract_id]
        super().__init__(kernel)

    def interface(self) -> list[dict]:
        return contracts.CONTRACT_INTERFACE

    def call(self, conn, caller, name, args, now):
        ctx = {"metadata": {}, "state": {}, "created_by": "", "now": now, **args["context"]}
        for key in ("metadata", "state"):  # the contracts read them as objects
            if not isinstance(ctx[key], dict):
                raise invalid(f"args.context.{key}", "must be an object")
        d = self._fn(args["artifact_id"], args["action"], args["requester_id"], ctx)
        return {"allowed": d.allowed, "reason": d.reason}


def build(kernel) -> list[Genesis]:
    return [BuiltinContract(kernel, cid) for cid in contracts.BUILTIN]
