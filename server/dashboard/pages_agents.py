"""The Agents table (`/agents`) and an agent's own page (`/agents/<id>`): its state, the
stop/start buttons, its decision timeline (Admin.ListDecisions), its artifacts
(Admin.ListArtifacts created_by), transfers (ledger.* events), loans (genesis_debt.list) and
trades (escrow.* events)."""

from __future__ import annotations

import asyncio
import json

from google.protobuf import json_format

from server.dashboard.render import (EVENT_HEADERS, JS_EVENT_ROW, e, event_row, fmt_value, page, short, table,
                                     when)

AGENT_HEADERS = ["Agent", "State", "Scrip", "Compute", "LLM budget left (µ$)", "LLM spent (µ$)", "Last action",
                 "Outcome"]


def agent_row(a: dict, last: dict, tq: str) -> str:
    def n(v):
        return "-" if v is None else e(v)

    aid = e(a["agent_id"])
    comp = "-" if a["compute"] is None else f"{a['compute']} / {a['compute_capacity']:g}"
    act = last.get(a["agent_id"], {})
    return (f'<tr data-agent="{aid}"><td><a href="/agents/{aid}{tq}">{aid}</a></td>'
            f'<td class="state-{e(a["state"])}">{e(a["state"])}</td><td class=num>{a["scrip"]}</td>'
            f'<td class=num>{e(comp)}</td><td class=num>{n(a["llm_budget"])}</td>'
            f'<td class=num>{n(a["llm_spent"])}</td><td>{e(act.get("type", "-"))}</td>'
            f'<td>{e(act.get("outcome", "-"))}</td></tr>')


JS_AGENT_ROWS = """
function agentRows(a,last,tq){return a.map(function(x){
  var n=function(v){return v==null?'-':esc(v);};var c=x.compute==null?'-':x.compute+' / '+x.compute_capacity;var l=last[x.agent_id]||{};
  return '<tr data-agent="'+esc(x.agent_id)+'"><td><a href="/agents/'+encodeURIComponent(x.agent_id)+tq+'">'+esc(x.agent_id)+'</a></td>'+
   '<td class="state-'+esc(x.state)+'">'+esc(x.state)+'</td><td class=num>'+x.scrip+'</td><td class=num>'+esc(c)+'</td><td class=num>'+n(x.llm_budget)+
   '</td><td class=num>'+n(x.llm_spent)+'</td><td>'+esc(l.type||'-')+'</td><td>'+esc(l.outcome||'-')+'</td></tr>';}).join('');}
"""


def agents(feed, tq: str):
    last = feed.last_actions()
    rows = [agent_row(a, last, tq) for a in feed.agents]
    body = ("<h1>Agents</h1><p class=muted>State as the server sees the agent's calls: acting (a call in the last "
            "2 s), sleeping (waiting), dead (deleted, or silent for 60 s), stopped (by the operator). Last action: "
            "its latest event.</p>" + table(AGENT_HEADERS, rows, "agents"))
    script = JS_AGENT_ROWS + """
var tq=%s;
es.addEventListener('agents',function(m){var d=JSON.parse(m.data);document.getElementById('agents').innerHTML=agentRows(d.agents,d.last,tq);});
""" % json.dumps(tq)
    return page("Agents", body, script, tq, "/agents")


def _decision_rows(decisions) -> list[str]:
    from server.dashboard.app import _ints

    rows = []
    for d in decisions:
        action, outcome = _ints(json_format.MessageToDict(d.action)), _ints(json_format.MessageToDict(d.outcome))
        llm = "".join(f"<div class=muted>{e(x.model)} ({e(x.request_id)})</div>"
                      f"<b>prompt</b><pre>{fmt_value(json_format.MessageToDict(x.prompt))}</pre>"
                      f"<b>answer</b><pre>{e(x.answer)}</pre>" for x in d.llm)
        if not llm and d.llm_request_ids:
            llm = "<span class=muted>no gateway record: " + e(", ".join(d.llm_request_ids)) + "</span>"
        rows.append(f'<tr class=decision><td class=num>{d.step}</td><td>{e(d.at.ToJsonString()[:19].replace("T", " "))}</td>'
                    f'<td><b>{e(short(action))}</b><pre>{fmt_value(action)}</pre></td>'
                    f'<td><b>{e(short(outcome))}</b><pre>{fmt_value(outcome)}</pre></td><td>{llm}</td></tr>')
    return rows


def _all_decisions(admin, aid: str, cap: int = 2000):
    """The newest `cap` decisions, oldest first (pages of 500)."""
    out, after = [], 0
    while True:
        r = admin.list_decisions(aid, after_seq=after, limit=500)
        out.extend(r.decisions)
        out = out[-cap:]
        if not r.next_after_seq:
            return out
        after = r.next_after_seq


