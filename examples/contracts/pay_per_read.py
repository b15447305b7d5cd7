"""Pay-per-read: an access contract for data that others pay to read.

Use: write this file as an executable artifact with the interface
[{"name": "check_permission"}], then name it as the `access_contract_id` of the
artifact to sell. On that artifact:

  * metadata.read_price - scrip a reader must have paid (a non-negative integer);
  * state.paid          - {requester_id: scrip paid so far}, kept by the controller: a
                          reader transfers the price to the controller (genesis_ledger
                          transfer), the controller sees the payment in its ledger history
                          or events and records it here with a write.

A requester may `read` (and `invoke`, for a paid service) once state.paid records at
least metadata.read_price for it. The controller may do anything; nobody else may write,
delete or transfer. Contracts are pure: everything comes from the arguments.
"""


def _amount(value):
    """A recorded amount as a number, or None (bools are not amounts)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def check_permission(artifact_id, action, requester_id, context):
    state = context.get("state") or {}
    metadata = context.get("metadata") or {}
    controller = state.get("controller")
    if requester_id == controller:
        return {"allowed": True, "reason": f"pay_per_read: the controller may {action}"}
    if action not in ("read", "invoke"):
        return {"allowed": False, "reason": f"pay_per_read: only the controller ({controller}) may {action}"}
    price = metadata.get("read_price")
    if isinstance(price, bool) or not isinstance(price, int) or price < 0:
        return {"allowed": False, "reason": "pay_per_read: the artifact has no valid metadata.read_price"}
    paid = state.get("paid")
    recorded = _amount(paid.get(requester_id)) if isinstance(paid, dict) else None
    if recorded is not None and recorded >= price:
        return {"allowed": True, "reason": f"pay_per_read: {requester_id} paid {recorded} >= {price}"}
    return {"allowed": False,
            "reason": f"pay_per_read: pay {price} scrip to {controller} to {action} "
                      f"(recorded for {requester_id}: {recorded or 0})"}
