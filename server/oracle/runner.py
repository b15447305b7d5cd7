"""The mint's background task: resolve every round whose time has passed.

Each resolution is one kernel op (genesis_oracle.resolve). With a synchronous scorer
(offline) the scoring happens inside that op. With an async scorer (LLM) the op first
answers which winners need a score, without changing anything; they are scored here,
on the event loop (never in the writer thread), and the op runs again with the scores.
If the winners changed meanwhile (a bid cancelled, an artifact rewritten), it asks again,
at most MAX_ATTEMPTS times; then unscored winners count as scoring failures (refunded).

The loop sleeps until the next epoch-aligned time, then resolves. At start it resolves at
once whatever became due while the server was down (missed rounds: one round, see
server/genesis/oracle.py). The round table's UNIQUE keys and the single writer make a
second resolution of the same round impossible.
"""

from __future__ import annotations

import asyncio

import structlog

from server.oracle import auction
from server.oracle.scoring import ScoreError

log = structlog.get_logger("oracle")

MAX_ATTEMPTS = 3
WAKE_MARGIN_SECONDS = 0.005
RETRY_SECONDS = 1.0


class MintRunner:
    def __init__(self, kernel, executor) -> None:
        self.kernel = kernel
        self.executor = executor
        self.oracle = kernel.genesis["genesis_oracle"]
        from server.kernel.commands import Commands

        self.commands = Commands(kernel, executor)
        self.is_paused = lambda: False  # the server's run control (server/rpc/pause.py)

    async def resolve_due(self) -> list[dict]:
        """Resolve every due round; returns their records."""
        done: list[dict] = []
        while True:
            record = await self._resolve_one()
            if record is None:
                return done
            done.append(record)

    async def _resolve_one(self) -> dict | None:
        scores: dict = {}
        for attempt in range(MAX_ATTEMPTS):
            final = attempt == MAX_ATTEMPTS - 1
            result = await self.commands.run("oracle_resolve", {"scores": dict(scores), "final": final})
            if result is None or "missing" not in result:
                if result is not None:
                    log.info("oracle_resolved", round=result["round"], minted=result["minted"],
                             winners=len(result["winners"]), income_share=result["income"]["share"])
                return result
            for ev in result["missing"]:
                try:
                    scores[ev.key] = await self.oracle.scorer.ascore(ev)
                except ScoreError as e:
                    scores[ev.key] = e
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # a fault in a scorer fails that winner only
                    log.exception("oracle_scorer_fault", artifact_id=ev.artifact_id)
                    scores[ev.key] = ScoreError(f"scorer fault: {type(e).__name__}")
        return None  # unreachable: the final attempt never reports missing winners

    async def run_forever(self) -> None:
        interval = self.oracle.interval
        while True:
            try:
                if not self.is_paused():  # a paused world resolves no round (Admin.Pause)
                    await self.resolve_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("oracle_resolution_failed")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            now = self.kernel.clock()
            await asyncio.sleep(max(0.0, auction.next_boundary(now, interval) - now) + WAKE_MARGIN_SECONDS)
