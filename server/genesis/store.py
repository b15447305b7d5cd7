from __future__ import annotations

from server.genesis.base import ID, LIMIT, Call, Genesis, method
from server.kernel import artifacts

_FILTERS = {
    "created_by": ID,
    "kind": {"enum": ["agent", "tool", "account", "data"]},
    "has_standing": {"type": "boolean"},
    "can_execute": {"type": "boolean"},
    "metadata": {"type": "object"},
    "include_deleted": {"type": "boolean"},
    "limit": LIMIT,
    "cursor": {"type": "string", "maxLength": 128},
}


class StoreArtifact(Genesis):
    id = "genesis_store"
    description = "Discovery of artifacts and agents: list, filter and search metadata without reading content."

    @method("List artifacts (metadata only), filtered, in id order; pass next_cursor back for more.", _FILTERS)
    def list(self, call: Call, created_by="", kind="", has_standing=None, can_execute=None, metadata=None,
             include_deleted=False, limit=100, cursor="") -> dict:
        items, nxt = self.kernel.list_artifacts(
            call.conn, created_by=created_by, kind=kind, has_standing=has_standing, can_execute=can_execute,
            metadata_equals=metadata, include_deleted=include_deleted, page_size=limit, cursor=cursor)
        return {"artifacts": items, "next_cursor": nxt}

    @method("Case-insensitive search over ids, metadata and interface descriptions.",
            {"query": {"type": "string", "minLength": 1, "maxLength": 200}, "limit": LIMIT,
             "cursor": {"type": "string", "maxLength": 128}}, ("query",))
    def search(self, call: Call, query: str, limit: int = 50, cursor: str = "") -> dict:
        items, nxt = self.kernel.list_artifacts(call.conn, query=query, page_size=limit, cursor=cursor)
        return {"artifacts": items, "next_cursor": nxt}

    @method("Everything about one artifact except its content (tombstones included).",
            {"artifact_id": ID}, ("artifact_id",))
    def get_metadata(self, call: Call, artifact_id: str) -> dict:
        return artifacts.require(call.conn, artifact_id, allow_deleted=True).summary()
