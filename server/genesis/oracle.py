"""genesis_oracle: the mint (DESIGN.md "The oracle (the mint)"; rules in server/oracle/).

Bids: `bid {artifact_id, amount}` at any time, by the artifact's controller
(state.controller), provided its contract lets it `transfer` the artifact. The amount is
held: moved into genesis_oracle's own account (it has standing) by an ordinary ledger
transfer. One bid per artifact: a new bid by the same bidder replaces it, and the hold is
adjusted by the difference (taken or refunded). `cancel_bid` refunds it. A changed bid
counts as placed now (for ties and for the round it belongs to).

A bid does not survive a change of control: whatever changes state.controller (escrow
list, purchase, cancel; transfer_control - all through genesis.escrow.set_controller)
refunds the open bid in full to its bidder at once (`refund_on_control_change`: a ledger
transfer and an `oracle.bid_cancelled` event with reason "control changed"). So the
bidder of a round is always the controller it mints to; the new controller bids anew.

Rounds: at every epoch-aligned time `at` (multiples of oracle.interval_seconds) the
server's background task (server/oracle/runner.py) runs `resolve`, one atomic kernel op:
the bids last changed at or before `at` take part; second-price with `slots` winners;
losers are refunded in full; each winner's artifact is scored (0-100) and
`score // mint_ratio` scrip is minted to its controller (to the bidder if the controller
is not a principal outside genesis, e.g. the artifact is listed in escrow); a winner whose
scoring failed is refunded in full and nothing is minted for it; the prices actually paid
plus the carried remainder are split equally among all agents as basic income, and
`pool % n_agents` stays in the oracle's account, carried into the next round.
Bids on artifacts deleted before their round are refunded and take no part (so would a
bid whose bidder is no longer the controller, which control changes already prevent).

Durability: every resolved round is one row of `oracle_rounds` (UNIQUE round and time),
written in the same transaction as its ledger entries, so a restart neither resolves a
round twice nor skips one. Missed rounds (the server was down across several times) are
resolved once, together: one round stamped with the latest time that passed, recording
`missed_boundaries`; no bid could be placed meanwhile, so nothing is lost, and an outage
does not multiply the minting.

Invariant (tested): balance(genesis_oracle) == sum(held bids) + carry.
"""

from __future__ import annotations

import math

from server.errors import KernelError, Reason, invalid
from server.genesis.base import AMOUNT, COUNT, ID, Call, Genesis, method
from server.kernel import artifacts, events, ledger
from server.oracle import auction
from server.oracle.scoring import OfflineScorer, Score, ScoreError, Scorer, evidence_dict, gather

ORACLE_ID = "genesis_oracle"


def refund_on_control_change(conn, artifact_id: str, new_controller: str, by: str, now: float) -> None:
    """Control of `artifact_id` moves to `new_controller` (in the caller's transaction):
    refund the open bid on it, unless the new controller placed it."""
    row = conn.oracle_bid_get(artifact_id)
    if row is None or row["bidder"] == new_controller:
        return
    conn.oracle_bid_delete(artifact_id)
    ledger.transfer(conn, ORACLE_ID, row["bidder"], row["amount"], now=now,
                    memo=f"oracle bid on {artifact_id} refunded: control changed", artifact_id=artifact_id)
    events.append(conn, "oracle.bid_cancelled", principal_id=by, artifact_id=artifact_id, now=now,
                  related=[row["bidder"], new_controller],
                  data={"bidder": row["bidder"], "refunded": row["amount"], "reason": "control changed",
                        "controller": new_controller})


