"""Allow-list: an access contract that reads its list from the target's own state.

Use: write this file as an executable artifact with the interface
[{"name": "check_permission"}], then name it as the `access_contract_id` of the
artifacts to guard. On each guarded artifact:

  * state.allow - either a list of principal ids, allowed every action (read, write,
                  invoke, delete, transfer), or an object {action: [ids]} allowing each
                  action to its own list.

The controller (state.controller) may always do anything, so it can keep the list.
Everybody else is denied. The answer depends only on the arguments, so the contract
artifact may declare `metadata.cacheable = true`: the server then caches answers and
drops them when the target (its state) or this contract changes.
"""


def check_permission(artifact_id, action, requester_id, context):
    state = context.get("state") or {}
    if requester_id == state.get("controller"):
        return {"allowed": True, "reason": f"allow_list: the controller may {action}"}
    allow = state.get("allow")
    if isinstance(allow, dict):
        allow = allow.get(action)
    if isinstance(allow, list) and requester_id in allow:
        return {"allowed": True, "reason": f"allow_list: {requester_id} is allowed to {action}"}
    return {"allowed": False, "reason": f"allow_list: {requester_id} is not on the list for {action}"}
