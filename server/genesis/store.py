from __future__ import annotations

from server.errors import KernelError, Reason, invalid
from server.genesis.base import ID, LIMIT, Call, Genesis, method
from server.kernel import artifacts, events, ledger, resources
from server.kernel.artifacts import Artifact

_FILTERS = {
    "created_by": ID,
    "kind": {"enum": ["agent", "tool", "account", "data"]},
    "has_standing": {"type": "boolean"},
    "can_execute": {"type": "boolean"},
    "metadata": {"type": "object"},
    "include_deleted": {"type": "boolean"},
    "limit": LIMIT,
    "cursor": {"type": "string", "maxLength": 256},
}


class StoreArtifact(Genesis):
    id = "genesis_store"
    description = ("Discovery of artifacts and agents: list, filter and search metadata without reading content; "
                   "and spawning: create a new agent that you control and fund.")

    @method("List artifacts (no content; of state only the controller), filtered, in id order; pass "
            "next_cursor back for more.", _FILTERS)
    def list(self, call: Call, created_by="", kind="", has_standing=None, can_execute=None, metadata=None,
             include_deleted=False, limit=100, cursor="") -> dict:
        items, nxt = self.kernel.list_artifacts(
            call.conn, created_by=created_by, kind=kind, has_standing=has_standing, can_execute=can_execute,
            metadata_equals=metadata, include_deleted=include_deleted, page_size=limit, cursor=cursor)
        return {"artifacts": items, "next_cursor": nxt}

    @method("Case-insensitive search over ids, metadata and interface descriptions.",
            {"query": {"type": "string", "minLength": 1, "maxLength": 200}, "limit": LIMIT,
             "cursor": {"type": "string", "maxLength": 256}}, ("query",))
    def search(self, call: Call, query: str, limit: int = 50, cursor: str = "") -> dict:
        items, nxt = self.kernel.list_artifacts(call.conn, query=query, page_size=limit, cursor=cursor)
        return {"artifacts": items, "next_cursor": nxt}

    @method("Everything about one artifact except its content and, of its state, all but the controller "
            "(tombstones included). Public whatever its contract says about read.",
            {"artifact_id": ID}, ("artifact_id",))
    def get_metadata(self, call: Call, artifact_id: str) -> dict:
        return artifacts.require(call.conn, artifact_id, allow_deleted=True).summary()

    @method("Spawn a new agent (standing + code) whose configuration is `config` (see the handbook). It starts "
            "with nothing - no scrip, compute rate and capacity 0, no disk, no LLM budget - and you control "
            "its configuration artifact (state.controller = you; `contract` default genesis_self_owned, under "
            "which the agent itself reads its configuration and you write it). Fund it with "
            "genesis_ledger.transfer and genesis_rights_registry.transfer_quota; it is started once it has a "
            "non-zero compute rate. Its configuration bytes count against your disk quota.",
            {"agent_id": ID, "config": {"type": "string"}, "contract": ID}, ("agent_id", "config"))
    def create_agent(self, call: Call, agent_id: str, config: str, contract: str = "") -> dict:
        from server.kernel.kernel import AGENT_CONTRACT

        creator = call.caller
        artifacts.check_id(agent_id, "agent_id")
        if agent_id.startswith(artifacts.RESERVED_PREFIX):
            raise invalid("agent_id", "ids starting with 'genesis_' are reserved")
        if artifacts.get(call.conn, agent_id) is not None:
            raise KernelError(Reason.ALREADY_EXISTS, f"id {agent_id!r} is taken", field="agent_id")
        size = len(config.encode())
        limit = self.kernel.config.limits["max_content_bytes"]
        if size > limit:
            raise invalid("config", f"at most {limit} bytes")
        contract_id = contract or AGENT_CONTRACT
        artifacts.check_id(contract_id, "contract")
        self.kernel._require_contract(call.conn, contract_id)
        if ledger.balance(call.conn, creator) is None:
            raise KernelError(Reason.ACCESS_DENIED, f"{creator} is not a principal; only principals spawn agents")
        resources.adjust_disk(call.conn, creator, size)  # QUOTA_EXCEEDED: nothing created
        art = Artifact(
            id=agent_id, content=config, created_by=creator, access_contract_id=contract_id, has_standing=True,
            can_execute=True, interface=[], metadata={"kind": "agent", "spawned_by": creator},
            state={"controller": creator}, version=1, created_at=call.now, updated_at=call.now,
            size_bytes=size, billed_to=creator)
        artifacts.insert(call.conn, art)
        ledger.open_account(call.conn, agent_id)
        resources.create_principal(call.conn, agent_id, now=call.now, compute_rate=0.0, compute_capacity=0.0,
                                   disk_quota=0, llm_budget=0)
        events.append(call.conn, "agent.created", principal_id=creator, artifact_id=agent_id, now=call.now,
                      related=[agent_id], data={"endowment": 0, "spawned_by": creator, "controller": creator})
        return {"agent_id": agent_id, "controller": creator, "access_contract_id": contract_id,
                "size_bytes": size, "agent": art.summary()}
