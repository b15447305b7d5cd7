"""An agent's memory: an artifact it controls, `<agent_id>.memory`, so notes persist with
the world (and survive restarts of the agent's process or container).

Content (JSON):

    {"agent": "alice",
     "notes":   [{"at": "<server time, ISO>", "text": "..."}, ...],        # newest last, capped
     "reports": [{"at": ..., "type": "agent.repeated_failures", ...}, ...]} # newest last, capped

The artifact is created with the `genesis_private` contract (only its controller - the
agent - reads or writes it) and `metadata.kind = "memory"`. Every change is one write
(it costs the agent compute and disk like any other write).
"""

from __future__ import annotations

import json
from typing import Any

from agent_runtime.errors import EcologyError

MAX_REPORTS = 20


class Memory:
    def __init__(self, client, agent_id: str, keep: int = 50) -> None:
        self.client = client
        self.agent_id = agent_id
        self.artifact_id = f"{agent_id}.memory"
        self.keep = max(1, int(keep))
        self.notes: list[dict] = []
        self.reports: list[dict] = []
        self.usable = True       # False when the id is taken by an artifact we may not write

    def load(self) -> None:
        """Read the notes back (after a restart). A missing artifact is an empty memory."""
        try:
            art = self.client.read(self.artifact_id)
        except EcologyError as e:
            if e.reason in ("NOT_FOUND", "DELETED"):
                return
            if e.reason == "ACCESS_DENIED":
                self.usable = False
                return
            raise
        try:
            data = json.loads(art.content)
        except ValueError:
            return
        if isinstance(data, dict):
            self.notes = [n for n in data.get("notes", []) if isinstance(n, dict)][-self.keep:]
            self.reports = [r for r in data.get("reports", []) if isinstance(r, dict)][-MAX_REPORTS:]

    def content(self) -> str:
        return json.dumps({"agent": self.agent_id, "notes": self.notes[-self.keep:],
                           "reports": self.reports[-MAX_REPORTS:]}, ensure_ascii=False)

    def save(self) -> Any:
        if not self.usable:
            raise EcologyError(_code("PERMISSION_DENIED"), "ACCESS_DENIED",
                               f"{self.artifact_id} is not writable by {self.agent_id}")
        try:
            resp = self.client.write(self.artifact_id, self.content(), access_contract_id="genesis_private",
                                     metadata={"kind": "memory", "agent": self.agent_id})
        except EcologyError as e:
            if e.reason in ("ACCESS_DENIED", "DELETED"):
                self.usable = False
            raise
        return resp

    def add_note(self, text: str, at: str) -> Any:
        self.notes.append({"at": at, "text": text})
        self.notes = self.notes[-self.keep:]
        return self.save()

    def add_report(self, record: dict) -> Any:
        self.reports.append(record)
        self.reports = self.reports[-MAX_REPORTS:]
        return self.save()


def _code(name: str):
    import grpc

    return getattr(grpc.StatusCode, name)
