"""Two-of-three approval: an access contract for artifacts governed by three approvers.

Use: write this file as an executable artifact with the interface
[{"name": "check_permission"}], then name it as the `access_contract_id` of the
governed artifact, with state:

  * state.approvers - exactly three distinct principal ids;
  * state.approvals - the ids of approvers who approved the next change (a list).

Rules:
  * read and invoke: anyone;
  * an approver may `write` only to add its OWN id to state.approvals: the proposed
    change (context["proposed"]) keeps the content, interface and metadata, and the
    proposed state equals the current state except that approvals gains exactly the
    requester's id (once);
  * any other write, and delete or transfer: the requester must be an approver and
    state.approvals must hold at least two distinct approvers. Approvals stay until
    someone clears them: the approved write should set `approvals: []` in the same
    write, so that each set of approvals is used once.

Control (state.controller) grants nothing here: whoever holds it still needs two
approvals.
"""

QUORUM = 2


def _approvers(state):
    approvers = state.get("approvers")
    if (isinstance(approvers, list) and len(approvers) == 3 and all(isinstance(a, str) for a in approvers)
            and len(set(approvers)) == 3):
        return approvers
    return None


def _is_own_approval(state, metadata, proposed, requester_id):
    """The proposed write only appends the requester's id to approvals."""
    if not isinstance(proposed, dict):
        return False
    if proposed.get("content_changed") or proposed.get("interface_changed"):
        return False
    if proposed.get("metadata") != metadata:
        return False
    new_state = proposed.get("state")
    if not isinstance(new_state, dict):
        return False
    current = state.get("approvals", [])
    if not isinstance(current, list) or requester_id in current:
        return False
    if new_state.get("approvals") != current + [requester_id]:
        return False
    rest_old = {k: v for k, v in state.items() if k != "approvals"}
    rest_new = {k: v for k, v in new_state.items() if k != "approvals"}
    return rest_old == rest_new


def check_permission(artifact_id, action, requester_id, context):
    state = context.get("state") or {}
    approvers = _approvers(state)
    if approvers is None:
        return {"allowed": False, "reason": "two_of_three: state.approvers must list three distinct ids"}
    if action in ("read", "invoke"):
        return {"allowed": True, "reason": f"two_of_three: anyone may {action}"}
    if requester_id not in approvers:
        return {"allowed": False, "reason": f"two_of_three: {requester_id} is not an approver"}
    if action == "write" and _is_own_approval(state, context.get("metadata") or {}, context.get("proposed"),
                                              requester_id):
        return {"allowed": True, "reason": f"two_of_three: {requester_id} records its approval"}
    approvals = state.get("approvals")
    distinct = {a for a in approvals if a in approvers} if isinstance(approvals, list) else set()
    if len(distinct) >= QUORUM:
        return {"allowed": True,
                "reason": f"two_of_three: {action} approved by {', '.join(sorted(distinct))}"}
    return {"allowed": False,
            "reason": f"two_of_three: {action} needs {QUORUM} of 3 approvals, has {len(distinct)}"}
