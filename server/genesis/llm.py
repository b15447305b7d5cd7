"""genesis_llm: the metered LLM gateway (DESIGN.md "LLM access").

`complete` is the one genesis method that waits on the network, so it does not run in
the kernel's writer thread: the RPC layer sends InvokeArtifact(genesis_llm, complete)
to server/llm/gateway.py, which reserves (a kernel op: the ordinary invoke checks, then
`plan` below and the budget hold), awaits the backend, and reconciles. Reached through
the ordinary invoke path - a nested invoke() from artifact code - `complete` fails
NOT_NESTABLE: that path runs inside the writer's transaction, which cannot wait for a
model. `models` and `budget` are ordinary methods.

The world's tokens-per-minute bucket lives here, in memory (a restart refills it); it
is touched only by ops in the writer thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import KernelError, Reason, invalid
from server.genesis.base import Call, Genesis, method
from server.kernel.buckets import TokenBucket
from server.llm import pricing, reservations

ID = "genesis_llm"

MESSAGE = {
    "type": "object",
    "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
    "required": ["role", "content"],
    "additionalProperties": False,
}
COMPLETE_ARGS = {
    "messages": {"type": "array", "items": MESSAGE, "minItems": 1, "maxItems": 256},
    "model": {"type": "string", "minLength": 1, "maxLength": 128},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2**31},
    "response_format": {
        "type": "object",
        "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}},
        "required": ["type"],
    },
}


@dataclass(frozen=True)
class Plan:
    """A validated call and its worst case."""

    model: str
    messages: list[dict]
    max_tokens: int
    response_format: dict | None
    prices: dict
    prompt_tokens: int      # estimated
    tokens: int             # estimated prompt + max_tokens
    cost: int               # worst-case micro-USD

    def actual_cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        return pricing.cost_micro_usd(self.prices, prompt_tokens, completion_tokens)


class LlmArtifact(Genesis):
    id = ID
    description = ("The metered LLM gateway. `complete` reserves the worst-case cost from your llm_budget "
                   "(integer micro-USD) and the world's tokens-per-minute allowance, calls the model, then "
                   "charges the actual cost from the reported usage and gives back the rest. A failed model "
                   "call costs nothing. Call it directly, not from artifact code.")

    def __init__(self, kernel) -> None:
        super().__init__(kernel)
        cfg = kernel.config.llm
        self.settings = cfg
        self.tpm = TokenBucket.full(cfg["tokens_per_minute"] / 60.0, float(cfg["tokens_per_minute"]),
                                    kernel.clock())

    # -- the reserve step (called by server/llm/gateway.py in the writer thread) --------

    def plan(self, args: dict) -> Plan:
        """Model, max_tokens and the worst case of already schema-checked arguments."""
        cfg = self.settings
        model = args.get("model") or cfg["default_model"]
        if model not in cfg["models"]:
            raise invalid("model", f"unknown model {model!r}; configured: {', '.join(sorted(cfg['models']))}")
        max_tokens = args.get("max_tokens") or cfg["default_max_tokens"]
        if max_tokens > cfg["max_tokens_cap"]:
            raise invalid("max_tokens", f"at most {cfg['max_tokens_cap']} (llm.max_tokens_cap)")
        messages = [{"role": m["role"], "content": m["content"]} for m in args["messages"]]
        prices = cfg["models"][model]
        prompt = pricing.prompt_tokens(messages)
        return Plan(model=model, messages=messages, max_tokens=max_tokens,
                    response_format=args.get("response_format"), prices=prices, prompt_tokens=prompt,
                    tokens=prompt + max_tokens, cost=pricing.cost_micro_usd(prices, prompt, max_tokens))

    def take_tokens(self, tokens: int, now: float) -> None:
        """Take a call's estimated tokens from the world's bucket, or fail RATE_LIMITED
        with the exact seconds until they fit."""
        if tokens > self.tpm.capacity:
            raise invalid("max_tokens", f"this call may use {tokens} tokens, more than llm.tokens_per_minute "
                                        f"({self.tpm.capacity:g}) allows at once; lower max_tokens or shorten it")
        wait = self.tpm.try_take(tokens, now)
        if wait > 0:
            raise KernelError(
                Reason.RATE_LIMITED,
                f"the world's LLM allowance of {self.tpm.capacity:g} tokens per minute is used up; "
                f"{tokens} tokens fit again in {wait:.3f}s", retry_after=wait)

    def return_tokens(self, tokens: int, now: float) -> None:
        """Adjust the bucket after a call: give back unused estimated tokens (positive),
        or take what the model used beyond the estimate (negative, may leave debt)."""
        if tokens > 0:
            self.tpm.refill(now)
            self.tpm.balance = min(self.tpm.capacity, self.tpm.balance + tokens)
        elif tokens < 0:
            self.tpm.force_spend(-tokens, now)

    # -- methods ----------------------------------------------------------------------

    @method("Chat completion. messages: [{role: system|user|assistant, content}]; model (default: see "
            "`models`); max_tokens (default and cap: see `models`); response_format e.g. {type: json_object}. "
            "Returns {content, model, usage: {prompt_tokens, completion_tokens}, cost_micro_usd, "
            "budget_remaining_micro_usd}. Fails INSUFFICIENT_RESOURCES (no retry) when your llm_budget cannot "
            "cover the worst case, RATE_LIMITED (with retry) when the world's tokens-per-minute are used up, "
            "LLM_UNAVAILABLE when the model failed (nothing charged), NOT_NESTABLE from artifact code.",
            COMPLETE_ARGS, ("messages",))
    def complete(self, call: Call, **args) -> dict:
        raise KernelError(
            Reason.NOT_NESTABLE,
            "genesis_llm.complete cannot be invoked from artifact code: artifact code runs inside the "
            "kernel's write transaction, which cannot wait for a model; call it from the agent instead")

    @method("The configured models and their prices (integer micro-USD per 1000 tokens), the default model, "
            "max_tokens default and cap, and the world's tokens-per-minute limit.")
    def models(self, call: Call) -> dict:
        cfg = self.settings
        return {
            "backend": cfg["backend"],
            "default_model": cfg["default_model"],
            "models": [{"name": name, **prices} for name, prices in sorted(cfg["models"].items())],
            "default_max_tokens": cfg["default_max_tokens"],
            "max_tokens_cap": cfg["max_tokens_cap"],
            "tokens_per_minute": cfg["tokens_per_minute"],
        }

    @method("Your LLM budget in micro-USD: remaining (spendable), spent, and held by calls in flight; and the "
            "world's tokens available now.")
    def budget(self, call: Call) -> dict:
        have = reservations.budget(call.conn, call.caller)
        if have is None:
            raise KernelError(Reason.NOT_FOUND, f"{call.caller!r} has no llm_budget")
        reserved, in_flight = reservations.held(call.conn, call.caller)
        return {
            "principal_id": call.caller, "remaining_micro_usd": have[0], "spent_micro_usd": have[1],
            "reserved_micro_usd": reserved, "calls_in_flight": in_flight,
            "tokens_available": int(self.tpm.level(call.now)), "tokens_per_minute": self.settings["tokens_per_minute"],
        }
