"""Brains turn an Observation (loop.py) into one action of the action language (actions.py).

A brain has `decide(obs) -> dict`, `configure(config)` (the configuration changed, same
brain kind) and optionally `feedback(action, result)` (the outcome of the action it chose:
{"ok": True, "value": ...} or {"ok": False, "reason": ..., "message": ...}).

    scripted  - brains/scripted.py: a strategy per personality, no LLM at all (offline).
    llm       - brains/llm.py: prompts a model through genesis_llm.complete.
    plan      - brains/plan.py: the configuration's "plan", action by action.
"""

from __future__ import annotations


def make_brain(config, loop):
    """The brain named by `config.brain`, wired to `loop` (its client, logger, agent id)."""
    if config.brain == "llm":
        from agent_runtime.brains.llm import LLMBrain

        return LLMBrain(config, loop.client.complete, log=loop.log)
    if config.brain == "plan":
        from agent_runtime.brains.plan import PlanBrain

        return PlanBrain(config)
    from agent_runtime.brains.scripted import ScriptedBrain

    return ScriptedBrain(config, loop.agent_id)
