"""The LLM brain: one model call per decision, through genesis_llm.complete (metered by
the world: the agent pays from its llm_budget; it has no network of its own).

The prompt is built from
* the agent's configuration: its personality and its prompt (system message);
* the rules in brief and the action language (actions.ACTIONS_DOC);
* the injected time and state: the server's UTC time, scrip, compute (and debt), the LLM
  budget, disk, and whatever else GetState reports (e.g. the next mint resolution);
* recent events, its own memory notes, and its recent actions with their results.

The answer is asked for as a JSON object (`response_format: {"type": "json_object"}`) and
parsed into an action (actions.parse_action). A malformed answer is retried ONCE, with the
model's answer and the parse error appended to the conversation; if the second answer is
unusable too, the brain sleeps `loop.fallback_sleep` seconds instead (and logs it).

An exhausted llm_budget (INSUFFICIENT_RESOURCES without RetryInfo) freezes only this
agent's thinking: the brain then sleeps until someone gives it budget (a
`quota.transferred` event concerning it). Other failures are raised to the loop, which
backs off.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from agent_runtime.actions import ACTIONS_DOC, ActionError, parse_action
from agent_runtime.errors import EcologyError

RULES = """\
The world in brief: everything is an artifact (id, content, metadata, interface); agents are
artifacts with standing. Verbs: read, write, delete, invoke. Scrip is the currency (integers, conserved);
transfers are final. Every verb costs compute, a token bucket that refills over time; if you overspend
you wait until it is back at zero. Disk bytes and your LLM budget do not refill. Tools are executable
artifacts: invoking one pays its metadata.price to its controller. genesis_escrow sells control of
artifacts; genesis_store searches; genesis_ledger moves scrip; genesis_handbook explains everything
(invoke it with method "read", args {"page": "rules"}). Artifacts others find useful earn you scrip."""

FIX = ("Your answer could not be used: {error}. Reply again with exactly ONE JSON object with an "
       "\"action\" key, using one of the actions listed above and nothing else.")

Complete = Callable[..., dict]


def _fmt_event(e: dict) -> str:
    data = json.dumps(e.get("data") or {}, ensure_ascii=False, default=str)
    if len(data) > 160:
        data = data[:160] + "..."
    target = f" on {e['artifact_id']}" if e.get("artifact_id") else ""
    return f"- #{e['seq']} {e['at']} {e['type']} by {e['principal_id']}{target} {data}"


class LLMBrain:
    def __init__(self, config, complete: Complete, *, log=None) -> None:
        self.complete = complete
        self.log = log
        self.stats = {"calls": 0, "retries": 0, "fallbacks": 0, "cost_micro_usd": 0}
        # request ids of the genesis_llm calls made since the last take_llm_request_ids():
        # the decision trace links to the prompts and answers the gateway recorded under them.
        self._request_ids: list[str] = []
        self.configure(config)

    def configure(self, config) -> None:
        self.config = config

    # -- prompt ------------------------------------------------------------------------

    def system_prompt(self, obs) -> str:
        cfg = self.config
        parts = [f"You are {obs.agent_id}, an autonomous agent in Agent Ecology, a shared economy of LLM agents.",
                 RULES, f"Your personality: {cfg.personality}."]
        if cfg.prompt:
            parts.append("Your instructions:\n" + cfg.prompt)
        if cfg.partners:
            parts.append("Your partners: " + ", ".join(cfg.partners) + ".")
        parts.append(ACTIONS_DOC)
        return "\n\n".join(parts)

    def user_prompt(self, obs) -> str:
        c = obs.compute
        lines = [f"Server time (UTC): {obs.now_iso}", f"Your id: {obs.agent_id}", f"Scrip: {obs.scrip}",
                 f"Compute: {c['balance']:g} of {c['capacity']:g}, refilling {c['rate']:g}/s"
                 + (f" (in debt: usable again in {obs.in_debt_for:.2f}s)" if obs.in_debt_for > 0 else "")]
        llm = obs.stock.get("llm_budget")
        if llm:
            lines.append(f"LLM budget remaining: {llm['quota']} micro-USD (spent {llm['used']})")
        disk = obs.stock.get("disk_bytes")
        if disk:
            lines.append(f"Disk: {disk['used']} of {disk['quota']} bytes")
        for key, value in sorted(obs.extras.items()):
            lines.append(f"{key.replace('_', ' ').capitalize()}: {json.dumps(value, default=str)}")
        lines.append(f"Actions taken under this configuration: {obs.actions_done}")
        lines.append("")
        lines.append("Recent events (oldest first):")
        lines += [_fmt_event(e) for e in obs.events] or ["- none"]
        lines.append("")
        lines.append("Your memory notes (oldest first):")
        lines += [f"- {n.get('at', '')}: {n.get('text', '')}" for n in obs.notes[-20:]] or ["- none"]
        lines.append("")
        lines.append("Your recent actions and their results (oldest first):")
        for h in obs.history:
            outcome = (f"ok: {json.dumps(h.get('result'), default=str, ensure_ascii=False)}" if h["ok"]
                       else f"FAILED {h['error']['reason']}: {h['error']['message']}")
            lines.append(f"- {json.dumps(h['action'], ensure_ascii=False)} -> {outcome}")
        if not obs.history:
            lines.append("- none")
        lines.append("")
        lines.append("What is your next action? Reply with one JSON object.")
        return "\n".join(lines)

    def messages(self, obs) -> list[dict]:
        return [{"role": "system", "content": self.system_prompt(obs)},
                {"role": "user", "content": self.user_prompt(obs)}]

    # -- deciding ----------------------------------------------------------------------

    def _ask(self, messages: list[dict]) -> str:
        self.stats["calls"] += 1
        request_id = uuid.uuid4().hex
        self._request_ids.append(request_id)
        answer = self.complete(messages, model=self.config.model or None,
                               max_tokens=int(self.config.get("max_tokens")) or None,
                               response_format={"type": "json_object"}, request_id=request_id)
        self.stats["cost_micro_usd"] += int(answer.get("cost_micro_usd") or 0)
        content = answer.get("content")
        return content if isinstance(content, str) else ""

    def take_llm_request_ids(self) -> list[str]:
        ids, self._request_ids = self._request_ids, []
        return ids

    def decide(self, obs) -> dict:
        messages = self.messages(obs)
        try:
            answer = self._ask(messages)
            try:
                return parse_action(answer)
            except ActionError as first:
                self.stats["retries"] += 1
                self._log("llm_answer_malformed", attempt=1, error=str(first), answer=answer[:300])
                retry = messages + [{"role": "assistant", "content": answer or "(empty)"},
                                    {"role": "user", "content": FIX.format(error=first)}]
                answer = self._ask(retry)
                try:
                    return parse_action(answer)
                except ActionError as second:
                    self.stats["fallbacks"] += 1
                    self._log("llm_answer_malformed", attempt=2, error=str(second), answer=answer[:300],
                              fallback="sleep")
                    return {"action": "sleep", "seconds": self.config.get("fallback_sleep"),
                            "reason": f"the model answered unusably twice ({second})"[:300]}
        except EcologyError as e:
            if e.reason == "INSUFFICIENT_RESOURCES" and e.retry_after is None:
                self._log("llm_budget_exhausted", message=e.message[:200])
                return {"action": "sleep_until_event", "types": ["quota.transferred"], "principal_ids": ["me"],
                        "timeout": 600, "reason": "my LLM budget is used up; waiting for someone to give me more"}
            raise

    def _log(self, event: str, **fields) -> None:
        if self.log is not None:
            self.log.warning(event, **fields)
