"""Genesis artifacts: the system services, created at world start and invoked like any
other artifact. One module per artifact."""

from __future__ import annotations

from server.genesis import contracts
from server.genesis.base import Genesis
from server.genesis.debt import DebtArtifact
from server.genesis.escrow import EscrowArtifact
from server.genesis.event_log import EventLogArtifact
from server.genesis.handbook import HandbookArtifact
from server.genesis.ledger import LedgerArtifact
from server.genesis.llm import LlmArtifact
from server.genesis.oracle import OracleArtifact
from server.genesis.rights_registry import RightsRegistryArtifact
from server.genesis.store import StoreArtifact


def build_genesis(kernel) -> dict[str, Genesis]:
    items: list[Genesis] = [
        LedgerArtifact(kernel), EscrowArtifact(kernel), StoreArtifact(kernel), EventLogArtifact(kernel),
        RightsRegistryArtifact(kernel), HandbookArtifact(kernel), LlmArtifact(kernel), DebtArtifact(kernel),
        OracleArtifact(kernel),
        *contracts.build(kernel),
    ]
    return {g.id: g for g in items}
