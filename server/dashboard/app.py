"""Starlette app of the dashboard. Decisions:

* The gRPC calls are made by the synchronous AdminClient from two daemon threads (the
  event watcher and the poller); SSE handlers only read the Feed and wait on per-client
  asyncio queues, so a slow server never blocks the web loop.
* Auth: a dashboard listening on a loopback address needs none; on any other address
  every request needs the admin token (`Authorization: Bearer <token>` or `?token=`;
  pages keep `?token=` in their links and in their EventSource URL). A dashboard is
  never exposed without it.
* No CDN: HTML, CSS and JS are inline; the chart library (uPlot) is an npm package with a
  lock file in server/dashboard/static (installed by scripts/setup.sh), served at
  /static/uplot/. Without it the World page says which command installs it.
* Controls (pause/resume/step, stop/start an agent) are POSTs that need, besides the auth
  above, the header `X-Ecology-Dashboard: 1`: a page of another site cannot send it without
  a CORS preflight this app never grants, so a loopback dashboard cannot be driven by a
  cross-site form (CSRF).
* What it asks of the server (it shares the server's cores, and its calls are pure
  overhead for the server): GetStats every POLL_SECONDS; ListAgents (about 5x GetStats'
  server CPU with 100 agents) every POLL_SECONDS only while a page showing the agents
  list is open (its EventSource asks `/stream?agents=1`), else every AGENTS_SECONDS (the
  charts' agents alive / Gini / LLM spend are then up to that old), and at once after a
  control; events through Admin.WatchEventBatches, at most one stream message per
  EVENTS_INTERVAL seconds instead of one per event (one message cost the server ~90 us;
  at 200 events/s that was more than the access log and the metrics together). The
  event rate figures count events by the second they were received, so they lag by up to
  EVENTS_INTERVAL.
* History: the Feed keeps the World page's time series (history.py) and the recent events
  by kind in memory, starting BACKFILL events before it started; older history of one
  artifact or agent is read through Admin.ListEvents when its page is opened.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import json
import threading
import time
from urllib.parse import urlencode

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from server.dashboard import pages_agents, pages_artifacts, pages_market, pages_world
from server.dashboard.history import History, gini
from server.dashboard.render import EVENT_HEADERS, JS_EVENT_ROW, UPLOT_DIST, e, event_row, page, table

POLL_SECONDS = 1.0
AGENTS_SECONDS = 5.0  # ListAgents while no page showing the agents list is open
EVENTS_INTERVAL = 0.25  # Admin.WatchEventBatches interval
RECENT_EVENTS = 2000
BACKFILL = 5000       # events before the dashboard started that it reads into its feed
RATE_WINDOW = 60      # seconds of per-second counts kept
RATE_SECONDS = 5      # the actions/s figure: the mean of the last 5 whole seconds


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ints(v):
    """Struct numbers are doubles: show 1000 rather than 1000.0."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
        return int(v)
    if isinstance(v, dict):
        return {k: _ints(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_ints(x) for x in v]
    return v


def event_dict(ev) -> dict:
    return {"seq": ev.seq, "at": ev.at.ToJsonString() if ev.HasField("at") else "", "type": ev.type,
            "principal_id": ev.principal_id, "artifact_id": ev.artifact_id,
            "related_ids": list(ev.related_ids),
            "data": _ints(json_format.MessageToDict(ev.data)) if ev.HasField("data") else {}}


def is_agent_action(ev: dict) -> bool:
    """An event an agent caused (not the system, the mint or another genesis artifact)."""
    pid = ev["principal_id"]
    return bool(pid) and not pid.startswith("genesis_")


def agent_dict(a) -> dict:
    flow = {f.name: f for f in a.flow}
    stock = {s.name: s for s in a.stock}
    llm = stock.get("llm_budget")
    compute = flow.get("compute")
    return {"agent_id": a.agent_id, "scrip": a.scrip, "deleted": a.deleted,
            "compute": None if compute is None else round(compute.balance, 2),
            "compute_capacity": None if compute is None else compute.capacity,
            "llm_budget": None if llm is None else llm.quota - llm.used, "llm_spent": None if llm is None else llm.used,
            "stopped": a.stopped, "state": a.state or ("dead" if a.deleted else "?"),
            "idle_seconds": a.idle_seconds}


def stats_dict(s) -> dict:
    return {"agents": s.agents, "artifacts": s.artifacts, "minted": s.minted, "burned": s.burned,
            "total_balances": s.total_balances, "invariant_holds": s.total_balances == s.minted - s.burned,
            "last_event_seq": s.last_event_seq, "isolation": s.sandbox_isolation,
            "agent_backend": s.agent_backend, "paused": s.paused, "steps_left": s.steps_left,
            "uptime_seconds": round(s.uptime_seconds, 1), "agents_active": s.agents_active,
            "agents_stopped": s.agents_stopped, "sandbox_warm": s.sandbox_workers_warm,
            "sandbox_idle": s.sandbox_workers_idle, "sandbox_started": s.sandbox_workers_started}


def matches(ev: dict, types: list[str], principals: list[str]) -> bool:
    if types and not any(ev["type"] == t or (t.endswith(".*") and ev["type"].startswith(t[:-1]))
                         for t in types):
        return False
    if principals and not ({ev["principal_id"], *ev["related_ids"]} & set(principals)):
        return False
    return True


class Feed:
    """What the pages show, kept fresh by the watcher and poller threads."""

    def __init__(self, admin) -> None:
        self.admin = admin
        self.stats: dict | None = None
        self.agents: list[dict] = []
        self.error = ""
        self.events: collections.deque = collections.deque(maxlen=RECENT_EVENTS)
        # Recent events by kind (the Market, Agent and World pages), from the stream.
        self.kinds = {k: collections.deque(maxlen=RECENT_EVENTS) for k in ("ledger", "market", "artifact")}
        self.last_action: dict[str, dict] = {}   # agent -> its latest event {type, outcome, seq}
        self.history = History()
        self._counts: collections.Counter = collections.Counter()   # receipt second -> agents' events
        self._invokes: collections.Counter = collections.Counter()  # receipt second -> artifact.invoked
        self._lock = threading.Lock()
        self._listeners: set = set()  # (loop, queue)
        self._agent_listeners: set = set()  # those of pages showing the agents list
        self._agents_at = 0.0  # monotonic time of the last ListAgents
        self._stop = threading.Event()
        self._sub = None
        self._live_after = 0
        self._last_sample: dict | None = None
        self.start_seq = 0

    def start(self) -> "Feed":
        self._poll_once()
        self._live_after = (self.stats or {}).get("last_event_seq", 0)  # older ones are history, not rate
        self.start_seq = max(0, self._live_after - BACKFILL)
        self._sub = self.admin.watch_event_batches(after_seq=self.start_seq, interval=EVENTS_INTERVAL)
        for target in (self._watch, self._poll):
            threading.Thread(target=target, daemon=True, name=f"dashboard{target.__name__}").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._publish("close", None)  # open /stream responses end (a clean server shutdown)
        if self._sub is not None:
            self._sub.close()

    # -- producers (threads) ------------------------------------------------------------

    def _watch(self) -> None:
        batch: list[dict] = []
        try:
            for ev in self._sub:
                d = event_dict(ev)
                t = d["type"]
                with self._lock:
                    self.events.append(d)
                    kind = ("ledger" if t.startswith("ledger.") else
                            "market" if t.split(".")[0] in ("escrow", "debt", "oracle") or t == "control.transferred"
                            else "artifact" if t.startswith("artifact.") else None)
                    if kind:
                        self.kinds[kind].append(d)
                    if is_agent_action(d):
                        self.last_action[d["principal_id"]] = {
                            "type": t, "seq": d["seq"],
                            "outcome": ("ok" if d["data"].get("ok", True) else d["data"].get("reason") or "failed")}
                    if ev.seq > self._live_after:
                        sec = int(time.time())
                        if is_agent_action(d):
                            self._counts[sec] += 1
                        if t == "artifact.invoked":
                            self._invokes[sec] += 1
                if t == "oracle.resolved":
                    self.history.add_mint(d)
                batch.append(d)
                if not self._sub.buffered:  # the end of the server's batch: one message to each page
                    self._publish("events", batch)
                    batch = []
        except Exception as e:  # noqa: BLE001 - shown on the pages
            self.error = f"event stream ended: {e}"

    def _poll_once(self, agents: bool = True) -> bool:
        """GetStats, and ListAgents if `agents`; True when the agents were refreshed."""
        try:
            stats = self.admin.get_stats()
            listed = self.admin.list_agents() if agents else None
        except Exception as e:  # noqa: BLE001 - shown on the pages; retried next second
            self.error = f"{type(e).__name__}: {e}"
            return False
        self.stats, self.error = stats_dict(stats), ""
        if listed is not None:
            self.agents, self._agents_at = [agent_dict(a) for a in listed], time.monotonic()
        self._sample()
        return listed is not None

    def _sample(self) -> None:
        s, now = self.stats, time.time()
        live = [a for a in self.agents if not a["deleted"]]
        prev = self._last_sample
        dt = max(1e-6, now - prev["t"]) if prev else POLL_SECONDS
        started = s["sandbox_started"]
        sample = {
            "t": round(now, 3), "agents": s["agents"],
            "alive": sum(1 for a in live if a["state"] in ("acting", "sleeping")),
            "actions_per_s": self.rate(), "supply": s["total_balances"],
            "gini": gini(a["scrip"] for a in live), "minted": s["minted"],
            "llm_spent": sum(a["llm_spent"] or 0 for a in self.agents),
            "invokes_per_s": self.rate(self._invokes),
            "sandbox_warm": s["sandbox_warm"], "sandbox_idle": s["sandbox_idle"],
            "sandbox_started_per_s": round((started - prev["_started"]) / dt, 2) if prev else 0.0,
        }
        self._last_sample = {**sample, "_started": started}
        self.history.add(sample)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            agents = bool(self._agent_listeners) or time.monotonic() - self._agents_at >= AGENTS_SECONDS - 0.05
            refreshed = self._poll_once(agents)
            self._publish("stats", self.snapshot())
            if refreshed:
                self.publish_agents()

    def publish_agents(self) -> None:
        if self._agent_listeners:
            self._publish("agents", {"agents": self.agents, "last": self.last_actions()},
                          self._agent_listeners)

    def rates(self, counts=None) -> list[int]:
        """Events received in each of the last RATE_WINDOW whole seconds, oldest first."""
        counts = self._counts if counts is None else counts
        now = int(time.time())
        with self._lock:
            for sec in [s for s in counts if s < now - RATE_WINDOW]:
                del counts[sec]
            return [counts.get(s, 0) for s in range(now - RATE_WINDOW, now)]

    def rate(self, counts=None) -> float:
        return round(sum(self.rates(counts)[-RATE_SECONDS:]) / RATE_SECONDS, 2)

    def snapshot(self) -> dict:
        last = self._last_sample or {}
        return {**(self.stats or {}), "rate": self.rate(), "error": self.error,
                "alive": last.get("alive"), "gini": last.get("gini"), "llm_spent": last.get("llm_spent"),
                "sample": {k: v for k, v in last.items() if not k.startswith("_")} or None}

    def last_actions(self) -> dict:
        with self._lock:
            return dict(self.last_action)

    def recent(self, types, principals) -> list[dict]:
        with self._lock:
            return [e for e in self.events if matches(e, types, principals)]

    def recent_events(self, admin, *, types=(), principal_ids=(), artifact_ids=(), limit: int = 100,
                      window: int = 50_000) -> list[dict]:
        """The newest `limit` stored events matching the filters among the last `window`
        events of the world (Admin.ListEvents), oldest first."""
        last = (self.stats or {}).get("last_event_seq", 0)
        after, out = max(0, last - window), []
        for _ in range(window // 10_000 + 2):
            r = admin.list_events(after_seq=after, types=list(types), principal_ids=list(principal_ids),
                                  artifact_ids=list(artifact_ids), limit=1000)
            out.extend(event_dict(x) for x in r.events)
            out = out[-limit:]
            if not r.more:
                break
            after = r.scanned_to
        return out

    def _publish(self, kind: str, data, listeners=None) -> None:
        for loop, queue in list(self._listeners if listeners is None else listeners):
            def put(q=queue):
                try:
                    q.put_nowait((kind, data))
                except asyncio.QueueFull:
                    pass  # a slow browser misses updates rather than growing memory
            try:
                loop.call_soon_threadsafe(put)
            except RuntimeError:
                self.unlisten((loop, queue))

    def listen(self, agents: bool = False):
        """A queue of (kind, data) for one /stream; `agents`: it also gets the agents list
        (and keeps ListAgents at every poll while it is open)."""
        item = (asyncio.get_running_loop(), asyncio.Queue(maxsize=1000))
        self._listeners.add(item)
        if agents:
            self._agent_listeners.add(item)
        return item

    def unlisten(self, item) -> None:
        self._listeners.discard(item)
        self._agent_listeners.discard(item)


# -- the app -----------------------------------------------------------------------------

def build_app(feed: Feed, admin, *, admin_token: str, require_token: bool) -> Starlette:
    def authorized(request) -> bool:
        if not require_token:
            return True
        given = request.query_params.get("token", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), admin_token.encode())

    def token_qs(request, first: bool = True) -> str:
        t = request.query_params.get("token")
        return (("?" if first else "&") + urlencode({"token": t})) if t else ""

    def guard(handler):
        async def wrapped(request):
            if not authorized(request):
                return PlainTextResponse("the admin token is required (Authorization: Bearer <token> or ?token=)\n",
                                         status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)
        return wrapped

    def linker(request):
        tq = token_qs(request)
        agent_ids = {a["agent_id"] for a in feed.agents}

        def link(id_, prefix: str | None = None) -> str:
            if not id_:
                return ""
            where = prefix or ("/agents/" if id_ in agent_ids else "/artifacts/")
            return f'<a href="{where}{e(id_)}{tq}">{e(id_)}</a>'
        return link

    async def world(request):
        return pages_world.world(feed, token_qs(request), request.query_params.get("range") == "week")

    async def agents(request):
        return pages_agents.agents(feed, token_qs(request))

    async def agent(request):
        return await pages_agents.agent(feed, admin, request.path_params["agent_id"], token_qs(request), linker(request))

    async def artifacts(request):
        return await pages_artifacts.artifacts(admin, request, token_qs(request), linker(request))

    async def artifact(request):
        return await pages_artifacts.artifact(admin, request.path_params["artifact_id"], token_qs(request),
                                              linker(request))

    async def market(request):
        return await pages_market.market(feed, admin, token_qs(request), linker(request))

    async def history(request):
        return JSONResponse(feed.history.columns(request.query_params.get("range") == "week"))

    def filters(request) -> tuple[list[str], list[str]]:
        def split(name):
            return [p for v in request.query_params.getlist(name) for p in v.split(",") if p]
        return split("type"), split("principal")

    async def events_page(request):
        types, principals = filters(request)
        artifact_q = request.query_params.get("artifact", "")
        link = linker(request)
        evs = [x for x in feed.recent(types, principals) if not artifact_q or x["artifact_id"] == artifact_q]
        rows = [event_row(x, link) for x in reversed(evs[-200:])]
        t = request.query_params.get("token")
        hidden = f'<input type=hidden name=token value="{e(t)}">' if t else ""
        body = ("<h1>Events</h1><form>type <input name=type placeholder=\"ledger.* or ledger.transfer\" "
                f'value="{e(",".join(types))}"> principal <input name=principal '
                f'value="{e(",".join(principals))}"> artifact <input name=artifact value="{e(artifact_q)}">'
                f"{hidden} <button>filter</button></form>" + table(EVENT_HEADERS, rows, "events"))
        script = JS_EVENT_ROW + """
var tq=%s, art=%s;
es.addEventListener('event',function(m){var e=JSON.parse(m.data);if(art&&e.artifact_id!==art)return;prependEvent('events',e,tq,500);});
""" % (json.dumps(token_qs(request)), json.dumps(artifact_q))
        return page("Events", body, script, token_qs(request), "/events")

    async def stream(request):
        """Server-sent events: `stats` every poll, `event` per matching event (filters `type`
        and `principal` as on /events), and with `agents=1` `agents` at every poll."""
        types, principals = filters(request)
        with_agents = request.query_params.get("agents") == "1"
        item = feed.listen(agents=with_agents)
        queue = item[1]

        async def gen():
            try:
                yield f"event: stats\ndata: {json.dumps(feed.snapshot())}\n\n"
                if with_agents:
                    yield f"event: agents\ndata: {json.dumps({'agents': feed.agents, 'last': feed.last_actions()})}\n\n"
                while True:
                    try:
                        kind, data = await asyncio.wait_for(queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if kind == "close":
                        return
                    if kind == "events":
                        out = "".join(f"event: event\ndata: {json.dumps(d)}\n\n"
                                      for d in data if matches(d, types, principals))
                        if out:
                            yield out
                        continue
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
            finally:
                feed.unlisten(item)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- controls (POST; see the module docstring for the CSRF header) ----------------------

    def control(fn):
        async def wrapped(request):
            from agent_runtime.errors import EcologyError

            if request.headers.get("x-ecology-dashboard") != "1":
                return JSONResponse({"message": "controls need the header X-Ecology-Dashboard: 1"}, status_code=403)
            try:
                body = await request.json()
            except ValueError:
                body = {}
            try:
                result = await asyncio.to_thread(fn, request, body if isinstance(body, dict) else {})
            except EcologyError as err:
                return JSONResponse({"reason": err.reason, "message": f"{err.reason}: {err.message}"}, status_code=400)
            feed._poll_once()  # the pages show the change at once
            feed._publish("stats", feed.snapshot())
            feed.publish_agents()
            return JSONResponse(result)
        return guard(wrapped)

    def world_control(request, body):
        action = request.path_params["action"]
        if action == "pause":
            r = admin.pause()
        elif action == "resume":
            r = admin.resume()
        elif action == "step":
            r = admin.step(int(body.get("calls") or 1))
        else:
            return {"message": f"no control {action!r}"}
        return {"paused": r.paused, "steps_left": r.steps_left,
                "message": f"world {'paused' if r.paused else 'running'}" + (f", {r.steps_left} steps left" if r.paused else "")}

    def agent_control(request, body):
        aid, action = request.path_params["agent_id"], request.path_params["action"]
        r = (admin.stop_agent if action == "stop" else admin.start_agent)(aid, memo="dashboard")
        return {"agent_id": r.agent_id, "stopped": r.stopped, "changed": r.changed,
                "message": f"agent {r.agent_id} {'stopped' if r.stopped else 'started'}"
                           + ("" if r.changed else " (it already was)")}

    routes = [
        Route("/control/{action:str}", control(world_control), methods=["POST"]),
        Route("/agents/{agent_id:str}/{action:str}", control(agent_control), methods=["POST"]),
        Route("/", guard(world)), Route("/agents", guard(agents)),
        Route("/agents/{agent_id:path}", guard(agent)),
        Route("/artifacts", guard(artifacts)), Route("/artifacts/{artifact_id:path}", guard(artifact)),
        Route("/market", guard(market)), Route("/history.json", guard(history)),
        Route("/events", guard(events_page)), Route("/stream", guard(stream)),
    ]
    static = StaticFiles(directory=str(UPLOT_DIST), check_dir=False)

    async def static_files(scope, receive, send):
        from starlette.requests import Request

        if not authorized(Request(scope)):
            await PlainTextResponse("the admin token is required\n", status_code=401)(scope, receive, send)
            return
        await static(scope, receive, send)

    routes.append(Mount("/static/uplot", app=static_files))
    return Starlette(routes=routes)


def make_server(admin, admin_token: str, listen: str):
    """(uvicorn.Server, Feed) for `listen` (HOST:PORT). Non-loopback: the token is required."""
    import uvicorn

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    host = host.strip("[]")
    feed = Feed(admin).start()
    app = build_app(feed, admin, admin_token=admin_token, require_token=not is_loopback(host))
    config = uvicorn.Config(app, host=host, port=int(port), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=1)
    return uvicorn.Server(config), feed


def serve(admin, admin_token: str, listen: str) -> None:
    """Run in the foreground until SIGINT/SIGTERM (`ecology dashboard`)."""
    server, feed = make_server(admin, admin_token, listen)
    try:
        server.run()
    finally:
        feed.stop()


class Background:
    """The dashboard in a thread (`ecology run --dashboard`); stop() ends it."""

    def __init__(self, admin, admin_token: str, listen: str) -> None:
        self.server, self.feed = make_server(admin, admin_token, listen)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="dashboard")
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:   # uvicorn ends its thread (sys.exit) when it cannot bind
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.feed.stop()
                raise OSError(f"the dashboard cannot listen on {listen}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.feed.stop()       # first: open event streams end, so the server stops at once
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.feed.admin.close()
