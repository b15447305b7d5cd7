"""An agent's configuration: the content of its own artifact.

Whoever controls the agent's artifact controls the agent: the loop re-reads the
configuration whenever the artifact is written (an `artifact.written` event for the
agent's id, delivered by Subscribe). The content is a JSON object; every key is optional:

    {
      "brain": "scripted" | "llm" | "plan",   # default "scripted" (no LLM at all)
      "personality": "builder" | "trader" | "tester" | "coordinator" | <free text>,
      "prompt": "...",            # the LLM brain's instructions (its character and goals)
      "model": "...",             # the LLM brain's model (default: the server's default model)
      "partners": ["bob", ...],   # agents the scripted brains favour (trader, coordinator)
      "plan": [ {action}, ... ],  # brain "plan": these actions in order (see actions.py)
      "repeat": false,            # brain "plan": start over at the end (else idle)
      "loop": {
        "min_interval": 1.0,      # seconds from one decision to the next, at least
        "max_actions": 0,         # acting actions before idling until a new configuration (0: no limit)
        "error_backoff": 0.5,     # first delay after a failed action; doubles per failure...
        "error_backoff_max": 30.0,  # ...up to this (also the pace after a failure report)
        "report_after": 5,        # consecutive failures that make a report (memory + log)
        "max_tokens": 400,        # LLM brain: max_tokens of one answer
        "history": 8,             # recent actions (with results) shown to the brain
        "events": 20,             # recent events shown to the brain
        "notes": 50,              # memory notes kept
        "fallback_sleep": 5.0     # LLM brain: seconds slept after an unusable answer
      }
    }

Content that is not a JSON object (e.g. prose) is taken as the LLM prompt. A missing
personality is picked from the agent's id (stable), so a population is varied.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

PERSONALITIES = ("builder", "trader", "tester", "coordinator")
BRAINS = ("scripted", "llm", "plan")

DEFAULT_LOOP: dict[str, float] = {
    "min_interval": 1.0,
    "max_actions": 0,
    "error_backoff": 0.5,
    "error_backoff_max": 30.0,
    "report_after": 5,
    "max_tokens": 400,
    "history": 8,
    "events": 20,
    "notes": 50,
    "fallback_sleep": 5.0,
}


@dataclass
class AgentConfig:
    brain: str = "scripted"
    personality: str = "builder"
    prompt: str = ""
    model: str = ""
    partners: list[str] = field(default_factory=list)
    plan: list[dict] = field(default_factory=list)
    repeat: bool = False
    loop: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOOP))
    raw: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    problems: list[str] = field(default_factory=list)

    def get(self, key: str) -> float:
        return self.loop.get(key, DEFAULT_LOOP[key])


def default_personality(agent_id: str) -> str:
    return PERSONALITIES[hashlib.sha256(agent_id.encode()).digest()[0] % len(PERSONALITIES)]


def parse(content: str, agent_id: str, *, version: int = 0, brain_override: str = "") -> AgentConfig:
    """The configuration in `content`; what cannot be used is listed in `problems`
    (and replaced by its default), never fatal."""
    problems: list[str] = []
    raw: Any
    try:
        raw = json.loads(content) if content.strip() else {}
    except ValueError:
        raw = {"prompt": content}
    if not isinstance(raw, dict):
        problems.append("configuration is not a JSON object; using defaults")
        raw = {}
    cfg = AgentConfig(raw=raw, version=version)
    brain = raw.get("brain", "scripted")
    if brain not in BRAINS:
        problems.append(f"brain {brain!r} unknown; one of {', '.join(BRAINS)}")
        brain = "scripted"
    cfg.brain = brain_override if brain_override in BRAINS else brain
    p = raw.get("personality")
    cfg.personality = p.strip() if isinstance(p, str) and p.strip() else default_personality(agent_id)
    for key in ("prompt", "model"):
        v = raw.get(key, "")
        if isinstance(v, str):
            setattr(cfg, key, v)
        else:
            problems.append(f"{key} must be a string")
    partners = raw.get("partners", [])
    if isinstance(partners, list) and all(isinstance(x, str) for x in partners):
        cfg.partners = [x for x in partners if x != agent_id]
    else:
        problems.append("partners must be a list of agent ids")
    plan = raw.get("plan", [])
    if isinstance(plan, list) and all(isinstance(x, dict) for x in plan):
        cfg.plan = plan
    else:
        problems.append("plan must be a list of actions")
    cfg.repeat = bool(raw.get("repeat", False))
    loop = raw.get("loop", {})
    if not isinstance(loop, dict):
        problems.append("loop must be an object")
        loop = {}
    for key, value in loop.items():
        if key not in DEFAULT_LOOP:
            problems.append(f"loop.{key} unknown; known: {', '.join(DEFAULT_LOOP)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            cfg.loop[key] = value
        else:
            problems.append(f"loop.{key} must be a non-negative number")
    cfg.problems = problems
    return cfg
