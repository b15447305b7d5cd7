"""Token estimates and prices. Everything is an integer; costs round up.

Prices are integer micro-USD per 1000 tokens (config `llm.models`). Before a call the
prompt's tokens are estimated from its characters (4 characters a token, rounded up,
plus a small per-message overhead), and the worst case assumes the model writes all
`max_tokens`. After the call, the usage the backend reports is what is charged.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4
# Chat formats add a few tokens per message (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 4


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def text_tokens(text: str) -> int:
    """Tokens of a text, estimated from its characters (rounded up)."""
    return ceil_div(len(text), CHARS_PER_TOKEN)


def prompt_tokens(messages: list[dict]) -> int:
    """Estimated prompt tokens of chat messages."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return ceil_div(chars, CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(messages)


def cost_micro_usd(prices: dict, prompt: int, completion: int) -> int:
    """Cost in micro-USD of `prompt` + `completion` tokens at a model's prices (rounded up)."""
    return ceil_div(prompt * prices["prompt_micro_usd_per_1k"]
                    + completion * prices["completion_micro_usd_per_1k"], 1000)
