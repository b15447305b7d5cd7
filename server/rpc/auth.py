"""Credentials: bearer tokens -> principals. Only SHA-256 hashes of agent tokens are
stored; the map is loaded at start and extended when an agent is created."""

from __future__ import annotations

import hmac

from server.kernel.kernel import hash_token
from server.storage.store import Store


class Credentials:
    def __init__(self, admin_token: str) -> None:
        self._admin_hash = hash_token(admin_token)
        self._by_hash: dict[str, str] = {}
        self._rpc_limits: dict[str, tuple[float | None, float | None]] = {}

    def load(self, conn: Store) -> None:
        self._by_hash = conn.credentials_all()
        self._rpc_limits = conn.rpc_limits_all()

    def add(self, token: str, principal_id: str, rpc_rate=None, rpc_burst=None) -> None:
        self._by_hash[hash_token(token)] = principal_id
        if rpc_rate or rpc_burst:
            self._rpc_limits[principal_id] = (rpc_rate, rpc_burst)

    def principal_for(self, token: str) -> str | None:
        return self._by_hash.get(hash_token(token))

    def is_admin(self, token: str) -> bool:
        return hmac.compare_digest(hash_token(token), self._admin_hash)

    def rpc_limits(self, principal_id: str) -> tuple[float | None, float | None] | None:
        return self._rpc_limits.get(principal_id)
