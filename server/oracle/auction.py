"""The mint's rules as pure functions (no I/O), so they can be tested exactly.

Schedule: rounds resolve at epoch-aligned times, multiples of `interval`. The next one
after `now` is floor(now / interval) * interval + interval; agents compute it from the
time the server injects (GetState.now, GetState.next_mint_at).

Auction: second-price with `slots` winners. Bids are ordered by amount (highest first),
ties by the order in which they were last changed (earliest first). The first `slots`
win; each pays the highest losing bid, or `minimum_bid` when no bid loses - never more
than its own bid. Losers pay nothing.

Income: the prices paid (plus the remainder carried from earlier rounds) are split
equally among the agents; `pool % n_agents` is carried to the next round (it stays in
the oracle's account), so every unit is conserved. With no agents, all of it carries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def next_boundary(now: float, interval: float) -> float:
    """The first scheduled resolution time strictly after `now`."""
    return math.floor(now / interval) * interval + interval


def last_boundary(now: float, interval: float) -> float:
    """The latest scheduled resolution time at or before `now`."""
    return math.floor(now / interval) * interval


def boundaries_between(after: float, upto: float, interval: float) -> int:
    """How many scheduled times t satisfy after < t <= upto."""
    return max(0, math.floor(upto / interval) - math.floor(after / interval))


@dataclass(frozen=True)
class Bid:
    artifact_id: str
    bidder: str
    amount: int
    seq: int          # order of the bid's last change; lower wins a tie


@dataclass(frozen=True)
class Outcome:
    winners: list[tuple[Bid, int]]    # (bid, price), in rank order
    losers: list[Bid]                 # in rank order
    clearing_price: int               # what every winner pays (before refunds on scoring failure)


def rank(bids: list[Bid]) -> list[Bid]:
    return sorted(bids, key=lambda b: (-b.amount, b.seq))


def second_price(bids: list[Bid], slots: int, minimum_bid: int) -> Outcome:
    ordered = rank(bids)
    winners, losers = ordered[:slots], ordered[slots:]
    clearing = losers[0].amount if losers else minimum_bid
    return Outcome(winners=[(b, min(b.amount, clearing)) for b in winners], losers=losers,
                   clearing_price=clearing)


def split_income(pool: int, n_agents: int) -> tuple[int, int]:
    """(share per agent, remainder carried to the next round)."""
    if n_agents <= 0:
        return 0, pool
    return pool // n_agents, pool % n_agents
