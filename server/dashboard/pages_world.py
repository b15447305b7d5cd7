"""The World page (`/`): the figures as cards, the run controls (pause, resume, step), and
charts over time from the dashboard's History (history.py) drawn by uPlot (served from
server/dashboard/static, installed by npm; a visible notice names the command when it is not).
New samples arrive with every `stats` server-sent event and are appended to the charts."""

from __future__ import annotations

import json

from server.dashboard.history import SERIES
from server.dashboard.render import e, page, table, uplot_head

# Charts: (title, [series names]).
CHARTS = [
    ("Agents", ["agents", "alive"]),
    ("Actions per second", ["actions_per_s"]),
    ("Scrip supply", ["supply"]),
    ("Gini coefficient of balances", ["gini"]),
    ("Scrip minted (cumulative)", ["minted"]),
    ("LLM spend (µ$, cumulative)", ["llm_spent"]),
    ("Sandbox load", ["invokes_per_s", "sandbox_warm", "sandbox_idle", "sandbox_started_per_s"]),
]
COLORS = ["#2b6cb0", "#d97706", "#137333", "#9333ea"]


def cards(s: dict) -> list[tuple[str, str, object]]:
    inv = s.get("invariant_holds")
    return [("Agents", "agents", s.get("agents", "?")),
            ("Alive", "alive", s.get("alive", "?")),
            ("Actions/s (5 s)", "rate", s.get("rate", 0)),
            ("Scrip supply", "supply", s.get("total_balances", "?")),
            ("Gini", "gini", s.get("gini", "?")),
            ("Ledger invariant", "invariant", "holds" if inv else ("BROKEN" if inv is False else "?")),
            ("Minted / burned", "mintburn", f"{s.get('minted', '?')} / {s.get('burned', '?')}"),
            ("LLM spend (µ$)", "llm", s.get("llm_spent", "?")),
            ("Sandbox warm/idle", "sandbox", f"{s.get('sandbox_warm', '?')} / {s.get('sandbox_idle', '?')}"),
            ("Last event", "lastseq", s.get("last_event_seq", "?")),
            ("Isolation", "isolation", s.get("isolation", "?")),
            ("World", "paused", "paused" if s.get("paused") else "running")]


def mint_rows(mints: list[dict]) -> list[str]:
    return [f'<tr><td class=num>{e(m["round"])}</td><td>{e(m["at"][:19].replace("T", " "))}</td>'
            f'<td class=num>{e(m["minted"])}</td><td>{e(", ".join(m["winners"]) or "-")}</td></tr>'
            for m in reversed(mints[-30:])]


