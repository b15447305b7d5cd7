"""Agent side of Agent Ecology: the client SDK (client.py, errors.py); it depends only
on the generated protos (ecology.v1)."""

from agent_runtime.client import AdminClient, WorldClient
from agent_runtime.errors import EcologyError

__all__ = ["AdminClient", "WorldClient", "EcologyError"]
