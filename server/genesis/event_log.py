from __future__ import annotations

from server.genesis.base import COUNT, LIMIT, Call, Genesis, method
from server.kernel import events


class EventLogArtifact(Genesis):
    id = "genesis_event_log"
    description = "The world's history: every event, densely numbered. Subscribe streams the same events live."

    @method("Events with seq > after, oldest first; `types` filters (\"escrow.*\" matches a prefix).",
            {"after": COUNT, "limit": LIMIT,
             "types": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 64}})
    def read(self, call: Call, after: int = 0, limit: int = 100, types: list | None = None) -> dict:
        evs = events.read(call.conn, after=after, limit=limit, types=types or ())
        return {"events": evs, "last_seq": events.last_seq(call.conn)}
