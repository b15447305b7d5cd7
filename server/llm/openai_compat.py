"""A backend for any OpenAI-compatible endpoint: POST {base_url}/chat/completions.

Sends model, messages, max_tokens (and response_format when given) with
`Authorization: Bearer <key>` when a key is configured; reads
`choices[0].message.content` and `usage.prompt_tokens` / `usage.completion_tokens`.
An answer without usage is charged by the character estimate; an answer that is not
JSON or has no choices/content is a BackendError (nothing is charged). HTTP 429 and 503
carry `Retry-After` (default 1 s) through to the caller as RetryInfo.
"""

from __future__ import annotations

import json

import httpx

from server.llm import pricing
from server.llm.backend import BackendError, Completion, Request

DEFAULT_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0


def _retry_after(response: httpx.Response) -> float:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return DEFAULT_RETRY_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_SECONDS)


def _snippet(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _count(usage: dict, key: str) -> int:
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BackendError(f"malformed answer: usage.{key} is not a non-negative integer ({value!r})")
    return value


def parse(body: bytes, request: Request) -> Completion:
    """A chat-completion answer as a Completion, or BackendError saying what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BackendError(f"malformed answer: not JSON ({_snippet(body.decode(errors='replace'))!r})") from None
    if not isinstance(data, dict):
        raise BackendError("malformed answer: not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendError("malformed answer: no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise BackendError("malformed answer: choices[0].message.content is not a string")
    usage = data.get("usage")
    if isinstance(usage, dict) and ("prompt_tokens" in usage or "completion_tokens" in usage):
        prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    else:  # no usage reported: charge the character estimate
        prompt, completion = pricing.prompt_tokens(request.messages), pricing.text_tokens(content)
    model = data.get("model") if isinstance(data.get("model"), str) and data.get("model") else request.model
    return Completion(content=content, model=model, prompt_tokens=prompt, completion_tokens=completion)


class OpenAICompatBackend:
    name = "openai"

    def __init__(self, base_url: str, api_key: str, timeout_seconds: float) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout_seconds
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # created on the event loop that uses it
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout))
        return self._client

    async def complete(self, request: Request) -> Completion:
        body = {"model": request.model, "messages": request.messages, "max_tokens": request.max_tokens}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        try:
            response = await self._http().post(self.url, json=body, headers=self.headers)
        except httpx.TimeoutException:
            raise BackendError(f"no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach the endpoint: {type(e).__name__}: {_snippet(str(e))}") from None
        if response.status_code in (429, 503):
            raise BackendError(f"the endpoint is busy (HTTP {response.status_code})",
                               retry_after=_retry_after(response))
        if response.status_code != 200:
            raise BackendError(f"HTTP {response.status_code}: {_snippet(response.text)}")
        return parse(response.content, request)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
