"""The World page's time series, kept in the dashboard process (ring buffers), so a page
opened later still shows the recent past.

One sample per poll (POLL_SECONDS, 1 s) goes into `fine` (the last FINE samples: an hour);
every COARSE_EVERY samples their mean (counts: their sum per second) goes into `coarse`
(the last COARSE samples: a week at one a minute). A sample is a flat dict of numbers
(SERIES). The history starts when the dashboard does: it is a view, not a record (the
world's own record is its event log; `ecology export` writes it out).
"""

from __future__ import annotations

import collections
import threading

FINE = 3600
COARSE_EVERY = 60
COARSE = 7 * 24 * 60

# name -> (label, unit): the charted figures, in chart order.
SERIES = {
    "agents": ("agents (not deleted)", ""),
    "alive": ("agents alive (acting or sleeping)", ""),
    "actions_per_s": ("agents' actions per second (their events)", "1/s"),
    "supply": ("scrip supply (sum of balances)", "scrip"),
    "gini": ("Gini coefficient of agents' scrip", ""),
    "minted": ("scrip minted so far", "scrip"),
    "llm_spent": ("LLM spend so far (all agents)", "µ$"),
    "invokes_per_s": ("artifact invocations per second", "1/s"),
    "sandbox_warm": ("sandbox workers warm", ""),
    "sandbox_idle": ("sandbox workers idle (dedicated)", ""),
    "sandbox_started_per_s": ("sandbox workers started per second", "1/s"),
}


def gini(values) -> float:
    """Gini coefficient of non-negative amounts (0: all equal; towards 1: one holds all)."""
    xs = sorted(max(0, v) for v in values)
    n, total = len(xs), sum(xs)
    if n == 0 or total == 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return round((2 * weighted) / (n * total) - (n + 1) / n, 4)


class History:
    def __init__(self) -> None:
        self.fine: collections.deque = collections.deque(maxlen=FINE)
        self.coarse: collections.deque = collections.deque(maxlen=COARSE)
        self.mints: collections.deque = collections.deque(maxlen=500)  # resolved rounds, oldest first
        self._pending: list[dict] = []
        self._lock = threading.Lock()

    def add(self, sample: dict) -> None:
        with self._lock:
            self.fine.append(sample)
            self._pending.append(sample)
            if len(self._pending) >= COARSE_EVERY:
                group, self._pending = self._pending, []
                mean = {k: round(sum(s[k] for s in group) / len(group), 4) for k in group[0]}
                mean["t"] = group[-1]["t"]
                self.coarse.append(mean)

    def add_mint(self, ev: dict) -> None:
        d = ev.get("data") or {}
        winners = d.get("winners") or []
        with self._lock:
            if any(m["seq"] == ev["seq"] for m in self.mints):
                return
            self.mints.append({"seq": ev["seq"], "at": ev["at"], "round": d.get("round"),
                               "minted": d.get("minted", 0),
                               "winners": [w.get("artifact_id", "?") if isinstance(w, dict) else str(w)
                                           for w in winners]})

    def columns(self, coarse: bool = False) -> dict:
        """{t: [...], series: [...]} - uPlot's column layout."""
        with self._lock:
            rows = list(self.coarse if coarse else self.fine)
            mints = list(self.mints)
        out = {"t": [r["t"] for r in rows]}
        for name in SERIES:
            out[name] = [r.get(name) for r in rows]
        out["mints"] = mints
        return out