async def agent(feed, admin, aid: str, tq: str, link):
    from agent_runtime.errors import EcologyError

    def load():
        decisions = _all_decisions(admin, aid)
        made = admin.list_artifacts(created_by=aid, page_size=200).artifacts
        loans = admin.query_genesis("genesis_debt", "list", principal_id=aid).get("debts", [])
        money = feed.recent_events(admin, types=["ledger.*"], principal_ids=[aid], limit=100)
        trades = feed.recent_events(admin, types=["escrow.*", "control.transferred"], principal_ids=[aid], limit=100)
        return decisions, made, loans, money, trades

    try:
        decisions, made, loans, money, trades = await asyncio.to_thread(load)
    except EcologyError as err:
        return page(aid, f"<h1>{e(aid)}</h1><p class=bad>{e(err.reason)}: {e(err.message or '')}</p>", "", tq,
                    "/agents")
    me = next((a for a in feed.agents if a["agent_id"] == aid), None)
    head = ""
    if me:
        head = (f'<p>state <b id="state" class="state-{e(me["state"])}">{e(me["state"])}</b> &middot; scrip '
                f'<b id="scrip">{me["scrip"]}</b> &middot; compute {e(me["compute"])} &middot; LLM budget left '
                f'{e(me["llm_budget"])} µ$</p>'
                '<div class=controls><button class=danger id="btn-stop" '
                f'onclick="control(\'/agents/{e(aid)}/stop\')">Stop agent</button>'
                f'<button id="btn-start" onclick="control(\'/agents/{e(aid)}/start\')">Start agent</button>'
                '<span class=muted>stop: its calls are refused (AGENT_STOPPED), `ecology run` ends its process and '
                'does not restart it; start: it is launched again</span></div>')
    art_rows = [f'<tr><td>{link(a.id)}</td><td>{e(a.kind)}</td><td class=num>{a.version}</td>'
                f'<td>{e(a.access_contract_id)}</td><td>{e(when(a.updated_at.seconds))}</td>'
                f'<td>{"deleted" if a.deleted else ""}</td></tr>' for a in made]
    loan_rows = [f'<tr><td>{link(d.get("debt_id"))}</td><td>{link(d.get("lender"))}</td><td>{link(d.get("borrower"))}</td>'
                 f'<td class=num>{e(d.get("principal"))}</td><td class=num>{e(d.get("repay_amount"))}</td>'
                 f'<td class=num>{e(d.get("repaid"))}</td><td>{e(d.get("status"))}</td><td>{e(when(d.get("due_at")))}</td></tr>'
                 for d in loans]
    body = (f"<h1>Agent {e(aid)}</h1>{head}"
            f"<h2>Decisions ({len(decisions)}, newest first)</h2>"
            + '<div class=scroll>' + table(["Step", "At", "Action", "Outcome", "LLM"],
                                           list(reversed(_decision_rows(decisions))), "decisions",
                                           "no decision recorded yet") + "</div>"
            + "<div class=two><div>"
            + f"<h2>Artifacts it created ({len(made)})</h2>"
            + table(["Artifact", "Kind", "Version", "Contract", "Updated", ""], art_rows)
            + "</div><div>" + f"<h2>Loans ({len(loans)})</h2>"
            + table(["Debt", "Lender", "Borrower", "Principal", "Repay", "Repaid", "Status", "Due"], loan_rows)
            + "</div></div>"
            + "<h2>Transfers and payments (recent)</h2>"
            + table(EVENT_HEADERS, [event_row(x, link) for x in reversed(money)], "transfers")
            + "<h2>Trades (escrow, recent)</h2>"
            + table(EVENT_HEADERS, [event_row(x, link) for x in reversed(trades)], "trades"))
    script = JS_EVENT_ROW + """
var me=%s,tq=%s;
es.addEventListener('agents',function(m){JSON.parse(m.data).agents.forEach(function(x){if(x.agent_id===me){setText('scrip',x.scrip);
 var s=document.getElementById('state');if(s){s.textContent=x.state;s.className='state-'+x.state;}}});});
es.addEventListener('event',function(m){var ev=JSON.parse(m.data);var mine=ev.principal_id===me||ev.related_ids.indexOf(me)>=0;if(!mine)return;
 if(ev.type.indexOf('ledger.')===0)prependEvent('transfers',ev,tq,200);
 else if(ev.type.indexOf('escrow.')===0||ev.type==='control.transferred')prependEvent('trades',ev,tq,200);});
""" % (json.dumps(aid), json.dumps(tq))
    return page(aid, body, script, tq, "/agents")
