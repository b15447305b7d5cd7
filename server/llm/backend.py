"""What a backend is: it takes a Request and returns a Completion, or raises
BackendError. Backends are awaited on the event loop, never in the writer thread."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from server.config import ConfigError


@dataclass(frozen=True)
class Request:
    model: str
    messages: list[dict]        # [{"role", "content"}]
    max_tokens: int
    response_format: dict | None


@dataclass(frozen=True)
class Completion:
    content: str
    model: str                  # as the backend named it
    prompt_tokens: int
    completion_tokens: int


class BackendError(Exception):
    """The backend failed: unreachable, timed out, an HTTP error, or an answer that is not
    a chat completion. `retry_after` (seconds) only when it said to come back later
    (HTTP 429 or 503)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Backend(Protocol):
    name: str

    async def complete(self, request: Request) -> Completion: ...

    async def aclose(self) -> None: ...


def make_backend(llm: dict) -> Backend:
    """The backend that config `[llm]` names. A missing API key is a configuration error."""
    if llm["backend"] == "offline":
        from server.llm.offline import OfflineBackend

        return OfflineBackend()
    from server.llm.openai_compat import OpenAICompatBackend

    key = ""
    if llm["api_key_env"]:
        key = os.environ.get(llm["api_key_env"], "")
        if not key:
            raise ConfigError(
                f"config key llm.api_key_env: environment variable {llm['api_key_env']} is not set "
                "(set it, or set api_key_env = \"\" for an endpoint that needs no key)")
    return OpenAICompatBackend(llm["base_url"], key, llm["timeout_seconds"])
