"""The autonomous loop: observe -> think -> act -> repeat, at the agent's own pace.

    loop = AgentLoop(WorldClient(address, token, retry=RetryPolicy()))
    loop.run()          # until loop.stop() (from another thread or a signal handler's caller)

Each step:

1. **Observe.** `GetState` (free of compute): the server's UTC time, scrip, compute
   (balance, rate, capacity, seconds until usable), stocks (disk, llm_budget), the last
   event's seq, and any further fields the server adds (e.g. the next mint). Plus the
   recent events delivered by Subscribe, the agent's memory notes, and the recent actions
   with their results (what the brain asked for: reads, searches, listings, invocations).
2. **Debt.** While in compute debt the loop does nothing but wait exactly
   `seconds_until_usable` (then observes again): no call is made that would be refused.
3. **Think.** The brain (brains/) turns the observation into one action of the action
   language (actions.py).
4. **Act.** The action is executed through the SDK (calls that are refused with a
   RetryInfo are retried after exactly that delay). Sleeps are real waits:
   `sleep` for a duration; `sleep_until_event` opens a Subscribe stream with the given
   filters from the seq observed in step 1 and wakes on the first matching event (no
   polling); `sleep_until` re-checks its condition whenever an event concerning the agent
   arrives (scrip), or computes the exact wait (compute), or waits for the artifact's
   `artifact.written` event (artifact_exists). Every sleep ends early on stop or when the
   configuration changes.
5. **Pace.** The next decision starts no sooner than `loop.min_interval` after this one.

Failures: a failed action is shown to the brain in the next observation. A refusal that
waiting cures (RetryInfo) is waited out exactly and is not counted. Other failures back
off exponentially (`loop.error_backoff` doubling up to `loop.error_backoff_max`); after
`loop.report_after` failures in a row the loop reports them - a record of type
`agent.repeated_failures` in the agent's memory artifact and a structured log line - and
keeps the slowest pace until an action succeeds.

Configuration (config.py) is the agent's own artifact; an `artifact.written` event for
it (a dedicated Subscribe stream) makes the loop re-read it before the next decision.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from google.protobuf import json_format

from agent_runtime import actions as A
from agent_runtime.client import WorldClient, to_python
from agent_runtime.config import AgentConfig, parse
from agent_runtime.errors import EcologyError
from agent_runtime.log import Logger
from agent_runtime.memory import Memory

# Refusals that waiting cures: the loop waits exactly their retry_after.
WAITABLE = ("INSUFFICIENT_RESOURCES", "RATE_LIMITED", "TOO_MANY_IN_FLIGHT", "LLM_UNAVAILABLE")
# Errors after which the agent cannot go on (its process should end). AGENT_STOPPED: the
# operator stopped this agent (Admin.StopAgent); the loop ends cleanly, exit status 0.
STOPPED = "AGENT_STOPPED"
FATAL = ("UNAUTHENTICATED", STOPPED)
KNOWN_STATE_FIELDS = {"now", "principal_id", "scrip", "flow", "stock", "last_event_seq"}
# Event types of the world that every agent hears about (besides those concerning it).
MARKET_TYPES = ("escrow.*", "agent.created", "oracle.*", "mint.*")
RESULT_CHARS = 1500


class FatalError(Exception):
    """The agent cannot continue (bad token, its artifact deleted)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ts_of(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def event_dict(ev) -> dict:
    return {"seq": ev.seq, "at": iso(ts_of(ev.at)), "type": ev.type, "principal_id": ev.principal_id,
            "artifact_id": ev.artifact_id, "related_ids": list(ev.related_ids), "data": to_python(ev.data)}


def clip(value: Any, n: int = RESULT_CHARS) -> Any:
    """A result small enough for a prompt: long text is cut, big structures are shown as
    truncated JSON text."""
    if isinstance(value, str):
        return value if len(value) <= n else value[:n] + f"... [{len(value) - n} more chars]"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return value if len(text) <= n else text[:n] + f"... [{len(text) - n} more chars]"


class _Tracer:
    """Sends decision traces from a thread of their own, so reporting a decision never
    delays the next one. A full queue (the server is slow) drops traces and says so in the
    log, as does a stop with traces still queued: a gap is never silent."""

    def __init__(self, loop: "AgentLoop", max_queued: int = 256) -> None:
        import queue

        self.loop = loop
        self.queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self.dropped = 0
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="decision-traces", daemon=True)
        self.thread.start()

    def put(self, record: dict) -> None:
        import queue

        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                self.loop.log.warning("traces_dropped", count=self.dropped, reason="the trace queue is full")

    def close(self) -> None:
        """At the loop's end: say how many traces were never sent."""
        self.closed = True
        left = self.queue.qsize()
        if left:
            self.loop.log.warning("traces_dropped", count=left, reason="the agent stopped before sending them")

    def _run(self) -> None:
        while True:
            record = self.queue.get()
            if self.closed:
                return
            try:
                self.loop.client.record_decision(**record)
            except EcologyError as e:
                if not self.loop.stopping:
                    self.loop.log.warning("trace_not_recorded", reason=e.reason, message=e.message[:200])


