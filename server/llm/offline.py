"""The built-in offline model: no network, no key, fully deterministic.

The answer is a function of the messages alone (a SHA-256 of their canonical JSON), so
the same prompt always gets the same reply and the same usage. When JSON is wanted -
`response_format` of type json_object or json_schema, or a message that mentions JSON -
the reply is a valid JSON object: a cautious action,
`{"action": "sleep", "seconds": 1..10, "reason": "..."}` - or, when a system message asks for a
`"score"` (the mint's LLM scorer, server/oracle/scoring.py), `{"score": 0..100, "reason": "..."}`.
Otherwise it is a short plain reply that quotes the last message. Usage is counted from characters (server/llm/pricing.py),
and the reply is cut to `max_tokens` (a JSON reply falls back to its shortest form).
"""

from __future__ import annotations

import hashlib
import json
import re

from server.llm import pricing
from server.llm.backend import Completion, Request

_JSON_WORD = re.compile(r"\bjson\b", re.IGNORECASE)

REASONS = (
    "nothing urgent to do; saving my budget",
    "waiting for the market to move",
    "letting my compute refill before acting",
    "watching for new escrow listings",
    "no clear opportunity yet; observing",
    "waiting for a reply from another agent",
)

CLOSINGS = (
    "I would start by reading the handbook and checking my balance.",
    "A small, cheap step first seems wise; then look at what others list.",
    "Building a useful tool and pricing it modestly is a sound plan.",
    "Before spending, compare prices in the escrow listings.",
    "Keeping notes as artifacts helps to remember what worked.",
)


def wants_json(messages: list[dict], response_format: dict | None) -> bool:
    if response_format and response_format.get("type") in ("json_object", "json_schema"):
        return True
    return any(_JSON_WORD.search(m.get("content") or "") for m in messages)


def asks_for_score(messages: list[dict]) -> bool:
    """A scoring request (the mint's LLM scorer): a system message asking for a "score"."""
    return any(m.get("role") == "system" and '"score"' in (m.get("content") or "") for m in messages)


def digest(messages: list[dict]) -> bytes:
    canonical = json.dumps([[m.get("role"), m.get("content")] for m in messages],
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def reply(messages: list[dict], response_format: dict | None, max_tokens: int) -> str:
    h = digest(messages)
    if wants_json(messages, response_format) and asks_for_score(messages):
        return json.dumps({"score": h[3] % 101, "reason": "offline model: a deterministic score"})
    if wants_json(messages, response_format):
        action = {"action": "sleep", "seconds": 1 + h[0] % 10,
                  "reason": f"offline model: {REASONS[h[1] % len(REASONS)]}"}
        text = json.dumps(action)
        if pricing.text_tokens(text) > max_tokens:
            text = json.dumps({"action": "sleep", "seconds": action["seconds"]}, separators=(",", ":"))
        return text
    last = (messages[-1].get("content") or "").strip().replace("\n", " ") if messages else ""
    quoted = last if len(last) <= 80 else last[:77] + "..."
    text = (f"(offline model) You said: \"{quoted}\". {CLOSINGS[h[2] % len(CLOSINGS)]}")
    return text[: max_tokens * pricing.CHARS_PER_TOKEN]


class OfflineBackend:
    name = "offline"

    async def complete(self, request: Request) -> Completion:
        content = reply(request.messages, request.response_format, request.max_tokens)
        return Completion(content=content, model=request.model,
                          prompt_tokens=pricing.prompt_tokens(request.messages),
                          completion_tokens=pricing.text_tokens(content))

    async def aclose(self) -> None:
        return None
