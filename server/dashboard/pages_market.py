"""The Market page (`/market`): escrow listings (genesis_escrow.listings) and sales
(escrow.purchased events), loans and defaults (the debt artifacts genesis_debt creates, from
Admin.ListArtifacts, and debt.* events), oracle bids and results (genesis_oracle.status and
oracle.* events). Read-only genesis methods are called through Admin.QueryGenesis. New
market events are prepended live."""

from __future__ import annotations

import asyncio
import json

from google.protobuf import json_format

from server.dashboard.render import EVENT_HEADERS, JS_EVENT_ROW, e, event_row, page, table, when

MARKET_TYPES = ["escrow.*", "debt.*", "oracle.*", "control.transferred"]


def _load(feed, admin):
    from server.dashboard.app import _ints

    listings = admin.query_genesis("genesis_escrow", "listings").get("listings", [])
    oracle = admin.query_genesis("genesis_oracle", "status")
    debts = []
    cursor = ""
    for _ in range(20):
        r = admin.list_artifacts(created_by="genesis_debt", page_size=200, cursor=cursor)
        debts += [{"id": a.id, **_ints(json_format.MessageToDict(a.state))} for a in r.artifacts]
        cursor = r.next_cursor
        if not cursor:
            break
    sales = feed.recent_events(admin, types=["escrow.purchased"], limit=100)
    bids = feed.recent_events(admin, types=["oracle.bid", "oracle.bid_cancelled"], limit=100)
    market = feed.recent_events(admin, types=MARKET_TYPES, limit=200)
    return listings, oracle, debts, sales, bids, market


async def market(feed, admin, tq: str, link):
    from agent_runtime.errors import EcologyError

    try:
        listings, oracle, debts, sales, bids, market_evs = await asyncio.to_thread(_load, feed, admin)
    except EcologyError as err:
        return page("Market", f"<h1>Market</h1><p class=bad>{e(err.reason)}: {e(err.message)}</p>", "", tq, "/market")
    listing_rows = [f'<tr><td>{link(x["artifact_id"], "/artifacts/")}</td><td>{link(x["seller"])}</td>'
                    f'<td class=num>{e(x["price"])}</td><td>{e(when(x["listed_at"]))}</td></tr>' for x in listings]
    sale_rows = [f'<tr><td class=num>{x["seq"]}</td><td>{e(x["at"][:19].replace("T", " "))}</td>'
                 f'<td>{link(x["artifact_id"], "/artifacts/")}</td><td>{link(x["data"].get("seller"))}</td>'
                 f'<td>{link(x["data"].get("buyer"))}</td><td class=num>{e(x["data"].get("price"))}</td></tr>'
                 for x in reversed(sales)]
    by_status: dict[str, int] = {}
    for d in debts:
        by_status[d.get("status", "?")] = by_status.get(d.get("status", "?"), 0) + 1
    debt_rows = [f'<tr class="debt-{e(d.get("status"))}"><td>{link(d["id"], "/artifacts/")}</td><td>{link(d.get("lender"))}</td>'
                 f'<td>{link(d.get("borrower"))}</td><td>{link(d.get("controller"))}</td>'
                 f'<td class=num>{e(d.get("principal"))}</td><td class=num>{e(d.get("repay_amount"))}</td>'
                 f'<td class=num>{e(d.get("repaid"))}</td><td class="{"bad" if d.get("status") == "defaulted" else ""}">'
                 f'{e(d.get("status"))}</td><td>{e(when(d.get("due_at")))}</td></tr>' for d in reversed(debts[-200:])]
    bid_rows = [f'<tr><td class=num>{x["seq"]}</td><td>{e(x["at"][:19].replace("T", " "))}</td><td>{e(x["type"])}</td>'
                f'<td>{link(x["artifact_id"], "/artifacts/")}</td><td>{link(x["principal_id"])}</td>'
                f'<td class=num>{e(x["data"].get("amount", x["data"].get("refunded", "")))}</td></tr>'
                for x in reversed(bids)]
    last = oracle.get("last") or {}
    result_rows = [f'<tr><td>{link(w.get("artifact_id"), "/artifacts/")}</td><td>{link(w.get("bidder"))}</td>'
                   f'<td class=num>{e(w.get("paid"))}</td><td class=num>{e(w.get("score"))}</td>'
                   f'<td class=num>{e(w.get("minted"))}</td><td>{link(w.get("minted_to"))}</td>'
                   f'<td>{e((w.get("reason") or "")[:120])}</td></tr>' for w in last.get("winners", [])]
    cards = [("Open listings", "n-listings", len(listings)), ("Sales (recent)", "n-sales", len(sales)),
             ("Loans", "n-loans", len(debts)), ("Defaults", "n-defaults", by_status.get("defaulted", 0)),
             ("Active loans", "n-active", by_status.get("active", 0)),
             ("Open oracle bids", "n-bids", oracle.get("open_bids", 0)), ("Held in bids", "held", oracle.get("held", 0)),
             ("Last round", "round", oracle.get("round", 0)),
             ("Next round", "next", when(oracle.get("next_resolution_at")) if oracle.get("enabled") else "mint disabled")]
    body = ("<h1>Market</h1><div class=cards>" + "".join(
        f'<div class=card><div class=k>{k}</div><div class=v id="{i}">{e(v)}</div></div>' for k, i, v in cards)
        + "</div><div class=two><div><h2>Escrow listings</h2>"
        + table(["Artifact", "Seller", "Price", "Listed"], listing_rows, "listings", "nothing is listed")
        + "</div><div><h2>Sales</h2>"
        + table(["Seq", "At", "Artifact", "Seller", "Buyer", "Price"], sale_rows, "sales", "no sale yet")
        + "</div></div><h2>Loans and defaults</h2>"
        + table(["Debt", "Lender", "Borrower", "Holder", "Principal", "Repay", "Repaid", "Status", "Due"], debt_rows,
                "loans", "no loan yet")
        + "<div class=two><div><h2>Oracle bids</h2>"
        + table(["Seq", "At", "Type", "Artifact", "Bidder", "Amount"], bid_rows, "bids", "no bid yet")
        + f"</div><div><h2>Last oracle round ({e(last.get('round', '-'))}: minted {e(last.get('minted', 0))}, "
          f"clearing price {e(last.get('clearing_price') if last.get('clearing_price') is not None else '-')})</h2>"
        + table(["Artifact", "Bidder", "Paid", "Score", "Minted", "To", "Why"], result_rows, "results",
                "no winner in that round (no bid)" if last else "no round resolved yet")
        + "</div></div><h2>Market events (live)</h2>"
        + table(EVENT_HEADERS, [event_row(x, link) for x in reversed(market_evs)], "market-events"))
    script = JS_EVENT_ROW + """
var tq=%s,types=%s;
es.addEventListener('event',function(m){var ev=JSON.parse(m.data);
 if(!types.some(function(t){return t.slice(-2)==='.*'?ev.type.indexOf(t.slice(0,-1))===0:ev.type===t;}))return;
 prependEvent('market-events',ev,tq,300);});
""" % (json.dumps(tq), json.dumps(MARKET_TYPES))
    return page("Market", body, script, tq, "/market")