@dataclass
class Observation:
    """What the brain sees at one step."""

    agent_id: str
    now: float
    scrip: int
    compute: dict
    stock: dict
    last_event_seq: int
    config: AgentConfig
    extras: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    history: list = field(default_factory=list)
    actions_done: int = 0
    step: int = 0

    @property
    def now_iso(self) -> str:
        return iso(self.now)

    @property
    def in_debt_for(self) -> float:
        return float(self.compute.get("seconds_until_usable", 0.0))


class _Watch:
    """One Subscribe stream read by a daemon thread; each event goes to `sink`."""

    def __init__(self, loop: "AgentLoop", name: str, sink, after_seq: int, **filters) -> None:
        self.name = name
        self.sub = loop.client.subscribe(after_seq, **filters)
        self.loop = loop
        self.sink = sink
        self.thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.sub:
                self.sink(ev)
        except EcologyError as e:
            if not self.loop.stopping:
                self.loop.log.error("subscription_failed", stream=self.name, reason=e.reason, message=e.message)
                if e.reason in FATAL:
                    self.loop._fatal = FatalError(f"subscription: {e}", 0 if e.reason == STOPPED else 3)
                    self.loop._notify()
        except Exception as e:  # noqa: BLE001 - a watcher must never kill the agent silently
            if not self.loop.stopping:
                self.loop.log.error("subscription_failed", stream=self.name, error=repr(e))

    def close(self) -> None:
        self.sub.close()