def world(feed, tq: str, coarse: bool):
    s = feed.snapshot()
    inv = s.get("invariant_holds")

    def cls(i):
        return {"invariant": " ok" if inv else " bad" if inv is False else "",
                "paused": " bad" if s.get("paused") else ""}.get(i, "")

    head, missing = uplot_head(tq)
    body = "<h1>World</h1><div class=cards>" + "".join(
        f'<div class=card><div class=k>{k}</div><div class="v{cls(i)}" id="{i}">{e(v)}</div></div>'
        for k, i, v in cards(s)) + "</div>"
    body += ('<div class=controls><button id="btn-pause" onclick="control(\'/control/pause\')">Pause</button>'
             '<button id="btn-resume" onclick="control(\'/control/resume\')">Resume</button>'
             '<button id="btn-step" onclick="control(\'/control/step\',{calls:parseInt(document.getElementById(\'stepn\').value)})">'
             'Step</button><input id=stepn type=number value=10 min=1 style="width:70px"> mutating calls'
             f'<span class=muted style="margin-left:auto">history: {"one point a minute (a week)" if coarse else "one point a second (an hour)"}'
             f' &middot; <a href="/{tq}{"&" if tq else "?"}range={"hour" if coarse else "week"}">'
             f'{"last hour" if coarse else "last week"}</a></span></div>')
    body += f'<p id="error" class="bad">{e(s["error"])}</p>{missing}<div class=charts>'
    for n, (title, keys) in enumerate(CHARTS):
        legend = " ".join(f'<span class=key style="color:{COLORS[i % len(COLORS)]}">&#9632; {e(SERIES[k][0])}</span>'
                          for i, k in enumerate(keys))
        body += (f'<div class=chart><h3>{e(title)}</h3><div class=legend>{legend}</div>'
                 f'<div id="chart-{n}" class="plot"></div></div>')
    body += "</div>"
    cols = feed.history.columns(coarse)
    body += "<h2>Mint rounds</h2>" + table(["Round", "At", "Minted", "Winners"], mint_rows(cols["mints"]),
                                           "mints", "no round resolved yet")
    config = [{"title": t, "series": [{"key": k, "label": SERIES[k][0], "color": COLORS[i % len(COLORS)]}
                                      for i, k in enumerate(keys)]} for t, keys in CHARTS]
    script = """
var charts=%s, cols=%s, live=%s, plots=[];
function render(){if(typeof uPlot==='undefined')return;
 charts.forEach(function(c,n){var el=document.getElementById('chart-'+n);
  var data=[cols.t].concat(c.series.map(function(s){return cols[s.key];}));
  var opts={width:el.clientWidth,height:170,legend:{show:false},cursor:{show:true},scales:{x:{time:true}},
   series:[{}].concat(c.series.map(function(s){return {label:s.label,stroke:s.color,width:2,points:{show:false}};}))};
  plots[n]=new uPlot(opts,data,el);});}
render();
window.addEventListener('resize',function(){plots.forEach(function(p,n){if(p)p.setSize({width:document.getElementById('chart-'+n).clientWidth,height:170});});});
es.addEventListener('stats',function(m){var s=JSON.parse(m.data);
 setText('agents',s.agents);setText('alive',s.alive);setText('rate',s.rate);setText('supply',s.total_balances);setText('gini',s.gini);
 setText('invariant',s.invariant_holds?'holds':'BROKEN');document.getElementById('invariant').className='v '+(s.invariant_holds?'ok':'bad');
 setText('mintburn',s.minted+' / '+s.burned);setText('llm',s.llm_spent);setText('sandbox',s.sandbox_warm+' / '+s.sandbox_idle);
 setText('lastseq',s.last_event_seq);setText('isolation',s.isolation);
 setText('paused',s.paused?'paused':'running');document.getElementById('paused').className='v'+(s.paused?' bad':'');setText('error',s.error||'');
 if(live&&s.sample&&(!cols.t.length||s.sample.t>cols.t[cols.t.length-1])){cols.t.push(s.sample.t);
  charts.forEach(function(c){c.series.forEach(function(x){cols[x.key].push(s.sample[x.key]);});});
  if(cols.t.length>3600){Object.keys(cols).forEach(function(k){if(Array.isArray(cols[k])&&k!=='mints')cols[k].shift();});}
  plots.forEach(function(p,n){if(p)p.setData([cols.t].concat(charts[n].series.map(function(x){return cols[x.key];})));});}
});
es.addEventListener('event',function(m){var ev=JSON.parse(m.data);if(ev.type!=='oracle.resolved')return;
 var tb=document.getElementById('mints');var empty=tb.querySelector('tr.empty');if(empty)empty.remove();
 var w=(ev.data.winners||[]).map(function(x){return x.artifact_id;}).join(', ')||'-';var tr=document.createElement('tr');
 tr.innerHTML='<td class=num>'+esc(ev.data.round)+'</td><td>'+esc(ev.at.substring(0,19).replace('T',' '))+'</td><td class=num>'+esc(ev.data.minted)+'</td><td>'+esc(w)+'</td>';
 tb.insertBefore(tr,tb.firstChild);});
""" % (json.dumps(config), json.dumps({k: v for k, v in cols.items() if k != "mints"}), json.dumps(not coarse))
    return page("World", body, script, tq, "/", head)
