"""Token buckets: the one place where flow-resource and rate-limit arithmetic lives.

A bucket has a `rate` (units regained per second) and a `capacity`. Unused units
accumulate up to capacity; there are no tick resets. Two ways to take from it:

* `try_take` (RPC rate limits): all or nothing; on refusal says how long until it fits.
* `spend` (flow resources such as compute): allowed whenever the balance is >= 0, and
  may leave debt (a negative balance). While in debt, `seconds_until_usable` is the exact
  time until the balance is back at zero: -balance / rate.

Example from DESIGN.md: rate 10/s, capacity 100, balance 100, spend 150 -> -50, usable
again after 5 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INFINITE = math.inf
# Clock arithmetic in floats can leave 0.9999999 where 1 is due; a client that waits
# exactly its RetryInfo must not be refused again for that.
EPSILON = 1e-9


@dataclass
class TokenBucket:
    rate: float
    capacity: float
    balance: float
    updated_at: float  # clock seconds of the last refill

    @classmethod
    def full(cls, rate: float, capacity: float, now: float) -> "TokenBucket":
        return cls(rate=rate, capacity=capacity, balance=capacity, updated_at=now)

    def refill(self, now: float) -> None:
        if now > self.updated_at:
            self.balance = min(self.capacity, self.balance + (now - self.updated_at) * self.rate)
            self.updated_at = now

    def level(self, now: float) -> float:
        """Balance at `now` without mutating."""
        if now <= self.updated_at:
            return self.balance
        return min(self.capacity, self.balance + (now - self.updated_at) * self.rate)

    def seconds_until(self, target: float, now: float) -> float:
        """Seconds until the balance reaches `target` (0 if already there)."""
        missing = target - self.level(now)
        if missing <= EPSILON:
            return 0.0
        if self.rate <= 0 or target > self.capacity:
            return INFINITE
        return missing / self.rate

    def seconds_until_usable(self, now: float) -> float:
        """Seconds until the balance is back at zero (0 when not in debt)."""
        return self.seconds_until(0.0, now)

    def try_take(self, amount: float, now: float) -> float:
        """Take `amount` if available. Returns 0.0 on success, else the seconds to wait."""
        self.refill(now)
        if self.balance + EPSILON >= amount:
            self.balance -= amount
            return 0.0
        return self.seconds_until(amount, now)

    def force_spend(self, amount: float, now: float) -> None:
        """Spend what was already consumed (e.g. CPU time), even while in debt."""
        self.refill(now)
        self.balance -= amount

    def spend(self, amount: float, now: float) -> float:
        """Spend with debt. Returns 0.0 on success; when already in debt, spends nothing
        and returns the seconds until usable again."""
        self.refill(now)
        if self.balance < -EPSILON:
            return self.seconds_until_usable(now)
        self.balance -= amount
        return 0.0
