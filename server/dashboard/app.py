"""Starlette app of the dashboard. Decisions:

* The gRPC calls are made by the synchronous AdminClient from two daemon threads (the
  event watcher and the poller); SSE handlers only read the Feed and wait on per-client
  asyncio queues, so a slow server never blocks the web loop.
* Auth: a dashboard listening on a loopback address needs none; on any other address
  every request needs the admin token (`Authorization: Bearer <token>` or `?token=`;
  pages keep `?token=` in their links and in their EventSource URL). A dashboard is
  never exposed without it.
* No external assets: HTML, CSS, JS and the SVG sparkline are all inline.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import html
import ipaddress
import json
import threading
import time
from urllib.parse import urlencode

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

POLL_SECONDS = 1.0
RECENT_EVENTS = 500
RATE_WINDOW = 60  # seconds of the events-per-second sparkline


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


def clock(at: str) -> str:
    """HH:MM:SS.mmm of an RFC 3339 time (the full time is the cell's title)."""
    return at[11:23] if len(at) >= 23 else at


def event_dict(ev) -> dict:
    return {"seq": ev.seq, "at": ev.at.ToJsonString() if ev.HasField("at") else "", "type": ev.type,
            "principal_id": ev.principal_id, "artifact_id": ev.artifact_id,
            "related_ids": list(ev.related_ids),
            "data": _ints(json_format.MessageToDict(ev.data)) if ev.HasField("data") else {}}


def agent_dict(a) -> dict:
    flow = {f.name: f for f in a.flow}
    stock = {s.name: s for s in a.stock}
    llm = stock.get("llm_budget")
    compute = flow.get("compute")
    return {"agent_id": a.agent_id, "scrip": a.scrip, "deleted": a.deleted,
            "compute": None if compute is None else round(compute.balance, 2),
            "compute_capacity": None if compute is None else compute.capacity,
            "llm_budget": None if llm is None else llm.quota, "llm_spent": None if llm is None else llm.used}


def stats_dict(s) -> dict:
    return {"agents": s.agents, "artifacts": s.artifacts, "minted": s.minted, "burned": s.burned,
            "total_balances": s.total_balances, "invariant_holds": s.total_balances == s.minted - s.burned,
            "last_event_seq": s.last_event_seq, "isolation": s.sandbox_isolation,
            "agent_backend": s.agent_backend, "paused": s.paused, "steps_left": s.steps_left,
            "uptime_seconds": round(s.uptime_seconds, 1)}


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
        self._counts: collections.Counter = collections.Counter()  # receipt second -> events
        self._lock = threading.Lock()
        self._listeners: set = set()  # (loop, queue)
        self._stop = threading.Event()
        self._sub = None
        self._live_after = 0

    def start(self) -> "Feed":
        self._poll_once()
        self._live_after = (self.stats or {}).get("last_event_seq", 0)  # older ones are history, not rate
        after = max(0, self._live_after - 100)  # some history for /events
        self._sub = self.admin.watch_events(after_seq=after)
        for target in (self._watch, self._poll):
            threading.Thread(target=target, daemon=True, name=f"dashboard{target.__name__}").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sub is not None:
            self._sub.close()

    # -- producers (threads) ------------------------------------------------------------

    def _watch(self) -> None:
        try:
            for ev in self._sub:
                d = event_dict(ev)
                with self._lock:
                    self.events.append(d)
                    if ev.seq > self._live_after:
                        self._counts[int(time.time())] += 1
                self._publish("event", d)
        except Exception as e:  # noqa: BLE001 - shown on the pages
            self.error = f"event stream ended: {e}"

    def _poll_once(self) -> None:
        try:
            stats, agents = self.admin.get_stats(), self.admin.list_agents()
            self.stats, self.agents, self.error = stats_dict(stats), [agent_dict(a) for a in agents], ""
        except Exception as e:  # noqa: BLE001 - shown on the pages; retried next second
            self.error = f"{type(e).__name__}: {e}"

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._poll_once()
            self._publish("stats", self.snapshot())
            self._publish("agents", self.agents)

    def rates(self) -> list[int]:
        """Events received in each of the last RATE_WINDOW whole seconds, oldest first."""
        now = int(time.time())
        with self._lock:
            for sec in [s for s in self._counts if s < now - RATE_WINDOW]:
                del self._counts[sec]
            return [self._counts.get(s, 0) for s in range(now - RATE_WINDOW, now)]

    def snapshot(self) -> dict:
        r = self.rates()
        return {**(self.stats or {}), "rate": round(sum(r[-10:]) / 10, 1), "rates": r, "error": self.error}

    def recent(self, types, principals) -> list[dict]:
        with self._lock:
            return [e for e in self.events if matches(e, types, principals)]

    def _publish(self, kind: str, data) -> None:
        for loop, queue in list(self._listeners):
            def put(q=queue):
                try:
                    q.put_nowait((kind, data))
                except asyncio.QueueFull:
                    pass  # a slow browser misses updates rather than growing memory
            try:
                loop.call_soon_threadsafe(put)
            except RuntimeError:
                self._listeners.discard((loop, queue))

    def listen(self):
        item = (asyncio.get_running_loop(), asyncio.Queue(maxsize=1000))
        self._listeners.add(item)
        return item

    def unlisten(self, item) -> None:
        self._listeners.discard(item)


# -- rendering ---------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d232b;font-size:15px}
header{background:#1f2d3d;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3ff;text-decoration:none;font-weight:600}header b{font-size:18px;margin-right:12px}
main{padding:18px 24px}h1{font-size:22px;margin:0 0 14px}
.cards{display:flex;flex-wrap:wrap;gap:14px}.card{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:12px 16px;min-width:170px}
.card .k{color:#5b6877;font-size:13px}.card .v{font-size:24px;font-weight:650;margin-top:4px}
.ok{color:#137333}.bad{color:#b3261e}.muted{color:#6b7785}
table{border-collapse:collapse;background:#fff;border:1px solid #dde2e8;width:100%}
th,td{padding:6px 10px;border-bottom:1px solid #e6e9ee;text-align:left;vertical-align:top}
th{background:#eef1f5;font-size:13px;color:#3b4756}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;margin:0;font-size:12.5px;max-height:260px;overflow:auto;background:#f3f5f8;padding:6px;border-radius:4px}
#live{font-size:13px;margin-left:auto}form{margin-bottom:12px}input{padding:4px 6px}
"""

JS_COMMON = """
function esc(s){return String(s==null?'':s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function setText(id,v){var e=document.getElementById(id);if(e)e.textContent=v;}
var es=new EventSource('/stream'+location.search);
es.onopen=function(){setText('live','live');};
es.onerror=function(){setText('live','reconnecting');};
"""


def page(title: str, body: str, script: str, token_qs: str) -> HTMLResponse:
    nav = "".join(f'<a href="{href}{token_qs}">{name}</a>'
                  for href, name in (("/", "World"), ("/agents", "Agents"), ("/events", "Events")))
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)} - Agent Ecology</title>"
        f"<style>{CSS}</style></head><body><header><b>Agent Ecology</b>{nav}"
        f'<span id="live" class="muted">connecting</span></header><main>{body}</main>'
        f"<script>{JS_COMMON}{script}</script></body></html>")


def sparkline(rates: list[int], width: int = 360, height: int = 48) -> str:
    top = max(rates + [1])
    step = width / max(1, len(rates) - 1)
    pts = " ".join(f"{i * step:.1f},{height - 2 - (r / top) * (height - 4):.1f}" for i, r in enumerate(rates))
    return (f'<svg id="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<rect width="{width}" height="{height}" fill="#fff"/>'
            f'<polyline fill="none" stroke="#2b6cb0" stroke-width="2" points="{pts}"/></svg>')


def fmt_value(v) -> str:
    return html.escape(json.dumps(v, indent=1, ensure_ascii=False)) if v not in (None, {}, []) else ""


def short(v) -> str:
    """A one-line name of a decision's action or outcome: its kind/verb if it has one."""
    if isinstance(v, dict):
        for key in ("action", "kind", "verb", "type", "status", "result"):
            if isinstance(v.get(key), (str, int, float, bool)):
                return f"{key}={v[key]}"
    text = json.dumps(v, ensure_ascii=False) if v not in (None, {}) else "-"
    return text if len(text) < 80 else text[:77] + "..."


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

    async def world(request):
        s = feed.snapshot()
        inv = s.get("invariant_holds")
        cards = [("Agents", "agents", s.get("agents", "?")),
                 ("Scrip supply", "supply", s.get("total_balances", "?")),
                 ("Ledger invariant", "invariant", "holds" if inv else ("BROKEN" if inv is False else "?")),
                 ("Minted / burned", "mintburn", f"{s.get('minted', '?')} / {s.get('burned', '?')}"),
                 ("Events/s (10 s)", "rate", s["rate"]),
                 ("Last event", "lastseq", s.get("last_event_seq", "?")),
                 ("Isolation", "isolation", s.get("isolation", "?")),
                 ("World", "paused", "paused" if s.get("paused") else "running")]
        def cls(i):
            return {"invariant": " ok" if inv else " bad" if inv is False else "",
                    "paused": " bad" if s.get("paused") else ""}.get(i, "")

        body = "<h1>World</h1><div class=cards>" + "".join(
            f'<div class=card><div class=k>{k}</div><div class="v{cls(i)}" id="{i}">{html.escape(str(v))}</div></div>'
            for k, i, v in cards) + "</div>"
        body += (f'<h2 style="font-size:16px">Events per second, last {RATE_WINDOW} s</h2>'
                 f'<div id="sparkbox">{sparkline(s["rates"])}</div>'
                 f'<p id="error" class="bad">{html.escape(s["error"])}</p>')
        script = """
es.addEventListener('stats',function(m){var s=JSON.parse(m.data);
 setText('agents',s.agents);setText('supply',s.total_balances);
 setText('invariant',s.invariant_holds?'holds':'BROKEN');
 document.getElementById('invariant').className='v '+(s.invariant_holds?'ok':'bad');
 setText('mintburn',s.minted+' / '+s.burned);setText('rate',s.rate);setText('lastseq',s.last_event_seq);
 setText('isolation',s.isolation);setText('paused',s.paused?'paused':'running');document.getElementById('paused').className='v'+(s.paused?' bad':'');setText('error',s.error||'');
 var r=s.rates,top=Math.max.apply(null,r.concat([1])),w=360,h=48,st=w/Math.max(1,r.length-1);
 var pts=r.map(function(v,i){return (i*st).toFixed(1)+','+(h-2-(v/top)*(h-4)).toFixed(1);}).join(' ');
 document.querySelector('#spark polyline').setAttribute('points',pts);});
"""
        return page("World", body, script, token_qs(request))

    def agent_row(a: dict, tq: str) -> str:
        def n(v):
            return "-" if v is None else html.escape(str(v))
        aid = html.escape(a["agent_id"])
        comp = "-" if a["compute"] is None else f"{a['compute']} / {a['compute_capacity']:g}"
        return (f'<tr data-agent="{aid}"><td><a href="/agents/{aid}{tq}">{aid}</a>'
                f'{" (deleted)" if a["deleted"] else ""}</td><td class=num>{a["scrip"]}</td>'
                f'<td class=num>{html.escape(comp)}</td><td class=num>{n(a["llm_budget"])}</td>'
                f'<td class=num>{n(a["llm_spent"])}</td></tr>')

    async def agents(request):
        tq = token_qs(request)
        rows = "".join(agent_row(a, tq) for a in feed.agents)
        body = ("<h1>Agents</h1><table><thead><tr><th>Agent</th><th>Scrip</th><th>Compute</th>"
                "<th>LLM budget left (µ$)</th><th>LLM spent (µ$)</th></tr></thead>"
                f'<tbody id="agents">{rows}</tbody></table>')
        script = """
var tq=%s;
es.addEventListener('agents',function(m){var a=JSON.parse(m.data);
 document.getElementById('agents').innerHTML=a.map(function(x){
  var n=function(v){return v==null?'-':esc(v);};
  var c=x.compute==null?'-':x.compute+' / '+x.compute_capacity;
  return '<tr data-agent="'+esc(x.agent_id)+'"><td><a href="/agents/'+encodeURIComponent(x.agent_id)+tq+'">'+esc(x.agent_id)+'</a>'+(x.deleted?' (deleted)':'')+
   '</td><td class=num>'+x.scrip+'</td><td class=num>'+esc(c)+'</td><td class=num>'+n(x.llm_budget)+'</td><td class=num>'+n(x.llm_spent)+'</td></tr>';}).join('');});
""" % json.dumps(tq)
        return page("Agents", body, script, tq)

    async def agent(request):
        from agent_runtime.errors import EcologyError

        aid = request.path_params["agent_id"]
        tq = token_qs(request)
        try:
            decisions = await asyncio.to_thread(lambda: admin.list_decisions(aid, limit=500).decisions)
        except EcologyError as e:
            return page(aid, f"<h1>{html.escape(aid)}</h1><p class=bad>{html.escape(e.reason)}: "
                             f"{html.escape(e.message or '')}</p>", "", tq)
        me = next((a for a in feed.agents if a["agent_id"] == aid), None)
        head = (f'<p>scrip <b id="scrip">{me["scrip"]}</b>, compute {me["compute"]}, LLM budget left '
                f'{me["llm_budget"]} µ$</p>') if me else ""
        rows = []
        for d in decisions:
            action, outcome = _ints(json_format.MessageToDict(d.action)), _ints(json_format.MessageToDict(d.outcome))
            llm = "".join(f"<div class=muted>{html.escape(x.model)} ({html.escape(x.request_id)})</div>"
                          f"<b>prompt</b><pre>{fmt_value(json_format.MessageToDict(x.prompt))}</pre>"
                          f"<b>answer</b><pre>{html.escape(x.answer)}</pre>" for x in d.llm)
            if not llm and d.llm_request_ids:
                llm = "<span class=muted>no gateway record: " + html.escape(", ".join(d.llm_request_ids)) + "</span>"
            rows.append(f'<tr class=decision><td class=num>{d.step}</td><td>{html.escape(d.at.ToJsonString()[:19].replace("T", " "))}</td>'
                        f'<td><b>{html.escape(short(action))}</b><pre>{fmt_value(action)}</pre></td>'
                        f'<td><b>{html.escape(short(outcome))}</b><pre>{fmt_value(outcome)}</pre></td>'
                        f'<td>{llm}</td></tr>')
        body = (f"<h1>Agent {html.escape(aid)}</h1>{head}<p>{len(decisions)} decisions (oldest first)</p>"
                "<table><thead><tr><th>Step</th><th>At</th><th>Action</th><th>Outcome</th><th>LLM</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")
        script = """
var me=%s;
es.addEventListener('agents',function(m){JSON.parse(m.data).forEach(function(x){if(x.agent_id===me)setText('scrip',x.scrip);});});
""" % json.dumps(aid)
        return page(aid, body, script, tq)

    def filters(request) -> tuple[list[str], list[str]]:
        def split(name):
            return [p for v in request.query_params.getlist(name) for p in v.split(",") if p]
        return split("type"), split("principal")

    def event_row(e: dict) -> str:
        data = json.dumps(e["data"], ensure_ascii=False)
        return (f'<tr><td class=num>{e["seq"]}</td><td title="{html.escape(e["at"])}">{html.escape(clock(e["at"]))}</td><td>{html.escape(e["type"])}</td>'
                f'<td>{html.escape(e["principal_id"])}</td><td>{html.escape(e["artifact_id"])}</td>'
                f'<td>{html.escape(", ".join(e["related_ids"]))}</td><td><code>{html.escape(data)}</code></td></tr>')

    async def events_page(request):
        types, principals = filters(request)
        rows = "".join(event_row(e) for e in reversed(feed.recent(types, principals)[-200:]))
        t = request.query_params.get("token")
        hidden = f'<input type=hidden name=token value="{html.escape(t)}">' if t else ""
        body = ("<h1>Events</h1><form>type <input name=type placeholder=\"ledger.* or ledger.transfer\" "
                f'value="{html.escape(",".join(types))}"> principal <input name=principal '
                f'value="{html.escape(",".join(principals))}">{hidden} <button>filter</button></form>'
                "<table><thead><tr><th>Seq</th><th>At</th><th>Type</th><th>Principal</th><th>Artifact</th>"
                f'<th>Related</th><th>Data</th></tr></thead><tbody id="events">{rows}</tbody></table>')
        script = """
es.addEventListener('event',function(m){var e=JSON.parse(m.data);var tb=document.getElementById('events');
 var tr=document.createElement('tr');tr.innerHTML='<td class=num>'+e.seq+'</td><td title="'+esc(e.at)+'">'+esc(e.at.substring(11,23))+'</td><td>'+esc(e.type)+'</td><td>'+
  esc(e.principal_id)+'</td><td>'+esc(e.artifact_id)+'</td><td>'+esc(e.related_ids.join(', '))+'</td><td><code>'+esc(JSON.stringify(e.data))+'</code></td>';
 tb.insertBefore(tr,tb.firstChild);while(tb.rows.length>500)tb.deleteRow(-1);});
"""
        return page("Events", body, script, token_qs(request))

    async def stream(request):
        """Server-sent events: `stats` and `agents` every poll, `event` per matching event
        (filters `type` and `principal` as on /events)."""
        types, principals = filters(request)
        item = feed.listen()
        queue = item[1]

        async def gen():
            try:
                yield f"event: stats\ndata: {json.dumps(feed.snapshot())}\n\n"
                yield f"event: agents\ndata: {json.dumps(feed.agents)}\n\n"
                while True:
                    try:
                        kind, data = await asyncio.wait_for(queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if kind == "event" and not matches(data, types, principals):
                        continue
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
            finally:
                feed.unlisten(item)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return Starlette(routes=[Route("/", guard(world)), Route("/agents", guard(agents)),
                             Route("/agents/{agent_id:path}", guard(agent)),
                             Route("/events", guard(events_page)), Route("/stream", guard(stream))])


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
        self.server.should_exit = True
        self.feed.stop()
        self.thread.join(timeout=5)
        self.feed.admin.close()
