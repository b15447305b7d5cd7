"""Server configuration: documented defaults for everything, loaded from an optional TOML
file. Unknown keys and wrong types are errors that name the key (ConfigError).

Every key and its default is listed in DEFAULTS below; the README reproduces it.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


# section -> key -> default. The type of the default is the type the key must have
# (ints are accepted where floats are expected).
DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        # Where to listen when --listen is not given: "host:port" or "unix:PATH".
        "listen": ["127.0.0.1:50051"],
        # Environment variable holding the admin token (checked first).
        "admin_token_env": "ECOLOGY_ADMIN_TOKEN",
        # File holding the admin token; "" means <data-dir>/admin.token, created on
        # first start (mode 0600) when neither the variable nor the file gives one.
        "admin_token_file": "",
        # Largest request or response message accepted, bytes.
        "max_message_bytes": 4 * 1024 * 1024,
        # How long idempotency records (client request ids) are remembered, seconds.
        "idempotency_window_seconds": 86400.0,
        # Largest number of operations committed together in one transaction.
        "max_batch": 512,
        # Seconds to drain in-flight calls on SIGTERM.
        "shutdown_grace_seconds": 5.0,
        # TLS on every TCP listener (unix sockets stay plaintext): PEM certificate and
        # key files ("" = no TLS). `ecology tls init` makes them (server/tls.py).
        "tls_cert": "",
        "tls_key": "",
        # With a client CA, every TCP client must present a certificate from it, naming
        # its principal (URI SAN spiffe://ecology/agent/<id>); see server/tls.py.
        "tls_client_ca": "",
        # Allow plaintext TCP listeners on non-loopback addresses (tokens then cross the
        # network in clear; the server warns at every start).
        "insecure": False,
        # Serve Prometheus metrics at http://HOST:PORT/metrics ("" = off); see server/metrics.py.
        "metrics_listen": "",
        # With several servers on one PostgreSQL database (server/standby.py): the address
        # the active server tells clients and standbys ("" = its first listen address).
        "advertise": "",
    },
    "limits": {
        "max_content_bytes": 1024 * 1024,
        "max_metadata_bytes": 16 * 1024,
        "max_state_bytes": 64 * 1024,
        "max_interface_methods": 64,
        "max_schema_bytes": 16 * 1024,
        # Invocation arguments: nesting depth, and number of values in total.
        "max_args_depth": 16,
        "max_args_items": 1024,
        "max_args_bytes": 256 * 1024,
        "max_page_size": 500,
        "max_subscribe_filters": 64,
    },
    "agents": {
        # Scrip minted to each new agent (recorded as a mint).
        "endowment": 1000,
        "disk_quota_bytes": 10 * 1024 * 1024,
        "llm_budget_micro_usd": 1_000_000,
        # Flow resource `compute`: units per second and bucket capacity.
        "compute_rate": 10.0,
        "compute_capacity": 100.0,
    },
    "rate_limits": {
        # Per principal (survives reconnects) and per connection, calls per second.
        # An LLM-driven agent needs a few calls per second; 50/s leaves room for scripts.
        "principal_rate": 50.0,
        "principal_burst": 100.0,
        "connection_rate": 1000.0,
        "connection_burst": 2000.0,
        "max_in_flight_per_principal": 64,
        "max_streams_per_principal": 8,
    },
    "sandbox": {
        # auto: bubblewrap where it works, else "none" (user code and user contracts are
        # refused with SANDBOX_UNAVAILABLE). bwrap: bubblewrap or no start. process: plain
        # subprocesses, NOT isolated (development only; warned at every start).
        "isolation": "auto",
        # Wall clock for a whole invocation, nested calls included; contracts get less.
        "timeout_seconds": 2.0,
        "contract_timeout_seconds": 0.5,
        "memory_bytes": 256 * 1024 * 1024,
        "file_bytes": 1024 * 1024,
        "tmpfs_bytes": 8 * 1024 * 1024,
        "open_files": 32,
        # A worker is replaced after this many calls.
        "max_uses": 200,
        "spare_workers": 4,
        "max_idle_workers": 64,
        # Nesting depth of invoke() from artifact code.
        "max_depth": 5,
        # Scrip one InvokeArtifact may take from its caller (prices + pay()) unless the
        # request sets max_spend.
        "default_max_spend": 100,
        # Sandbox work (a call's user code with its nested calls, a batch of contract
        # checks, a code check) one principal may have running at once; over it a call
        # fails RATE_LIMITED with a RetryInfo (server/rpc/outside.py).
        "max_in_flight_per_principal": 2,
        # Nested invoke()/pay() requests one call's code (all levels together) may make;
        # over it the call fails INVALID_ARGS (server/kernel/invocation.py).
        "max_effects": 256,
    },
    # Compute charged per verb, and per genesis method ("artifact.method"), in units of
    # the `compute` flow resource. A genesis call pays `invoke` plus its own entry.
    "costs": {
        "read": 1.0,
        "write": 2.0,
        "delete": 1.0,
        "invoke": 1.0,
        "genesis_ledger.transfer": 1.0,
        "genesis_escrow.list": 1.0,
        "genesis_escrow.purchase": 1.0,
        "genesis_store.search": 2.0,
        "genesis_oracle.bid": 1.0,
        # Per CPU second that artifact code actually used (measured by the sandbox).
        "cpu_second": 100.0,
    },
    # The LLM gateway, genesis_llm (server/llm/). Prices are integer micro-USD per 1000
    # tokens; a call reserves its worst-case cost from the caller's llm_budget and is
    # charged the actual cost from the usage the backend reports.
    "llm": {
        # "offline": a built-in deterministic model (no network, no key);
        # "openai": any OpenAI-compatible endpoint (POST {base_url}/chat/completions).
        "backend": "offline",
        "base_url": "https://api.openai.com/v1",
        # Environment variable holding the API key ("" for an endpoint without keys).
        "api_key_env": "OPENAI_API_KEY",
        # Model used when a call names none; must be one of `models`.
        "default_model": "offline-small",
        # name -> prices. Setting this table replaces the default one.
        "models": {
            "offline-small": {"prompt_micro_usd_per_1k": 150, "completion_micro_usd_per_1k": 600},
        },
        # max_tokens when a call gives none, and the largest a call may ask for.
        "default_max_tokens": 512,
        "max_tokens_cap": 4096,
        # System-wide token bucket shared by all agents (capacity; refills per minute).
        "tokens_per_minute": 200_000,
        # Wall clock for one backend request.
        "timeout_seconds": 60.0,
    },
    # The mint, genesis_oracle (server/genesis/oracle.py, server/oracle/). Rounds resolve
    # at epoch-aligned times: floor(now / interval_seconds) * interval_seconds + interval_seconds.
    "storage": {
        # Where the world's state lives: "" = SQLite in <data-dir>/world.sqlite3; or a
        # PostgreSQL URL, postgresql://USER@HOST:PORT/DB (`--database`; server/storage/postgres.py).
        "url": "",
    },
    "traces": {
        # Largest stored size of one field of a decision trace or LLM exchange, bytes of
        # JSON; larger ones are truncated and marked (server/kernel/traces.py).
        "max_field_bytes": 16 * 1024,
    },
    "oracle": {
        # false: no rounds are resolved and new bids are refused (held bids can be cancelled).
        "enabled": True,
        # Seconds between resolutions (> 0).
        "interval_seconds": 60.0,
        # Winners per round (>= 1).
        "slots": 1,
        # Smallest bid accepted, and the price winners pay when no bid loses (>= 1).
        "minimum_bid": 1,
        # Minted scrip = score // mint_ratio (>= 1).
        "mint_ratio": 1,
        # "offline": scores from evidence in the world (no key); "llm": the LLM gateway's backend.
        "scorer": "offline",
        # The mint's own llm_budget (micro-USD), granted once when the world is created;
        # the LLM scorer is charged from it. Anyone may add to it (transfer_quota).
        "llm_budget_micro_usd": 1_000_000,
        # Model for the LLM scorer; "" means llm.default_model.
        "llm_model": "",
    },
}

LLM_PRICE_KEYS = ("prompt_micro_usd_per_1k", "completion_micro_usd_per_1k")

# Sections whose keys are open (any string), with values of the given type.
_OPEN_SECTIONS = {"costs": float}


@dataclass(frozen=True)
class Config:
    data: dict[str, dict[str, Any]]

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.data[section]

    @property
    def server(self) -> dict[str, Any]:
        return self.data["server"]

    @property
    def limits(self) -> dict[str, Any]:
        return self.data["limits"]

    @property
    def agents(self) -> dict[str, Any]:
        return self.data["agents"]

    @property
    def rate_limits(self) -> dict[str, Any]:
        return self.data["rate_limits"]

    @property
    def storage(self) -> dict[str, Any]:
        return self.data["storage"]

    @property
    def llm(self) -> dict[str, Any]:
        return self.data["llm"]

    @property
    def oracle(self) -> dict[str, Any]:
        return self.data["oracle"]

    def cost(self, key: str) -> float:
        return float(self.data["costs"].get(key, 0.0))


def _check_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        expected = "table" if isinstance(default, dict) else type(default).__name__
        raise ConfigError(f"config key {key}: expected {expected}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"config key {key}: must not be negative, got {value!r}")
    return value


def build(overrides: dict[str, Any] | None = None) -> Config:
    """Defaults merged with `overrides` (same shape as the TOML file), validated."""
    data = copy.deepcopy(DEFAULTS)
    for section, values in (overrides or {}).items():
        if section not in data:
            raise ConfigError(f"config key {section}: unknown section")
        if not isinstance(values, dict):
            raise ConfigError(f"config key {section}: must be a table")
        for key, value in values.items():
            name = f"{section}.{key}"
            if section in _OPEN_SECTIONS:
                data[section][key] = _check_type(name, value, 0.0)
            elif key not in data[section]:
                raise ConfigError(f"config key {name}: unknown key")
            else:
                data[section][key] = _check_type(name, value, DEFAULTS[section][key])
    if data["sandbox"]["isolation"] not in ("auto", "bwrap", "process"):
        raise ConfigError("config key sandbox.isolation: one of auto, bwrap, process")
    if data["server"]["max_batch"] < 1:
        raise ConfigError("config key server.max_batch: must be at least 1")
    url = data["storage"]["url"]
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("config key storage.url: \"\" (SQLite in the data directory) or postgresql://USER@HOST:PORT/DB")
    _check_llm(data["llm"])
    _check_oracle(data["oracle"], data["llm"])
    return Config(data)


def _check_oracle(oracle: dict[str, Any], llm: dict[str, Any]) -> None:
    if oracle["interval_seconds"] <= 0:
        raise ConfigError("config key oracle.interval_seconds: must be positive")
    for key in ("slots", "minimum_bid", "mint_ratio"):
        if oracle[key] < 1:
            raise ConfigError(f"config key oracle.{key}: must be at least 1")
    if oracle["scorer"] not in ("offline", "llm"):
        raise ConfigError("config key oracle.scorer: one of offline, llm")
    if oracle["llm_model"] and oracle["llm_model"] not in llm["models"]:
        raise ConfigError(f"config key oracle.llm_model: {oracle['llm_model']!r} is not in llm.models")


def _check_llm(llm: dict[str, Any]) -> None:
    if llm["backend"] not in ("offline", "openai"):
        raise ConfigError("config key llm.backend: one of offline, openai")
    if llm["backend"] == "openai" and not llm["base_url"].startswith(("http://", "https://")):
        raise ConfigError(f"config key llm.base_url: an http(s) URL, got {llm['base_url']!r}")
    models = llm["models"]
    if not models:
        raise ConfigError("config key llm.models: at least one model")
    for name, prices in models.items():
        where = f"llm.models.{name}"
        if not isinstance(prices, dict):
            raise ConfigError(f"config key {where}: expected table, got {prices!r}")
        for key in prices:
            if key not in LLM_PRICE_KEYS:
                raise ConfigError(f"config key {where}.{key}: unknown key")
        for key in LLM_PRICE_KEYS:
            if key not in prices:
                raise ConfigError(f"config key {where}.{key}: missing (integer micro-USD per 1000 tokens)")
            _check_type(f"{where}.{key}", prices[key], 0)
    if llm["default_model"] not in models:
        raise ConfigError(f"config key llm.default_model: {llm['default_model']!r} is not in llm.models")
    for key in ("default_max_tokens", "max_tokens_cap", "tokens_per_minute"):
        if llm[key] < 1:
            raise ConfigError(f"config key llm.{key}: must be at least 1")
    if llm["default_max_tokens"] > llm["max_tokens_cap"]:
        raise ConfigError("config key llm.default_max_tokens: must not exceed llm.max_tokens_cap")
    if llm["timeout_seconds"] <= 0:
        raise ConfigError("config key llm.timeout_seconds: must be positive")


def load(path: str | Path | None) -> Config:
    if path is None:
        return build()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return build(raw)


def defaults_toml() -> str:
    """Every key with its default, as a TOML file (`ecology defaults`)."""
    import json

    lines = []
    for section, values in DEFAULTS.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            name = key if key.replace("_", "").isalnum() else json.dumps(key)
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)
