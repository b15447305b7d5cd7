"""HTML helpers shared by the dashboard's pages: the page frame (navigation, styles, the
EventSource every page opens), tables, small formatters. Everything is escaped here or by
the caller with html.escape; nothing is fetched from outside the dashboard."""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

from starlette.responses import HTMLResponse

STATIC = Path(__file__).parent / "static"
UPLOT_DIST = STATIC / "node_modules" / "uplot" / "dist"
UPLOT_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
SETUP_HINT = "scripts/setup.sh run   (or: cd server/dashboard/static && npm ci)"

NAV = (("/", "World"), ("/agents", "Agents"), ("/artifacts", "Artifacts"), ("/market", "Market"),
       ("/events", "Events"))

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d232b;font-size:15px}
header{background:#1f2d3d;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3ff;text-decoration:none;font-weight:600}header a.on{color:#fff;border-bottom:2px solid #fff}header b{font-size:18px;margin-right:12px}
main{padding:18px 24px}h1{font-size:22px;margin:0 0 14px}h2{font-size:16px;margin:22px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:14px}.card{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:12px 16px;min-width:150px}
.card .k{color:#5b6877;font-size:13px}.card .v{font-size:24px;font-weight:650;margin-top:4px}
.ok{color:#137333}.bad{color:#b3261e}.muted{color:#6b7785}.warn{background:#fff4e5;border:1px solid #f0b45b;padding:10px 14px;border-radius:6px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde2e8;width:100%}
th,td{padding:6px 10px;border-bottom:1px solid #e6e9ee;text-align:left;vertical-align:top}
th{background:#eef1f5;font-size:13px;color:#3b4756}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;margin:0;font-size:12.5px;max-height:260px;overflow:auto;background:#f3f5f8;padding:6px;border-radius:4px}
#live{font-size:13px;margin-left:auto}form{margin-bottom:12px}input,select{padding:4px 6px}
button{padding:5px 12px;border-radius:5px;border:1px solid #8a97a8;background:#fff;cursor:pointer;font-weight:600}
button.danger{border-color:#b3261e;color:#b3261e}.controls{display:flex;gap:8px;align-items:center;margin:10px 0}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}.plot{overflow:hidden}
.legend{font-size:12px;margin-bottom:2px}.legend .key{margin-right:10px;white-space:nowrap}
.chart{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:8px}.chart h3{font-size:13px;margin:0 0 4px;color:#3b4756}
.state-acting{color:#137333;font-weight:600}.state-sleeping{color:#2b6cb0}.state-dead{color:#b3261e}.state-stopped{color:#8a4b00;font-weight:600}
.scroll{max-height:620px;overflow:auto;border:1px solid #dde2e8}
.two{display:grid;grid-template-columns:1fr 1fr;gap:18px}code{font-size:12.5px}
"""

JS_COMMON = """
function esc(s){return String(s==null?'':s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function setText(id,v){var e=document.getElementById(id);if(e)e.textContent=v;}
var q=location.search;if(STREAM_AGENTS)q+=(q?'&':'?')+'agents=1';  // agents=1: this page shows the agents list
var es=new EventSource('/stream'+q);
es.onopen=function(){setText('live','live');};
es.onerror=function(){setText('live','reconnecting');};
// Close the stream when the page goes away: a browser allows 6 connections per host, and a
// page kept in its back/forward cache would otherwise hold one open.
window.addEventListener('pagehide',function(){es.close();});
window.addEventListener('pageshow',function(ev){if(ev.persisted)location.reload();});
function control(path,body){var h={'X-Ecology-Dashboard':'1','Content-Type':'application/json'};
 return fetch(path+location.search,{method:'POST',headers:h,body:JSON.stringify(body||{})})
  .then(function(r){return r.json().then(function(j){setText('control-result',(r.ok?'':'refused: ')+(j.message||JSON.stringify(j)));return j;});});}
"""


def e(v) -> str:
    return html.escape("" if v is None else str(v))


def page(title: str, body: str, script: str, token_qs: str, active: str = "", head: str = "") -> HTMLResponse:
    nav = "".join(f'<a href="{href}{token_qs}"{" class=on" if href == active else ""}>{name}</a>'
                  for href, name in NAV)
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset=utf-8><title>{e(title)} - Agent Ecology</title>"
        f"<style>{CSS}</style>{head}</head><body><header><b>Agent Ecology</b>{nav}"
        f'<span id="live" class="muted">connecting</span></header><main>{body}'
        f'<p id="control-result" class="muted"></p></main>'
        f"<script>var STREAM_AGENTS={'true' if needs_agents(script) else 'false'};{JS_COMMON}{script}</script>"
        "</body></html>")


def needs_agents(script: str) -> bool:
    """A page whose script listens to the stream's `agents` messages asks for them
    (`/stream?agents=1`): the dashboard then refreshes the agents every second instead of
    every AGENTS_SECONDS (server/dashboard/app.py)."""
    return "addEventListener('agents'" in script


def table(headers: list[str], rows: list[str], body_id: str = "", empty: str = "none yet") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    rows_html = "".join(rows) or f'<tr class=empty><td colspan={len(headers)} class=muted>{e(empty)}</td></tr>'
    bid = f' id="{body_id}"' if body_id else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody{bid}>{rows_html}</tbody></table>"


def clock(at: str) -> str:
    """HH:MM:SS.mmm of an RFC 3339 time (the full time is the cell's title)."""
    return at[11:23] if len(at) >= 23 else at


def when(ts) -> str:
    """Seconds since the epoch as a UTC date and time."""
    try:
        return _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return "-"


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


def event_row(ev: dict, link) -> str:
    """One event as a table row; `link(id)` makes an id into a link."""
    data = json.dumps(ev["data"], ensure_ascii=False)
    if len(data) > 400:
        data = data[:397] + "..."
    return (f'<tr><td class=num>{ev["seq"]}</td><td title="{e(ev["at"])}">{e(clock(ev["at"]))}</td>'
            f'<td>{e(ev["type"])}</td><td>{link(ev["principal_id"])}</td><td>{link(ev["artifact_id"])}</td>'
            f'<td>{", ".join(link(r) for r in ev["related_ids"])}</td><td><code>{e(data)}</code></td></tr>')


EVENT_HEADERS = ["Seq", "At", "Type", "Principal", "Artifact", "Related", "Data"]

JS_EVENT_ROW = """
function evRow(e,tq){var l=function(id){if(!id)return '';var p=id.indexOf('genesis_')===0||!window.agentIds||!agentIds[id]?'/artifacts/':'/agents/';
 return '<a href="'+p+encodeURIComponent(id)+tq+'">'+esc(id)+'</a>';};
 var d=JSON.stringify(e.data);if(d.length>400)d=d.substring(0,397)+'...';
 return '<td class=num>'+e.seq+'</td><td title="'+esc(e.at)+'">'+esc(e.at.substring(11,23))+'</td><td>'+esc(e.type)+'</td><td>'+
  l(e.principal_id)+'</td><td>'+l(e.artifact_id)+'</td><td>'+e.related_ids.map(l).join(', ')+'</td><td><code>'+esc(d)+'</code></td>';}
function prependEvent(tbodyId,e,tq,max){var tb=document.getElementById(tbodyId);if(!tb)return;
 var empty=tb.querySelector('tr.empty');if(empty)empty.remove();
 var tr=document.createElement('tr');tr.innerHTML=evRow(e,tq);tb.insertBefore(tr,tb.firstChild);while(tb.rows.length>(max||500))tb.deleteRow(-1);}
"""


def uplot_head(tq: str = "") -> tuple[str, str]:
    """(<head> tags loading uPlot from /static/uplot/, a visible notice if it is not installed)."""
    missing = [f for f in UPLOT_FILES if not (UPLOT_DIST / f).exists()]
    if missing:
        return "", (f'<p class=warn id="charts-missing"><b>Charts are off:</b> the chart library is not installed '
                    f'({e(", ".join(missing))} missing under {e(UPLOT_DIST)}). Run <code>{e(SETUP_HINT)}</code> '
                    "and reload. The figures above still update live.</p>")
    return (f'<link rel=stylesheet href="/static/uplot/uPlot.min.css{tq}">'
            f'<script src="/static/uplot/uPlot.iife.min.js{tq}"></script>'), ""