class OracleArtifact(Genesis):
    id = ORACLE_ID
    has_standing = True
    description = ("The mint. Bid scrip (held until the round resolves) for the mint to score one of your "
                   "artifacts; rounds resolve at fixed epoch-aligned times (see `status`, or GetState.next_mint_at). "
                   "The top `slots` bids win and each pays the highest losing bid (second price); losers are "
                   "refunded. Each winner's artifact is scored 0-100 and score // mint_ratio new scrip goes to its "
                   "controller. The prices paid are shared equally among all agents as basic income.")

    def __init__(self, kernel) -> None:
        self.settings = kernel.config.oracle
        self.scorer: Scorer = OfflineScorer()
        super().__init__(kernel)

    # -- schedule ------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return self.settings["interval_seconds"]

    def next_resolution_at(self, now: float) -> float | None:
        return auction.next_boundary(now, self.interval) if self.settings["enabled"] else None

    def setup(self, conn, now: float) -> None:
        """At every start (idempotent): the schedule's origin and the mint's llm_budget."""
        conn.oracle_init(now)
        conn.stock_create(self.id, "llm_budget", self.settings["llm_budget_micro_usd"], if_missing=True)

    def _state(self, conn) -> tuple[float, int, int]:
        return conn.oracle_state()

    def _last_round(self, conn) -> tuple[int, float | None]:
        return conn.oracle_last_round()

    # -- holds ---------------------------------------------------------------------------

    def _hold(self, call: Call, artifact_id: str, amount: int, memo: str) -> None:
        if amount > 0:
            ledger.transfer(call.conn, call.caller, self.id, amount, now=call.now, memo=memo, artifact_id=artifact_id)

    def _refund(self, conn, artifact_id: str, to: str, amount: int, now: float, memo: str) -> None:
        if amount > 0:
            ledger.transfer(conn, self.id, to, amount, now=now, memo=memo, artifact_id=artifact_id)

    def _bid_row(self, conn, artifact_id: str):
        return conn.oracle_bid_get(artifact_id)

    # -- methods -------------------------------------------------------------------------

    @method("Bid `amount` scrip for the mint to score `artifact_id` at its next round. Only its controller bids "
            "(with the `transfer` right); a change of control refunds the bid. The amount is held by the oracle; bidding again on the same artifact "
            "replaces your bid and adjusts the hold (raise: the difference is taken; lower: refunded). "
            "Returns the bid and `round_at`, the round it takes part in.",
            {"artifact_id": ID, "amount": AMOUNT}, ("artifact_id", "amount"))
    def bid(self, call: Call, artifact_id: str, amount: int) -> dict:
        cfg = self.settings
        if not cfg["enabled"]:
            raise KernelError(Reason.MINT_DISABLED, "the mint is disabled in this world (oracle.enabled = false)")
        if amount < cfg["minimum_bid"]:
            raise invalid("amount", f"at least {cfg['minimum_bid']} (the minimum bid)")
        if artifact_id.startswith(artifacts.RESERVED_PREFIX):
            raise KernelError(Reason.ACCESS_DENIED, "genesis artifacts cannot be bid on", field="artifact_id")
        art = artifacts.require(call.conn, artifact_id)
        if art.controller != call.caller:
            raise KernelError(Reason.ACCESS_DENIED, f"only the controller of {artifact_id} ({art.controller}) may bid "
                                                    "on it", field="artifact_id")
        self.kernel.authorize(call.conn, art, "transfer", call.caller, call.now)
        row = self._bid_row(call.conn, artifact_id)
        previous = 0
        if row is not None and row["bidder"] == call.caller:
            previous = row["amount"]
            if amount == previous:
                return self._bid_view(row, self._since(call.conn), unchanged=True)
            if amount > previous:
                self._hold(call, artifact_id, amount - previous, f"oracle bid on {artifact_id} raised")
            else:
                self._refund(call.conn, artifact_id, call.caller, previous - amount, call.now,
                             f"oracle bid on {artifact_id} lowered")
        else:
            if row is not None:  # a bid left from before a change of control (older worlds): replaced
                self._refund(call.conn, artifact_id, row["bidder"], row["amount"], call.now,
                             f"oracle bid on {artifact_id} replaced by {call.caller}")
                events.append(call.conn, "oracle.bid_cancelled", principal_id=call.caller, artifact_id=artifact_id,
                              now=call.now, related=[row["bidder"]],
                              data={"bidder": row["bidder"], "refunded": row["amount"], "replaced_by": call.caller})
            self._hold(call, artifact_id, amount, f"oracle bid on {artifact_id}")
        _, _, seq = self._state(call.conn)
        call.conn.oracle_set(bid_seq=seq + 1)
        call.conn.oracle_bid_put(artifact_id, call.caller, amount, call.now, seq + 1)
        new = self._bid_row(call.conn, artifact_id)
        view = self._bid_view(new, self._since(call.conn))
        events.append(call.conn, "oracle.bid", principal_id=call.caller, artifact_id=artifact_id, now=call.now,
                      data={"amount": amount, "previous": previous, "round_at": view["round_at"]})
        return {**view, "previous": previous}

    def _since(self, conn) -> float:
        """The time of the last resolved round (or the mint's start): the next round is after it."""
        start_at, _, _ = self._state(conn)
        _, last_at = self._last_round(conn)
        return last_at if last_at is not None else start_at

    def _bid_view(self, row, since: float, unchanged: bool = False) -> dict:
        """`round_at`: the scheduled time of the round the bid takes part in."""
        first = math.ceil(row["placed_at"] / self.interval) * self.interval
        d = {"artifact_id": row["artifact_id"], "bidder": row["bidder"], "amount": row["amount"],
             "placed_at": row["placed_at"],
             "round_at": max(first, auction.next_boundary(since, self.interval))}
        if unchanged:
            d["unchanged"] = True
        return d

    @method("Withdraw your bid on `artifact_id` before its round resolves; the held amount is refunded.",
            {"artifact_id": ID}, ("artifact_id",))
    def cancel_bid(self, call: Call, artifact_id: str) -> dict:
        row = self._bid_row(call.conn, artifact_id)
        if row is None or row["bidder"] != call.caller:
            raise KernelError(Reason.NOT_FOUND, f"you have no bid on {artifact_id!r}", field="artifact_id")
        call.conn.oracle_bid_delete(artifact_id)
        self._refund(call.conn, artifact_id, call.caller, row["amount"], call.now, f"oracle bid on {artifact_id} cancelled")
        events.append(call.conn, "oracle.bid_cancelled", principal_id=call.caller, artifact_id=artifact_id,
                      now=call.now, data={"bidder": call.caller, "refunded": row["amount"]})
        return {"artifact_id": artifact_id, "refunded": row["amount"], "cancelled": True}

    @method("The schedule (next_resolution_at, interval_seconds, slots, minimum_bid, mint_ratio, round = the last "
            "resolved round's number), your open bids, and the last round's results (winners, prices, scores, "
            "minted, income per agent). With `round`: that round's record instead.",
            {"round": COUNT})
    def status(self, call: Call, round: int = 0) -> dict:
        cfg = self.settings
        conn = call.conn
        start_at, carry, _ = self._state(conn)
        last, last_at = self._last_round(conn)
        due_at = auction.last_boundary(call.now, self.interval)
        pending = cfg["enabled"] and due_at > (last_at if last_at is not None else start_at)
        wanted = round or last
        rec = conn.oracle_round_result(wanted)
        if round and rec is None:
            raise KernelError(Reason.NOT_FOUND, f"no resolved round {round}", field="round")
        since = last_at if last_at is not None else start_at
        bids = [self._bid_view(r, since) for r in conn.oracle_bids(bidder=call.caller)]
        open_bids, held = conn.oracle_bids_total()
        return {
            "enabled": cfg["enabled"], "now": call.now,
            "next_resolution_at": self.next_resolution_at(call.now),
            "pending_round_at": due_at if pending else None,
            "interval_seconds": self.interval, "slots": cfg["slots"], "minimum_bid": cfg["minimum_bid"],
            "mint_ratio": cfg["mint_ratio"], "scorer": cfg["scorer"],
            "round": last, "next_round": last + 1,
            "bids": bids, "open_bids": open_bids, "held": held, "carry": carry,
            "last": rec,
        }

    # -- resolution (one kernel op; server/oracle/runner.py) -----------------------------

    def resolve(self, conn, scores: dict | None = None, final: bool = True) -> dict | None:
        """Resolve the round that is due, if any: returns its record, or None when no round
        is due. With an async scorer (LLM), `scores` maps Evidence.key -> Score or
        ScoreError computed beforehand outside the writer; a winner missing from it makes
        this return {"missing": [Evidence, ...]} without changing anything (unless `final`,
        which counts it as a scoring failure)."""
        cfg = self.settings
        if not cfg["enabled"]:
            return None
        now = self.kernel.clock()
        start_at, carry_in, _ = self._state(conn)
        last, last_at = self._last_round(conn)
        since = last_at if last_at is not None else start_at
        at = auction.last_boundary(now, self.interval)
        if at <= since:
            return None
        missed = auction.boundaries_between(since, at, self.interval)

        # Read phase: nothing is written until every winner has a score.
        withdrawn, bids = [], []
        for r in conn.oracle_bids(placed_until=at):
            art = artifacts.get(conn, r["artifact_id"])
            if art is None or art.deleted:
                withdrawn.append((r, "deleted"))
            elif art.controller != r["bidder"]:  # cannot happen since control changes refund; kept safe
                withdrawn.append((r, "control changed"))
            else:
                bids.append(auction.Bid(r["artifact_id"], r["bidder"], r["amount"], r["seq"]))
        outcome = auction.second_price(bids, cfg["slots"], cfg["minimum_bid"])
        scored, missing = [], []
        for b, price in outcome.winners:
            art = artifacts.require(conn, b.artifact_id)
            ev = gather(conn, art)
            result: Score | ScoreError
            if self.scorer.is_async:
                if scores is not None and ev.key in scores:
                    result = scores[ev.key]
                elif not final:
                    missing.append(ev)
                    continue
                else:
                    result = ScoreError("not scored: the artifact changed while it was being scored")
            else:
                try:
                    result = self.scorer.score(ev)
                except ScoreError as e:
                    result = e
                except Exception as e:  # a faulty scorer fails this winner, not the round
                    result = ScoreError(f"scorer fault: {type(e).__name__}")
            if isinstance(result, Score) and not (isinstance(result.score, int) and 0 <= result.score <= 100):
                result = ScoreError(f"scorer gave {result.score!r}, not an integer 0-100")
            scored.append((b, price, art, ev, result))
        if missing:
            return {"missing": missing}

        # Write phase.
        for r, why in withdrawn:
            conn.oracle_bid_delete(r["artifact_id"])
            self._refund(conn, r["artifact_id"], r["bidder"], r["amount"], now,
                         f"oracle bid on {r['artifact_id']} refunded: {why}")
        losers = []
        for b in outcome.losers:
            conn.oracle_bid_delete(b.artifact_id)
            self._refund(conn, b.artifact_id, b.bidder, b.amount, now, f"oracle bid on {b.artifact_id} lost: refunded")
            losers.append({"artifact_id": b.artifact_id, "bidder": b.bidder, "bid": b.amount, "refunded": b.amount})
        winners, pool, minted_total, mints = [], 0, 0, []
        for b, price, art, ev, result in scored:
            conn.oracle_bid_delete(b.artifact_id)
            w = {"artifact_id": b.artifact_id, "bidder": b.bidder, "bid": b.amount, "price": price,
                 "evidence": evidence_dict(ev)}
            if isinstance(result, ScoreError):
                self._refund(conn, b.artifact_id, b.bidder, b.amount, now,
                             f"oracle bid on {b.artifact_id} refunded: scoring failed")
                w.update(scored=False, paid=0, refunded=b.amount, score=None, reason=str(result), minted=0,
                         minted_to=None)
            else:
                self._refund(conn, b.artifact_id, b.bidder, b.amount - price, now,
                             f"oracle bid on {b.artifact_id} won: change")
                pool += price
                minted = result.score // cfg["mint_ratio"]
                to = self._mint_recipient(conn, art, b.bidder)
                if minted > 0:
                    ledger.mint(conn, to, minted, now=now, memo=f"oracle round {last + 1}: {b.artifact_id} scored "
                                f"{result.score}", artifact_id=b.artifact_id, by=self.id)
                    mints.append((to, minted, b.artifact_id))
                minted_total += minted
                w.update(scored=True, paid=price, refunded=b.amount - price, score=result.score, reason=result.reason,
                         minted=minted, minted_to=to)
            winners.append(w)
        agents = conn.live_agent_ids()
        share, carry_out = auction.split_income(pool + carry_in, len(agents))
        if share > 0:
            for a in agents:
                ledger.transfer(conn, self.id, a, share, now=now, memo="oracle basic income", artifact_id=self.id)
        conn.oracle_set(carry=carry_out)
        number = last + 1
        record = {
            "round": number, "at": at, "resolved_at": now, "missed_boundaries": missed,
            "bids": len(bids), "slots": cfg["slots"], "minimum_bid": cfg["minimum_bid"],
            "mint_ratio": cfg["mint_ratio"], "scorer": self.scorer.name,
            "clearing_price": outcome.clearing_price if outcome.winners else None,
            "winners": winners, "losers": losers,
            "withdrawn": [{"artifact_id": r["artifact_id"], "bidder": r["bidder"], "refunded": r["amount"],
                           "reason": why} for r, why in withdrawn],
            "minted": minted_total,
            "income": {"pool": pool, "carry_in": carry_in, "agents": len(agents), "share": share,
                       "paid": share * len(agents), "carry_out": carry_out},
            "recipients": agents,
        }
        conn.oracle_round_add(number, at, now, record)
        events.append(conn, "oracle.resolved", principal_id=self.id, artifact_id=self.id, now=now,
                      related=sorted({*agents, *(w["bidder"] for w in winners), *(m[0] for m in mints)}),
                      data=record)
        return record

    def _mint_recipient(self, conn, art, bidder: str) -> str:
        """The artifact's controller, if it is a principal outside genesis (not, e.g., the
        escrow holding it for sale); else the bidder."""
        c = art.controller
        if c and not c.startswith(artifacts.RESERVED_PREFIX) and ledger.balance(conn, c) is not None:
            return c
        return bidder