class AgentLoop:
    def __init__(self, client: WorldClient, *, brain_override: str = "", log: Logger | None = None,
                 brain_factory=None) -> None:
        self.client = client
        self.brain_override = brain_override
        self.log = log or Logger()
        self.brain_factory = brain_factory
        self.agent_id = ""
        self.config: AgentConfig | None = None
        self.brain = None
        self.memory: Memory | None = None
        self.stopping = False
        self._fatal: FatalError | None = None
        self._cond = threading.Condition()
        self._config_dirty = False
        self._mine_counter = 0          # events concerning the agent (wakes sleep_until)
        self._events: collections.deque = collections.deque(maxlen=200)
        self._seen: collections.deque = collections.deque(maxlen=400)
        self._history: collections.deque = collections.deque(maxlen=50)
        self._watches: list[_Watch] = []
        self.failures = 0
        self.actions_done = 0
        self.steps = 0
        self._last_obs: "Observation | None" = None
        self._tracer = _Tracer(self)
        self.last_state = None

    # -- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (thread-safe): wakes every wait, cancels streams and calls."""
        self.stopping = True
        self._notify()
        for w in list(self._watches):
            w.close()
        self.client.close()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def run(self) -> int:
        """Run until stop(); returns the process exit code (0 after stop())."""
        try:
            self._start()
            while not self.stopping:
                if self._fatal:
                    raise self._fatal
                self._step()
        except FatalError as e:
            if self.stopping:
                return 0
            if e.exit_code == 0:
                self.log.info("stopped_by_operator", message=str(e)[:300], steps=self.steps, actions=self.actions_done)
                return 0
            self.log.error("fatal", message=str(e), exit_code=e.exit_code)
            return e.exit_code
        except EcologyError as e:
            if self.stopping:
                return 0
            if e.reason == STOPPED:
                self.log.info("stopped_by_operator", message=e.message[:300], steps=self.steps,
                              actions=self.actions_done)
                return 0
            if e.reason in FATAL:
                self.log.error("fatal", reason=e.reason, message=e.message, exit_code=3)
                return 3
            raise
        finally:
            for w in self._watches:
                w.close()
            self._tracer.close()
        self.log.info("stopped", steps=self.steps, actions=self.actions_done)
        return 0

    def _start(self) -> None:
        while True:
            try:
                state = self.client.get_state()
                break
            except EcologyError as e:
                if self.stopping or e.reason in FATAL:
                    raise
                self.log.warning("server_unreachable", reason=e.reason, message=e.message)
                if self._wait(2.0, on_config=False) == "stop":
                    raise
        self.agent_id = state.principal_id
        self.log.bind(agent=self.agent_id)
        seq = state.last_event_seq
        # The configuration stream first (from the seq observed), so no change is missed.
        self._watches.append(_Watch(self, "self", self._on_self_event, seq, artifact_ids=[self.agent_id]))
        self._load_config()
        self._sync_watches(seq)
        self.memory = Memory(self.client, self.agent_id, int(self.config.get("notes")))
        try:
            self.memory.load()
        except EcologyError as e:
            if e.reason in FATAL:
                raise
            self.log.warning("memory_unreadable", reason=e.reason, message=e.message)
        self.log.info("started", brain=self.config.brain, personality=self.config.personality,
                      scrip=state.scrip, notes=len(self.memory.notes))

    # -- events ----------------------------------------------------------------------

    def _sync_watches(self, seq: int) -> None:
        """Streams of recent events for the brain's observation: only a brain that reads
        them (the LLM brain, with loop.events > 0) gets them - every open stream costs the
        server a scan per commit, so a scripted agent keeps just its configuration stream
        (plus a temporary one while it sleeps until an event)."""
        want = self.config.brain == "llm" and int(self.config.get("events")) > 0
        have = [w for w in self._watches if w.name in ("mine", "market")]
        if want and not have:
            self._watches.append(_Watch(self, "mine", self._on_event, seq, principal_ids=[self.agent_id]))
            self._watches.append(_Watch(self, "market", self._on_event, seq, types=list(MARKET_TYPES)))
        elif have and not want:
            for w in have:
                w.close()
                self._watches.remove(w)

    def _on_event(self, ev) -> None:
        with self._cond:
            if ev.seq in self._seen:
                return
            self._seen.append(ev.seq)
            if ev.principal_id == self.agent_id or self.agent_id in ev.related_ids:
                self._mine_counter += 1
            if ev.principal_id != self.agent_id:     # the agent knows what it did itself
                self._events.append(event_dict(ev))
            self._cond.notify_all()

    def _on_self_event(self, ev) -> None:
        if ev.type in ("artifact.written", "artifact.deleted", "control.transferred"):
            with self._cond:
                self._config_dirty = True
                self._cond.notify_all()
            self.log.info("config_changed", by=ev.principal_id, seq=ev.seq, type=ev.type)
        self._on_event(ev)

    # -- waiting ---------------------------------------------------------------------

    def _wait(self, seconds: float | None, wake=None, *, on_config: bool = True) -> str:
        """Block up to `seconds` (None: no limit). Returns "stop", "config" (the
        configuration changed), "woken" (`wake()` became true; it is called under the
        lock, so it must be cheap) or "timeout"."""
        deadline = None if seconds is None else time.monotonic() + max(0.0, seconds)
        with self._cond:
            while True:
                if self.stopping or self._fatal:
                    return "stop"
                if on_config and self._config_dirty:
                    return "config"
                if wake is not None and wake():
                    return "woken"
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                self._cond.wait(remaining)

    # -- configuration -----------------------------------------------------------------

    def _load_config(self) -> None:
        with self._cond:
            self._config_dirty = False
        try:
            art = self.client.read(self.agent_id)
        except EcologyError as e:
            if e.reason == "DELETED":
                raise FatalError(f"the agent's artifact {self.agent_id} was deleted", 4) from None
            if e.reason in FATAL or self.config is not None:
                raise
            self.log.warning("config_unreadable", reason=e.reason, message=e.message)
            art = None
        content, version = (art.content, art.version) if art is not None else ("", 0)
        old = self.config
        self.config = parse(content, self.agent_id, version=version, brain_override=self.brain_override)
        for p in self.config.problems:
            self.log.warning("config_problem", problem=p)
        if self.memory is not None:
            self.memory.keep = max(1, int(self.config.get("notes")))
        if self.brain is None or old is None or old.brain != self.config.brain:
            self.brain = self._make_brain(self.config)
        else:
            self.brain.configure(self.config)
        if old is not None:
            self.actions_done = 0   # a new configuration starts a new max_actions budget
            self.log.info("config_loaded", version=version, brain=self.config.brain,
                          personality=self.config.personality)

    def _make_brain(self, cfg: AgentConfig):
        if self.brain_factory is not None:
            return self.brain_factory(cfg, self)
        from agent_runtime.brains import make_brain

        return make_brain(cfg, self)

    # -- observe -----------------------------------------------------------------------

    def _observe(self) -> Observation:
        state = self.client.get_state()
        self.last_state = state
        compute = {"balance": 0.0, "rate": 0.0, "capacity": 0.0, "seconds_until_usable": 0.0}
        for f in state.flow:
            if f.name == "compute":
                compute = {"balance": round(f.balance, 3), "rate": f.rate, "capacity": f.capacity,
                           "seconds_until_usable": f.seconds_until_usable}
        stock = {s.name: {"used": s.used, "quota": s.quota} for s in state.stock}
        extras = {}
        for fd, value in state.ListFields():
            if fd.name not in KNOWN_STATE_FIELDS:
                extras[fd.name] = (json_format.MessageToDict(value) if hasattr(value, "DESCRIPTOR")
                                   else value)
        cfg = self.config
        with self._cond:
            events = list(self._events)[-int(cfg.get("events")):]
        history = list(self._history)[-int(cfg.get("history")):]
        return Observation(
            agent_id=self.agent_id, now=ts_of(state.now), scrip=state.scrip, compute=compute, stock=stock,
            last_event_seq=state.last_event_seq, config=cfg, extras=extras, events=events,
            notes=list(self.memory.notes), history=history, actions_done=self.actions_done, step=self.steps)

    # -- one step ----------------------------------------------------------------------

    def _step(self) -> None:
        if self._config_dirty:
            try:
                self._load_config()
            except EcologyError as e:
                if self.stopping or e.reason in FATAL:
                    raise
                with self._cond:
                    self._config_dirty = True      # keep the old one; read it again after the backoff
                self._failed({"action": "reload_config"}, e, wait_config=False)
                return
            seq = self.last_state.last_event_seq if self.last_state is not None else 0
            self._sync_watches(seq)
        cfg = self.config
        max_actions = int(cfg.get("max_actions"))
        if max_actions and self.actions_done >= max_actions:
            self.log.info("idle", reason="max_actions reached; waiting for a new configuration",
                          max_actions=max_actions)
            self._wait(None)
            return
        started = time.monotonic()
        try:
            obs = self._last_obs = self._observe()
        except EcologyError as e:
            if self.stopping or e.reason in FATAL:
                raise
            self._failed({"action": "observe"}, e)
            return
        if obs.in_debt_for > 0:
            # In compute debt: wait exactly until usable; no call would succeed before.
            self.log.info("in_debt", seconds=round(obs.in_debt_for, 3), balance=obs.compute["balance"])
            self._wait(obs.in_debt_for)
            return
        self.steps += 1
        action = None
        try:
            action = self.brain.decide(obs)
            action = A.validate(action)
        except EcologyError as e:
            if self.stopping or e.reason in FATAL:
                raise
            self._failed({"action": "think"}, e)
            return
        except A.ActionError as e:
            self.log.error("invalid_action", action=clip(action, 300), error=str(e))
            self._tell_brain(action if isinstance(action, dict) else {"action": "?"},
                             {"ok": False, "reason": "INVALID_ACTION", "message": str(e)})
            self._failed({"action": "think"}, EcologyError(_internal(), "INVALID_ACTION", str(e)))
            return
        except Exception as e:  # noqa: BLE001 - a brain bug must not end the agent
            self.log.error("brain_failed", error=repr(e))
            self._failed({"action": "think"}, EcologyError(_internal(), "BRAIN_ERROR", repr(e)))
            return
        t0 = time.monotonic()
        try:
            result = self.execute(action, obs)
        except EcologyError as e:
            if self.stopping:
                return
            if e.reason in FATAL:
                raise
            self._record(action, ok=False, error={"reason": e.reason, "message": e.message[:500]},
                         ms=(time.monotonic() - t0) * 1000)
            self._tell_brain(action, {"ok": False, "reason": e.reason, "message": e.message})
            self._failed(action, e)
            return
        ms = (time.monotonic() - t0) * 1000
        self._record(action, ok=True, result=result, ms=ms)
        self._tell_brain(action, {"ok": True, "value": result})
        self.failures = 0
        if action["action"] in A.ACTING:
            self.actions_done += 1
        else:
            return   # a sleep was the pace
        pause = cfg.get("min_interval") - (time.monotonic() - started)
        if pause > 0:
            self._wait(pause)

    def _tell_brain(self, action: dict, result: dict) -> None:
        feedback = getattr(self.brain, "feedback", None)
        if feedback is not None:
            try:
                feedback(action, result)
            except Exception as e:  # noqa: BLE001
                self.log.error("brain_failed", error=repr(e))

    def _trace(self, action: dict, ok: bool, result: Any, error: dict | None) -> None:
        """Report the decision to the server's trace (best effort: never ends the agent)."""
        obs = self._last_obs
        observed = {} if obs is None else {
            "now": iso(obs.now), "scrip": obs.scrip, "compute": obs.compute, "stock": obs.stock,
            "last_event_seq": obs.last_event_seq, "actions_done": obs.actions_done,
            "events": [{"seq": e.get("seq"), "type": e.get("type"), "by": e.get("principal_id")}
                       for e in obs.events[-10:]],
            "notes": len(obs.notes), "history": len(obs.history)}
        take = getattr(self.brain, "take_llm_request_ids", None)
        outcome = {"ok": ok, "value": clip(result)} if ok else {"ok": False, **(error or {})}
        try:
            record = {"step": self.steps, "observed": json.loads(json.dumps(observed, default=str)),
                      "action": json.loads(json.dumps(action, default=str)),
                      "outcome": json.loads(json.dumps(outcome, default=str)),
                      "llm_request_ids": take() if take else []}
        except (TypeError, ValueError) as e:
            self.log.warning("trace_not_recorded", reason="UNSERIALIZABLE", message=str(e)[:200])
            return
        self._tracer.put(record)

    def _record(self, action: dict, *, ok: bool, ms: float, result: Any = None, error: dict | None = None) -> None:
        shown = {k: (clip(v, 200) if k == "content" else v) for k, v in action.items()}
        entry = {"at": iso(time.time()), "action": shown, "ok": ok}
        if ok:
            entry["result"] = clip(result)
        else:
            entry["error"] = error
        self._history.append(entry)
        fields = {"action": action["action"], "ok": ok, "ms": round(ms, 1)}
        for key in ("artifact_id", "method", "to", "amount", "price", "query", "seconds"):
            if key in action:
                fields[key] = action[key]
        if action.get("reason"):
            fields["why"] = action["reason"]
        if error:
            fields.update(reason=error["reason"], message=error["message"][:200])
        if isinstance(result, dict) and "woke" in result:
            fields["woke"] = result["woke"]
        self.log.info("action", **fields)
        self._trace(action, ok, result, error)

    def _failed(self, action: dict, err: EcologyError, *, wait_config: bool = True) -> None:
        """After a failure: wait out a RetryInfo exactly, else back off (and report)."""
        if err.retry_after is not None and err.reason in WAITABLE:
            self.log.info("waiting", reason=err.reason, seconds=round(err.retry_after, 3))
            self._wait(err.retry_after, on_config=wait_config)
            return
        self.failures += 1
        cfg = self.config
        cap = cfg.get("error_backoff_max")
        delay = min(cap, cfg.get("error_backoff") * 2 ** (self.failures - 1))
        every = max(1, int(cfg.get("report_after")))
        if self.failures >= every:
            delay = cap
        if self.failures % every == 0:
            self._report(action, err)
        self._wait(delay, on_config=wait_config)

    def _report(self, action: dict, err: EcologyError) -> None:
        record = {"type": "agent.repeated_failures", "at": iso(time.time()), "failures": self.failures,
                  "last_action": action.get("action"), "reason": err.reason, "message": err.message[:300],
                  "recent": [h for h in list(self._history)[-5:] if not h["ok"]],
                  "pace_seconds": self.config.get("error_backoff_max")}
        self.log.error("repeated_failures", failures=self.failures, last_action=action.get("action"),
                       reason=err.reason, message=err.message[:300])
        try:
            self.memory.add_report(record)
        except EcologyError as e:
            self.log.warning("report_not_saved", reason=e.reason, message=e.message[:200])

    # -- act -------------------------------------------------------------------------

    def _me(self, ids: list[str]) -> list[str]:
        return [self.agent_id if x == "me" else x for x in ids]

    def execute(self, a: dict, obs: Observation) -> Any:
        """Carry out one validated action; returns its result (JSON-able) or raises EcologyError."""
        c = self.client
        kind = a["action"]
        if kind == "read":
            art = c.read(a["artifact_id"])
            return {"id": art.id, "kind": art.kind, "version": art.version, "created_by": art.created_by,
                    "controller": to_python(art.state).get("controller"), "metadata": to_python(art.metadata),
                    "interface": [{"name": m.name, "description": m.description,
                                   "input_schema": to_python(m.input_schema)} for m in art.interface],
                    "content": clip(art.content, 4000)}
        if kind == "write":
            kw = {"access_contract_id": a.get("access_contract_id", ""), "metadata": a["metadata"]}
            if a["executable"]:
                kw.update(can_execute=True, interface=a["interface"])
            resp = c.write(a["artifact_id"], a["content"], **kw)
            return {"id": resp.artifact.id, "version": resp.artifact.version, "created": resp.created}
        if kind == "delete":
            art = c.delete(a["artifact_id"])
            return {"id": art.id, "deleted": True, "version": art.version}
        if kind == "invoke":
            return c.invoke(a["artifact_id"], a["method"], **a["args"])
        if kind == "transfer":
            return c.transfer(a["to"], a["amount"], memo=a.get("memo", ""))
        if kind == "escrow_list":
            return c.escrow_list(a["artifact_id"], a["price"])
        if kind == "escrow_purchase":
            return c.escrow_purchase(a["artifact_id"])
        if kind == "escrow_cancel":
            return c.escrow_cancel(a["artifact_id"])
        if kind == "listings":
            return c.escrow_listings()[:50]
        if kind == "search":
            found = c.search(a["query"], limit=a["limit"])
            return [summary(x) for x in found]
        if kind == "note":
            self.memory.add_note(a["text"], obs.now_iso)
            return {"noted": True, "notes": len(self.memory.notes)}
        if kind == "sleep":
            self.log.info("sleeping", seconds=a["seconds"], why=a.get("reason"))
            return {"woke": self._wait(a["seconds"]), "slept": a["seconds"]}
        if kind == "sleep_until_event":
            return self._sleep_until_event(a, obs)
        if kind == "sleep_until":
            return self._sleep_until(a, obs)
        raise AssertionError(kind)

    def _sleep_until_event(self, a: dict, obs: Observation) -> dict:
        hit: list = []

        def sink(ev) -> None:
            with self._cond:
                if not hit:
                    hit.append(ev)
                self._cond.notify_all()

        filters = {"types": a["types"], "artifact_ids": self._me(a["artifact_ids"]),
                   "principal_ids": self._me(a["principal_ids"])}
        after = min(a.get("after_seq", obs.last_event_seq), obs.last_event_seq)
        watch = _Watch(self, "sleep", sink, after, **filters)
        self.log.info("sleeping_until_event", after_seq=after, timeout=a["timeout"], **filters)
        try:
            why = self._wait(a["timeout"], lambda: bool(hit))
        finally:
            watch.close()
        out: dict = {"woke": "event" if why == "woken" else why}
        if hit:
            out["event"] = event_dict(hit[0])
        return out

    def _sleep_until(self, a: dict, obs: Observation) -> dict:
        (name, value), = a["condition"].items()
        deadline = time.monotonic() + a["timeout"]
        self.log.info("sleeping_until", condition=a["condition"], timeout=a["timeout"])
        if name == "compute_at_least":
            c = obs.compute
            need = 0.0 if value <= c["balance"] else (
                (value - c["balance"]) / c["rate"] if c["rate"] > 0 else a["timeout"])
            why = self._wait(min(need, a["timeout"]))
            return {"woke": "condition" if why == "timeout" and need <= a["timeout"] else why}
        if name == "artifact_exists":
            hit: list = []

            def sink(ev) -> None:
                with self._cond:
                    hit.append(ev)
                    self._cond.notify_all()

            watch = _Watch(self, "sleep", sink, obs.last_event_seq, types=["artifact.written"],
                           artifact_ids=[value])
            try:
                try:
                    meta = self.client.get_metadata(value)
                    if not meta.get("deleted"):
                        return {"woke": "condition"}
                except EcologyError as e:
                    if e.reason not in ("NOT_FOUND",):
                        raise
                why = self._wait(a["timeout"], lambda: bool(hit))
            finally:
                watch.close()
            return {"woke": "condition" if why == "woken" else why}
        # scrip_at_least: checked now, and again after every event concerning the agent
        # (a stream of those, from the seq observed before deciding).
        def bump(ev) -> None:
            with self._cond:
                self._mine_counter += 1
                self._cond.notify_all()

        watch = _Watch(self, "sleep", bump, obs.last_event_seq, principal_ids=[self.agent_id])
        try:
            scrip = obs.scrip
            while True:
                if scrip >= value:
                    return {"woke": "condition", "scrip": scrip}
                with self._cond:
                    seen = self._mine_counter
                why = self._wait(deadline - time.monotonic(), lambda: self._mine_counter != seen)
                if why != "woken":
                    return {"woke": why, "scrip": scrip}
                scrip = self.client.get_state().scrip
        finally:
            watch.close()


def summary(art: dict) -> dict:
    """A discovery result, compact enough for a prompt."""
    meta = art.get("metadata") or {}
    out = {"id": art.get("id"), "kind": art.get("kind"), "created_by": art.get("created_by"),
           "controller": (art.get("state") or {}).get("controller")}
    if meta:
        out["metadata"] = {k: meta[k] for k in list(meta)[:8]}
    if art.get("interface"):
        out["methods"] = [{"name": m.get("name"), "description": (m.get("description") or "")[:160],
                           "input_schema": m.get("input_schema") or {}} for m in art["interface"][:5]]
    return out


def _internal():
    import grpc

    return grpc.StatusCode.INTERNAL
