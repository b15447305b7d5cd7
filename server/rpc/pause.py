"""The operator's run control: pause, resume and step the world (Admin.Pause/Resume/Step).

While paused, agents' mutating calls (WORLD_MUTATIONS, except invocations of the read-only
genesis methods READ_ONLY_GENESIS) are refused UNAVAILABLE / WORLD_PAUSED
with a RetryInfo, before any work is done; reads go on; the mint resolves no round. `step(n)`
lets the next n mutating calls through without resuming. The state is the server process's
(a restarted server runs); every change is recorded as an event by the Admin service.

Stopped agents (Admin.StopAgent / StartAgent): `stopped` holds the ids of agents the
operator stopped; every call made with such an agent's credential - reads and streams too -
is refused FAILED_PRECONDITION / AGENT_STOPPED (no RetryInfo). Unlike the pause this is
durable: server/storage/stopped.py keeps it, and the server loads it at start.
"""

from __future__ import annotations

from server.errors import KernelError, Reason
from server.rpc.guard import CALLER

WORLD_MUTATIONS = frozenset({
    "/ecology.v1.World/WriteArtifact",
    "/ecology.v1.World/DeleteArtifact",
    "/ecology.v1.World/InvokeArtifact",
})
RETRY_AFTER_SECONDS = 1.0
# Genesis methods that only read: invoking them is a read, allowed in a paused world.
# (agent_runtime/client.py READ_ONLY_METHODS is the same list; a test keeps them equal.)
READ_ONLY_GENESIS = frozenset({
    ("genesis_ledger", "balance"), ("genesis_ledger", "history"), ("genesis_escrow", "listings"),
    ("genesis_store", "list"), ("genesis_store", "search"), ("genesis_store", "get_metadata"),
    ("genesis_event_log", "read"), ("genesis_rights_registry", "quotas"), ("genesis_handbook", "pages"),
    ("genesis_handbook", "read"), ("genesis_llm", "models"), ("genesis_llm", "budget"),
    ("genesis_oracle", "status"), ("genesis_debt", "status"), ("genesis_debt", "list"),
})


class WorldGate:
    def __init__(self) -> None:
        self.paused = False
        self.steps_left = 0
        self.stopped: set[str] = set()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.steps_left = 0

    def step(self, calls: int) -> None:
        if not isinstance(calls, int) or calls <= 0:
            raise KernelError(Reason.INVALID_ARGS, "calls must be a positive integer", field="calls")
        if not self.paused:
            raise KernelError(Reason.CONFLICT, "the world is not paused; Step lets calls through a paused world",
                              field="calls")
        self.steps_left += calls

    def admit(self, method: str, request) -> None:
        """Called by the guard for every admitted agent call (server/rpc/guard.py), with
        CALLER set to the calling agent."""
        if self.stopped:
            caller = CALLER.get(None)
            if caller is not None and caller.principal_id in self.stopped:
                raise KernelError(Reason.AGENT_STOPPED, f"agent {caller.principal_id} is stopped by the operator "
                                  "(ecology agent start resumes it)")
        if not self.paused or method not in WORLD_MUTATIONS:
            return
        if method.endswith("/InvokeArtifact") and (request.artifact_id, request.method) in READ_ONLY_GENESIS:
            return
        if self.steps_left > 0:
            self.steps_left -= 1
            return
        raise KernelError(Reason.WORLD_PAUSED, "the world is paused by its operator; reads still work",
                          retry_after=RETRY_AFTER_SECONDS)
