"""Agent side of Agent Ecology: the client SDK (client.py, errors.py); it depends only
on the generated protos (ecology.v1)."""

from agent_runtime.client import AdminClient, TlsOptions, WorldClient
from agent_runtime.errors import EcologyError

__all__ = ["AdminClient", "TlsOptions", "WorldClient", "EcologyError"]
