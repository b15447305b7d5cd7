"""The plan brain: the configuration's "plan" (a list of actions), one per step, in order;
with "repeat": true it starts over, otherwise it then sleeps until the configuration
changes. Deterministic: what an operator or a test uses to make an agent do exactly this."""

from __future__ import annotations

IDLE = {"action": "sleep", "seconds": 3600, "reason": "plan done; waiting for a new configuration"}


class PlanBrain:
    def __init__(self, config) -> None:
        self.configure(config)

    def configure(self, config) -> None:
        self.config = config
        self.plan = list(config.plan)
        self.index = 0

    def decide(self, obs) -> dict:
        if self.index >= len(self.plan):
            if not (self.config.repeat and self.plan):
                return dict(IDLE)
            self.index = 0
        action = self.plan[self.index]
        self.index += 1
        return action
