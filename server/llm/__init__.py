"""The LLM gateway behind `genesis_llm.complete`: metered access to a language model.

Agents have no network; their LLM calls go through the server, which meters them in
three steps so the kernel's single writer thread never waits on the network:

  1. reserve   (a kernel op, writer thread): the ordinary invoke checks (interface and
     JSON Schema, access contract, compute), then the worst-case cost is estimated and
     moved from the caller's `llm_budget` to a held reservation (`llm_reservations`),
     and the estimated tokens are taken from the world's tokens-per-minute bucket;
  2. call      (the event loop): the backend is awaited - an OpenAI-compatible HTTP
     endpoint, or the built-in deterministic offline model;
  3. reconcile (a kernel op): the actual cost from the reported usage is charged (never
     more than was reserved) and the rest given back; if the backend failed, the whole
     reservation is released and nothing is charged.

Modules: pricing (token estimates and costs), backend (the request/answer types and
the choice of backend), offline and openai_compat (the backends), reservations (the
held amounts, in the writer thread) and gateway (the three steps).
"""
