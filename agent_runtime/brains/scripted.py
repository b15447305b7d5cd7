"""The scripted brain: a sensible strategy per personality, with no LLM at all, so a world
runs (and its economy moves) offline.

* builder     - writes small useful tools (valid Python, an interface with JSON-Schema
                inputs, metadata.price), tests each one by invoking it, lists some in
                escrow, and waits for sales when enough are unsold. After its catalogue it
                keeps inventing parametrised variants.
* trader      - buys the cheapest affordable listing and relists it higher; when nothing
                is for sale it pays partners (trade credit), publishes a market report and
                sleeps until the next listing.
* tester      - finds other agents' tools, invokes them with arguments built from their
                input schemas (paying their price), writes a review artifact per tool, tips
                the makers of good tools.
* coordinator - reads the handbook, surveys agents and tools, pays for services (invokes
                priced tools), keeps a bounty board, rewards the makers of tools, reads
                reviews and notes what it learned.

Every strategy is a generator: it yields an action and receives that action's result
({"ok": True, "value": ...} or {"ok": False, "reason": ..., "message": ...}). Its first
action after a (re)configuration is a memory note saying who it now is. Randomness is
seeded from the agent's id, so a run is varied across agents but reproducible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator

from agent_runtime.config import PERSONALITIES, default_personality

Strategy = Generator[dict, dict, None]

S = {"type": "string"}
N = {"type": "number"}
I = {"type": "integer"}
NUMS = {"type": "array", "items": {"type": "number"}}


def _schema(**props) -> dict:
    return {"type": "object", "properties": props, "required": list(props)}


# name, description, input properties, source, price
CATALOGUE = [
    ("word_count", "Count the words, characters and lines of a text.", {"text": S},
     "def word_count(text):\n"
     "    return {'words': len(text.split()), 'chars': len(text), 'lines': len(text.splitlines())}\n", 1),
    ("reverse_text", "Reverse a text.", {"text": S},
     "def reverse_text(text):\n    return text[::-1]\n", 1),
    ("sort_numbers", "Sort a list of numbers ascending.", {"numbers": NUMS},
     "def sort_numbers(numbers):\n    return sorted(numbers)\n", 1),
    ("stats", "Mean, median, minimum and maximum of a list of numbers.", {"numbers": NUMS},
     "def stats(numbers):\n"
     "    if not numbers:\n        return {'count': 0}\n"
     "    s = sorted(numbers)\n    n = len(s)\n"
     "    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2\n"
     "    return {'count': n, 'mean': sum(s) / n, 'median': median, 'min': s[0], 'max': s[-1]}\n", 2),
    ("is_prime", "Whether an integer is prime.", {"n": I},
     "def is_prime(n):\n"
     "    if n < 2:\n        return False\n"
     "    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n"
     "    return True\n", 1),
    ("fibonacci", "The first n Fibonacci numbers (n at most 90).", {"n": I},
     "def fibonacci(n):\n"
     "    n = max(0, min(int(n), 90))\n    out, a, b = [], 0, 1\n"
     "    for _ in range(n):\n        out.append(a)\n        a, b = b, a + b\n    return out\n", 2),
    ("slugify", "Turn a title into a URL slug.", {"text": S},
     "def slugify(text):\n"
     "    out, dash = [], False\n"
     "    for ch in text.lower():\n"
     "        if ch.isalnum():\n            out.append(ch)\n            dash = False\n"
     "        elif not dash and out:\n            out.append('-')\n            dash = True\n"
     "    return ''.join(out).strip('-')\n", 1),
    ("caesar", "Caesar-shift the letters of a text by `shift`.", {"text": S, "shift": I},
     "def caesar(text, shift):\n"
     "    out = []\n"
     "    for ch in text:\n"
     "        if ch.isalpha():\n"
     "            base = ord('a') if ch.islower() else ord('A')\n"
     "            out.append(chr((ord(ch) - base + shift) % 26 + base))\n"
     "        else:\n            out.append(ch)\n"
     "    return ''.join(out)\n", 1),
    ("celsius_to_fahrenheit", "Convert a temperature from Celsius to Fahrenheit.", {"celsius": N},
     "def celsius_to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32\n", 1),
    ("palindrome", "Whether a text reads the same backwards (letters and digits only).", {"text": S},
     "def palindrome(text):\n"
     "    s = [c.lower() for c in text if c.isalnum()]\n    return s == s[::-1]\n", 1),
    ("gcd", "Greatest common divisor of two integers.", {"a": I, "b": I},
     "def gcd(a, b):\n    a, b = abs(a), abs(b)\n    while b:\n        a, b = b, a % b\n    return a\n", 1),
    ("top_words", "The most frequent words of a text with their counts.", {"text": S, "k": I},
     "def top_words(text, k):\n"
     "    counts = {}\n"
     "    for w in text.lower().split():\n        w = w.strip('.,;:!?\"()')\n"
     "        if w:\n            counts[w] = counts.get(w, 0) + 1\n"
     "    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))\n"
     "    return [[w, c] for w, c in ranked[:max(1, k)]]\n", 2),
]

# Families of parametrised tools for when the catalogue is done: (name, description, props, source).
FAMILIES = [
    ("scale_by_{k}", "Multiply every number of a list by {k}.", {"numbers": NUMS},
     "def scale_by_{k}(numbers):\n    return [x * {k} for x in numbers]\n"),
    ("repeat_{k}", "Repeat a text {k} times, separated by spaces.", {"text": S},
     "def repeat_{k}(text):\n    return ' '.join([text] * {k})\n"),
    ("chunk_{k}", "Split a list of numbers into chunks of {k}.", {"numbers": NUMS},
     "def chunk_{k}(numbers):\n    return [numbers[i:i + {k}] for i in range(0, len(numbers), {k})]\n"),
    ("power_{k}", "Raise every number of a list to the power {k}.", {"numbers": NUMS},
     "def power_{k}(numbers):\n    return [x ** {k} for x in numbers]\n"),
]

WORDS = ["the quick brown fox jumps over the lazy dog", "Agent Ecology builds markets", "level",
         "A man, a plan, a canal: Panama", "hello world hello agents"]
WANTED = ["a tool that summarises a list of numbers", "a JSON validator", "a unit converter",
          "a text tokenizer", "a price history tracker", "a tool that ranks listings by value",
          "a markdown table formatter", "a date difference calculator"]


def sample_args(schema: dict, rng: random.Random) -> dict:
    """Plausible arguments for a JSON Schema of named arguments."""
    props = (schema or {}).get("properties") or {}
    args = {}
    for name, spec in props.items():
        t = (spec or {}).get("type")
        if t == "string":
            args[name] = rng.choice(WORDS)
        elif t == "integer":
            args[name] = rng.randint(2, 30)
        elif t == "number":
            args[name] = round(rng.uniform(-10, 40), 1)
        elif t == "boolean":
            args[name] = rng.random() < 0.5
        elif t == "array":
            item = ((spec or {}).get("items") or {}).get("type")
            if item == "string":
                args[name] = rng.sample(["b", "a", "d", "c"], 3)
            else:
                args[name] = [rng.randint(-5, 50) for _ in range(rng.randint(3, 7))]
        elif t == "object":
            args[name] = {}
        else:
            args[name] = rng.choice(WORDS)
    return args


def personality_kind(personality: str, agent_id: str) -> str:
    p = personality.lower()
    if p in PERSONALITIES:
        return p
    for key, kind in (("build", "builder"), ("mak", "builder"), ("trad", "trader"), ("sell", "trader"),
                      ("buy", "trader"), ("test", "tester"), ("review", "tester"), ("coord", "coordinator"),
                      ("organ", "coordinator"), ("manag", "coordinator")):
        if key in p:
            return kind
    return default_personality(agent_id)


def ok(r: dict) -> bool:
    return bool(r and r.get("ok"))


def val(r: dict, default=None):
    return r.get("value", default) if ok(r) else default


class ScriptedBrain:
    def __init__(self, config, agent_id: str) -> None:
        self.me = agent_id
        self.rng = random.Random(f"scripted:{agent_id}")
        self.obs = None
        self._gen: Strategy | None = None
        self._pending = False
        self._result: dict | None = None
        self.configure(config)

    def configure(self, config) -> None:
        self.config = config
        self.kind = personality_kind(config.personality, self.me)
        if self._gen is not None:
            self._gen.close()
        self._gen = None

    def feedback(self, action: dict, result: dict) -> None:
        self._result = result
        self._pending = False

    def decide(self, obs) -> dict:
        self.obs = obs
        for _ in range(3):
            try:
                if self._gen is None:
                    self._gen = STRATEGIES[self.kind](self)
                    action = next(self._gen)
                else:
                    sent = self._result if not self._pending else {"ok": False, "reason": "NOT_EXECUTED",
                                                                   "message": "the action was not carried out"}
                    action = self._gen.send(sent)
            except StopIteration:
                self._gen = None
                continue
            self._pending = True
            self._result = None
            return action
        return {"action": "sleep", "seconds": 5, "reason": "strategy finished"}

    # -- helpers for strategies ---------------------------------------------------------

    def pause(self, lo: float, hi: float) -> float:
        return round(self.rng.uniform(lo, hi), 2)

    def others(self, artifacts: list[dict]) -> list[dict]:
        """Artifacts not made or controlled by this agent, genesis excluded."""
        return [a for a in artifacts if a.get("id") and not a["id"].startswith("genesis_")
                and a.get("created_by") != self.me and (a.get("controller") or (a.get("state") or {}).get("controller"))
                != self.me]


def _controller(a: dict):
    return a.get("controller") or (a.get("state") or {}).get("controller")


def _price(a: dict) -> int:
    p = (a.get("metadata") or {}).get("price", 0)
    return p if isinstance(p, int) else 0


def _methods(a: dict) -> list[dict]:
    return a.get("methods") or a.get("interface") or []


def _agents(b: ScriptedBrain, r: dict) -> list[str]:
    """Other agents from a genesis_store.list result (genesis accounts excluded)."""
    return [a["id"] for a in (val(r, {}) or {}).get("artifacts", [])
            if a.get("id") and a["id"] != b.me and not a["id"].startswith("genesis_")]


def _tool_specs(b: ScriptedBrain):
    """The catalogue in a per-agent order, then endless parametrised variants."""
    order = list(CATALOGUE)
    b.rng.shuffle(order)
    for name, desc, props, src, price in order:
        yield name, desc, props, src, price
    k = 2
    while True:
        for name, desc, props, src in FAMILIES:
            yield name.format(k=k), desc.format(k=k), props, src.format(k=k), 1 + k % 3
        k += 1


def builder(b: ScriptedBrain) -> Strategy:
    yield {"action": "note", "text": "I am a builder: I write small useful tools, price them per call, "
                                     "test them, sell some of them in escrow, and bid on the mint "
                                     "for the others."}
    made: list[str] = []
    listed = 0
    for name, desc, props, src, price in _tool_specs(b):
        aid = f"{b.me}.{name}"[:128]
        r = yield {"action": "write", "artifact_id": aid, "content": src, "executable": True,
                   "interface": [{"name": name, "description": desc, "input_schema": _schema(**props)}],
                   "metadata": {"kind": "tool", "price": price, "description": desc, "author": b.me,
                                "tags": ["tool", "utility"]},
                   "reason": f"build a {name} tool"}
        if not ok(r):
            if r.get("reason") == "QUOTA_EXCEEDED":
                yield {"action": "note", "text": "My disk quota is full; I stop building new tools for a while."}
                yield {"action": "sleep_until_event", "types": ["escrow.purchased"], "principal_ids": ["me"],
                       "timeout": 60}
            continue
        made.append(aid)
        yield {"action": "invoke", "artifact_id": aid, "method": name, "args": sample_args(_schema(**props), b.rng),
               "reason": "test my new tool"}
        if len(made) == 2 or b.rng.random() < 0.5:
            r = yield {"action": "escrow_list", "artifact_id": aid, "price": b.rng.randint(10, 40),
                       "reason": "sell control of a tool"}
            listed += 1 if ok(r) else 0
        else:
            # Still in control of it: bid for the mint's attention, which mints scrip for
            # tools other agents use and pay for.
            yield {"action": "invoke", "artifact_id": "genesis_oracle", "method": "bid",
                   "args": {"artifact_id": aid, "amount": b.rng.randint(2, 6)},
                   "reason": "bid for the mint's attention on a tool I control"}
        if len(made) % 4 == 0:
            yield {"action": "note", "text": f"Built {len(made)} tools so far (latest {aid}); {listed} listed in escrow."}
        if len(made) % 3 == 0:
            r = yield {"action": "listings"}
            mine = [x for x in val(r, []) if x.get("seller") == b.me]
            if len(mine) >= 3:
                yield {"action": "sleep_until_event", "types": ["escrow.purchased"], "principal_ids": ["me"],
                       "timeout": b.pause(3, 8), "reason": "enough unsold listings; wait for a sale"}


def trader(b: ScriptedBrain) -> Strategy:
    yield {"action": "note", "text": "I am a trader: I buy cheap listings, relist them higher, and pay partners."}
    bought: set[str] = set()
    partners = list(b.config.partners)
    while True:
        seen = b.obs.last_event_seq if b.obs else 0   # listings after this one wake the sleep below
        r = yield {"action": "listings"}
        listings = val(r, []) or []
        budget = b.obs.scrip // 3 if b.obs else 0
        cands = [x for x in listings if x.get("seller") != b.me and x.get("artifact_id") not in bought
                 and isinstance(x.get("price"), int) and x["price"] <= budget]
        if cands:
            pick = min(cands, key=lambda x: (x["price"], x["artifact_id"]))
            r = yield {"action": "escrow_purchase", "artifact_id": pick["artifact_id"],
                       "reason": f"cheapest listing at {pick['price']}"}
            bought.add(pick["artifact_id"])
            if ok(r):
                price = max(pick["price"] + 2, pick["price"] * 3 // 2)
                yield {"action": "escrow_list", "artifact_id": pick["artifact_id"], "price": price,
                       "reason": f"relist bought at {pick['price']} for {price}"}
            continue
        if not partners:
            r = yield {"action": "invoke", "artifact_id": "genesis_store", "method": "list",
                       "args": {"kind": "agent", "limit": 50}, "reason": "find partners"}
            partners = _agents(b, r)
        if partners and b.obs and b.obs.scrip > 100 and b.rng.random() < 0.6:
            to = b.rng.choice(partners)
            yield {"action": "transfer", "to": to, "amount": b.rng.randint(3, 12),
                   "memo": "trade credit from a trader", "reason": "keep partners liquid"}
        if b.rng.random() < 0.35:
            prices = [x["price"] for x in listings if isinstance(x.get("price"), int)]
            report = {"listings": len(listings), "min_price": min(prices, default=None),
                      "max_price": max(prices, default=None), "at": b.obs.now_iso if b.obs else ""}
            yield {"action": "write", "artifact_id": f"{b.me}.market"[:128], "content": json.dumps(report),
                   "metadata": {"kind": "report", "topic": "escrow market"}, "reason": "publish a market report"}
        yield {"action": "sleep_until_event", "types": ["escrow.listed"], "timeout": b.pause(2, 6),
               "after_seq": seen, "reason": "nothing affordable for sale; wait for a listing"}


def tester(b: ScriptedBrain) -> Strategy:
    yield {"action": "note", "text": "I am a tester: I try other agents' tools and publish reviews."}
    tested: dict[str, int] = {}
    cursor = ""
    while True:
        args = {"kind": "tool", "limit": 100}
        if cursor:
            args["cursor"] = cursor
        r = yield {"action": "invoke", "artifact_id": "genesis_store", "method": "list", "args": args,
                   "reason": "find tools to test"}
        page = val(r, {}) or {}
        cursor = page.get("next_cursor") or ""
        budget = max(1, (b.obs.scrip if b.obs else 0) // 10)
        cands = [t for t in b.others(page.get("artifacts", [])) if t["id"] not in tested
                 and _methods(t) and _price(t) <= budget]
        if not cands:
            if not cursor:
                yield {"action": "sleep_until_event", "types": ["artifact.written"], "timeout": b.pause(2, 5),
                       "reason": "no untested tools; wait for new ones"}
            continue
        for tool in b.rng.sample(cands, min(3, len(cands))):
            m = _methods(tool)[0]
            call_args = sample_args(m.get("input_schema") or {}, b.rng)
            r = yield {"action": "invoke", "artifact_id": tool["id"], "method": m["name"], "args": call_args,
                       "reason": f"test {tool['id']}"}
            good = ok(r)
            value = val(r)
            stars = (5 if value not in (None, "", [], {}) else 3) if good else 1
            review = {"tool": tool["id"], "method": m["name"], "args": call_args, "ok": good,
                      "result": value if good else None, "error": None if good else r.get("reason"),
                      "stars": stars, "price": _price(tool), "reviewer": b.me,
                      "verdict": "works" if good else f"failed: {(r or {}).get('message', '')[:120]}"}
            tested[tool["id"]] = stars
            yield {"action": "write", "artifact_id": f"{b.me}.review.{tool['id']}"[:128],
                   "content": json.dumps(review, default=str),
                   "metadata": {"kind": "review", "tool": tool["id"], "stars": stars},
                   "reason": f"review {tool['id']}"}
            maker = _controller(tool) or tool.get("created_by")
            if stars == 5 and maker and maker != b.me and b.rng.random() < 0.3 and b.obs and b.obs.scrip > 50:
                yield {"action": "transfer", "to": maker, "amount": 2, "memo": f"tip for {tool['id']}",
                       "reason": "reward a good tool"}
        if len(tested) % 3 == 0:
            avg = sum(tested.values()) / len(tested)
            yield {"action": "note", "text": f"Reviewed {len(tested)} tools; average {avg:.1f} stars."}


def coordinator(b: ScriptedBrain) -> Strategy:
    r = yield {"action": "invoke", "artifact_id": "genesis_handbook", "method": "read", "args": {"page": "rules"},
               "reason": "learn the rules"}
    first = ((val(r, {}) or {}).get("text") or "").strip().splitlines()
    yield {"action": "note", "text": "I am a coordinator: I read the handbook ("
                                     + (first[0][:80] if first else "unavailable")
                                     + "), post bounties, pay for services and reward builders."}
    rewarded: set[str] = set()
    round_ = 0
    while True:
        round_ += 1
        r = yield {"action": "invoke", "artifact_id": "genesis_store", "method": "list",
                   "args": {"kind": "agent", "limit": 50}, "reason": "survey the agents"}
        agents = _agents(b, r)
        r = yield {"action": "search", "query": "tool", "limit": 50, "reason": "survey the services"}
        tools = [t for t in b.others(val(r, []) or []) if t.get("kind") == "tool" and _methods(t)]
        if tools:
            affordable = [t for t in tools if _price(t) <= max(1, (b.obs.scrip if b.obs else 0) // 20)]
            if affordable:
                t = b.rng.choice(affordable)
                m = _methods(t)[0]
                yield {"action": "invoke", "artifact_id": t["id"], "method": m["name"],
                       "args": sample_args(m.get("input_schema") or {}, b.rng),
                       "reason": f"pay for the service of {t['id']}"}
        wanted = b.rng.sample(WANTED, 3)
        reward = b.rng.randint(5, 20)
        board = {"coordinator": b.me, "wanted": wanted, "reward_per_tool": reward, "round": round_,
                 "updated": b.obs.now_iso if b.obs else "", "agents_known": len(agents)}
        yield {"action": "write", "artifact_id": f"{b.me}.board"[:128], "content": json.dumps(board),
               "metadata": {"kind": "bounty_board", "reward": reward, "description": "; ".join(wanted)},
               "reason": "update the bounty board"}
        makers = [t.get("created_by") for t in tools if t.get("created_by") and t["id"] not in rewarded]
        if makers and b.obs and b.obs.scrip > 100:
            t = next(t for t in tools if t.get("created_by") in makers and t["id"] not in rewarded)
            rewarded.add(t["id"])
            yield {"action": "transfer", "to": t["created_by"], "amount": reward, "memo": f"bounty: thanks for {t['id']}",
                   "reason": "reward a builder"}
        elif agents and b.obs and b.obs.scrip > 100 and b.rng.random() < 0.5:
            yield {"action": "transfer", "to": b.rng.choice(agents), "amount": 5, "memo": "coordination grant",
                   "reason": "seed another agent"}
        r = yield {"action": "search", "query": "review", "limit": 20, "reason": "what do testers say"}
        reviews = [x for x in (val(r, []) or []) if (x.get("metadata") or {}).get("kind") == "review"]
        if reviews:
            rv = b.rng.choice(reviews)
            meta = rv.get("metadata") or {}
            yield {"action": "note", "text": f"Review {rv['id']}: {meta.get('tool')} got {meta.get('stars')} stars."}
        yield {"action": "sleep_until_event", "types": ["artifact.written", "escrow.*"], "timeout": b.pause(2, 6),
               "reason": "wait for something to coordinate"}


STRATEGIES = {"builder": builder, "trader": trader, "tester": tester, "coordinator": coordinator}
