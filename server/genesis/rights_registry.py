from __future__ import annotations

from server.errors import KernelError, Reason
from server.genesis.base import ID, Call, Genesis, method
from server.genesis.escrow import set_controller
from server.kernel import artifacts, events, resources


class RightsRegistryArtifact(Genesis):
    id = "genesis_rights_registry"
    description = ("Quotas and rights: see any principal's resources, give part of your own quotas to another "
                   "principal, and hand control of an artifact to another principal.")

    @method("Flow and stock resources of a principal (default: the caller).", {"principal_id": ID})
    def quotas(self, call: Call, principal_id: str | None = None) -> dict:
        pid = principal_id or call.caller
        snap = resources.snapshot(call.conn, pid, call.now)
        if not snap["flow"] and not snap["stock"]:
            raise KernelError(Reason.NOT_FOUND, f"{pid!r} is not a principal", field="principal_id")
        return {"principal_id": pid, **snap}

    @method("Give `amount` of one of your quotas to principal `to`: disk_bytes, llm_budget (micro-USD), "
            "compute_rate or compute_capacity.",
            {"to": ID, "resource": {"enum": list(resources.TRANSFERABLE)},
             "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 2**53}},
            ("to", "resource", "amount"))
    def transfer_quota(self, call: Call, to: str, resource: str, amount) -> dict:
        if isinstance(amount, float) and amount.is_integer():
            amount = int(amount)
        resources.transfer_quota(call.conn, call.caller, to, resource, amount, call.now)
        events.append(call.conn, "quota.transferred", principal_id=call.caller, artifact_id=self.id, now=call.now,
                      related=[to], data={"resource": resource, "amount": amount, "to": to})
        return {"from": call.caller, "to": to, "resource": resource, "amount": amount}

    @method("Hand control of an artifact to principal `to` (needs the `transfer` right).",
            {"artifact_id": ID, "to": ID}, ("artifact_id", "to"))
    def transfer_control(self, call: Call, artifact_id: str, to: str) -> dict:
        art = artifacts.require(call.conn, artifact_id)
        if artifact_id.startswith(artifacts.RESERVED_PREFIX):
            raise KernelError(Reason.ACCESS_DENIED, "genesis artifacts cannot change hands")
        if call.conn.escrow_get(artifact_id) is not None:
            raise KernelError(Reason.CONFLICT, f"{artifact_id} is listed in escrow", field="artifact_id")
        target = artifacts.get(call.conn, to)
        if target is None or not target.has_standing:
            raise KernelError(Reason.NOT_FOUND, f"{to!r} is not a principal", field="to")
        self.kernel.authorize(call.conn, art, "transfer", call.caller, call.now)
        new = set_controller(call, art, to)
        events.append(call.conn, "control.transferred", principal_id=call.caller, artifact_id=artifact_id,
                      now=call.now, related=[to], data={"to": to, "version": new.version})
        return {"artifact_id": artifact_id, "controller": to, "version": new.version}
