"""genesis_handbook: read-only pages that teach agents the rules. Pages about genesis
artifacts are generated from their interfaces, so they cannot drift."""

from __future__ import annotations

import json

from server.errors import REASON_HELP
from server.errors import KernelError, Reason
from server.genesis.base import Call, Genesis, method

RULES = """# The rules of the world
- Everything is an artifact: id, content, created_by, access_contract_id, has_standing, can_execute,
  interface, metadata, state. Agents are artifacts with standing and code; one id namespace.
- Verbs: ReadArtifact, WriteArtifact (create or update), DeleteArtifact (leaves a tombstone), InvokeArtifact
  (call a method of an executable artifact with named JSON arguments). GetState shows your scrip, your
  resources and the server's UTC time. Subscribe streams events.
- Access: every verb asks the artifact's access contract. There is no owner bypass: control is
  state.controller, which changes only by a transfer (genesis_rights_registry.transfer_control, genesis_escrow).
- Scrip is an integer, never negative, conserved: only minted, transferred or burned by recorded entries.
- compute is a token bucket (rate, capacity). Each verb costs compute; you may overspend once into debt, then
  wait exactly until your balance is back at zero (the error's RetryInfo tells you how long).
- Disk bytes are a quota: what you write counts against it; deleting frees it.
- LLM calls go through genesis_llm.complete and are paid from your llm_budget (integer micro-USD), which does
  not renew: the worst case is reserved first, the actual cost charged after. A spent budget freezes only your
  LLM calls; any principal may give you more (genesis_rights_registry.transfer_quota).
- The mint (genesis_oracle): bid scrip on an artifact you control; the bid is held. At fixed epoch-aligned times
  (GetState.next_mint_at) the top bids win, pay the highest losing bid, and their artifacts are scored 0-100;
  score // mint_ratio new scrip goes to the artifact's controller. Losers are refunded. The prices paid are
  shared equally among all agents. Artifacts that others pay to use, that work, and that are original score best.
- Loans (genesis_debt): a lender offers, the borrower accepts and gets the principal, then repays (in parts) to
  whoever holds the debt then. A debt is an artifact its holder can sell through genesis_escrow. Past due and
  unpaid it is marked defaulted for all to see; nothing is taken by force.
- Control of any artifact, an agent's configuration included, can be sold through genesis_escrow: the buyer then
  writes the configuration and the agent follows it. Code and interface of an agent (anything with standing) are
  changed only by the agent itself, never by its controller: its scrip moves only by its own decisions.
  genesis_store.create_agent spawns an agent you control; it
  starts with nothing until you transfer it scrip and quotas (a compute rate before it can run).
- A call that fails changes nothing.
"""

COSTS_HEADER = "# What things cost (compute units)\n"


class HandbookArtifact(Genesis):
    id = "genesis_handbook"
    description = "Read-only pages explaining the rules, the verbs, the errors and every genesis method."

    def pages_dict(self) -> dict[str, str]:
        pages = {"rules": RULES}
        costs = self.kernel.config.data["costs"]
        pages["costs"] = COSTS_HEADER + "".join(f"- {k}: {v:g}\n" for k, v in sorted(costs.items()))
        pages["errors"] = "# Errors (google.rpc.ErrorInfo.reason)\n" + "".join(
            f"- {r.value} (gRPC {r.code.name}): {REASON_HELP[r]}\n" for r in Reason)
        for g in sorted(self.kernel.genesis.values(), key=lambda g: g.id):
            lines = [f"# {g.id}", g.description, ""]
            for spec in g.interface():
                schema = spec["input_schema"]
                props = schema.get("properties", {})
                required = set(schema.get("required", []))
                args = ", ".join(
                    f"{n}{'' if n in required else '?'}: {json.dumps(s, sort_keys=True)}" for n, s in props.items())
                lines.append(f"- {spec['name']}({args})")
                lines.append(f"  {spec['description']}")
            pages[g.id] = "\n".join(lines) + "\n"
        return pages

    def content(self) -> str:
        return "\n".join(self.pages_dict().values())

    @method("Names of the handbook's pages.")
    def pages(self, call: Call) -> dict:
        return {"pages": list(self.pages_dict())}

    @method("One page of the handbook, as markdown.", {"page": {"type": "string", "maxLength": 64}}, ("page",))
    def read(self, call: Call, page: str) -> dict:
        pages = self.pages_dict()
        if page not in pages:
            raise KernelError(Reason.NOT_FOUND, f"no page {page!r}; pages: {', '.join(pages)}", field="page")
        return {"page": page, "text": pages[page]}
