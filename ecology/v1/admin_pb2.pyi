import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from ecology.v1 import world_pb2 as _world_pb2
from ecology.v1 import errors_pb2 as _errors_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateAgentRequest(_message.Message):
    __slots__ = ("name", "config", "metadata", "endowment", "rpc_rate", "rpc_burst", "compute_rate", "compute_capacity", "disk_quota_bytes", "llm_budget_micro_usd", "access_contract_id", "interface")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENDOWMENT_FIELD_NUMBER: _ClassVar[int]
    RPC_RATE_FIELD_NUMBER: _ClassVar[int]
    RPC_BURST_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_RATE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DISK_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    LLM_BUDGET_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    ACCESS_CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: str
    metadata: _struct_pb2.Struct
    endowment: int
    rpc_rate: float
    rpc_burst: float
    compute_rate: float
    compute_capacity: float
    disk_quota_bytes: int
    llm_budget_micro_usd: int
    access_contract_id: str
    interface: _containers.RepeatedCompositeFieldContainer[_world_pb2.MethodSpec]
    def __init__(self, name: _Optional[str] = ..., config: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., endowment: _Optional[int] = ..., rpc_rate: _Optional[float] = ..., rpc_burst: _Optional[float] = ..., compute_rate: _Optional[float] = ..., compute_capacity: _Optional[float] = ..., disk_quota_bytes: _Optional[int] = ..., llm_budget_micro_usd: _Optional[int] = ..., access_contract_id: _Optional[str] = ..., interface: _Optional[_Iterable[_Union[_world_pb2.MethodSpec, _Mapping]]] = ...) -> None: ...

class CreateAgentResponse(_message.Message):
    __slots__ = ("agent_id", "token", "agent")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    agent: _world_pb2.Artifact
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., agent: _Optional[_Union[_world_pb2.Artifact, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "cursor")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    cursor: str
    def __init__(self, page_size: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class AgentSummary(_message.Message):
    __slots__ = ("agent_id", "scrip", "flow", "stock", "deleted", "stopped", "state", "idle_seconds")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCRIP_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    scrip: int
    flow: _containers.RepeatedCompositeFieldContainer[_world_pb2.FlowResource]
    stock: _containers.RepeatedCompositeFieldContainer[_world_pb2.StockResource]
    deleted: bool
    stopped: bool
    state: str
    idle_seconds: float
    def __init__(self, agent_id: _Optional[str] = ..., scrip: _Optional[int] = ..., flow: _Optional[_Iterable[_Union[_world_pb2.FlowResource, _Mapping]]] = ..., stock: _Optional[_Iterable[_Union[_world_pb2.StockResource, _Mapping]]] = ..., deleted: _Optional[bool] = ..., stopped: _Optional[bool] = ..., state: _Optional[str] = ..., idle_seconds: _Optional[float] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_cursor")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentSummary]
    next_cursor: str
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentSummary, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("now", "agents", "artifacts", "tombstones", "minted", "burned", "total_balances", "last_event_seq", "ledger_entries", "uptime_seconds", "schema_version", "listen", "sandbox_isolation", "agent_backend", "paused", "steps_left", "agents_active", "agents_stopped", "sandbox_workers_warm", "sandbox_workers_idle", "sandbox_workers_started")
    NOW_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    MINTED_FIELD_NUMBER: _ClassVar[int]
    BURNED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BALANCES_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ISOLATION_FIELD_NUMBER: _ClassVar[int]
    AGENT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    STEPS_LEFT_FIELD_NUMBER: _ClassVar[int]
    AGENTS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_STOPPED_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_WORKERS_WARM_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_WORKERS_IDLE_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_WORKERS_STARTED_FIELD_NUMBER: _ClassVar[int]
    now: _timestamp_pb2.Timestamp
    agents: int
    artifacts: int
    tombstones: int
    minted: int
    burned: int
    total_balances: int
    last_event_seq: int
    ledger_entries: int
    uptime_seconds: float
    schema_version: int
    listen: _containers.RepeatedScalarFieldContainer[str]
    sandbox_isolation: str
    agent_backend: str
    paused: bool
    steps_left: int
    agents_active: int
    agents_stopped: int
    sandbox_workers_warm: int
    sandbox_workers_idle: int
    sandbox_workers_started: int
    def __init__(self, now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agents: _Optional[int] = ..., artifacts: _Optional[int] = ..., tombstones: _Optional[int] = ..., minted: _Optional[int] = ..., burned: _Optional[int] = ..., total_balances: _Optional[int] = ..., last_event_seq: _Optional[int] = ..., ledger_entries: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., schema_version: _Optional[int] = ..., listen: _Optional[_Iterable[str]] = ..., sandbox_isolation: _Optional[str] = ..., agent_backend: _Optional[str] = ..., paused: _Optional[bool] = ..., steps_left: _Optional[int] = ..., agents_active: _Optional[int] = ..., agents_stopped: _Optional[int] = ..., sandbox_workers_warm: _Optional[int] = ..., sandbox_workers_idle: _Optional[int] = ..., sandbox_workers_started: _Optional[int] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: int
    def __init__(self, calls: _Optional[int] = ...) -> None: ...

class WorldControlResponse(_message.Message):
    __slots__ = ("paused", "steps_left")
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    STEPS_LEFT_FIELD_NUMBER: _ClassVar[int]
    paused: bool
    steps_left: int
    def __init__(self, paused: _Optional[bool] = ..., steps_left: _Optional[int] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("agent_id", "scrip", "llm_budget_micro_usd", "memo")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCRIP_FIELD_NUMBER: _ClassVar[int]
    LLM_BUDGET_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    scrip: int
    llm_budget_micro_usd: int
    memo: str
    def __init__(self, agent_id: _Optional[str] = ..., scrip: _Optional[int] = ..., llm_budget_micro_usd: _Optional[int] = ..., memo: _Optional[str] = ...) -> None: ...

class GrantResponse(_message.Message):
    __slots__ = ("scrip", "llm_budget_micro_usd")
    SCRIP_FIELD_NUMBER: _ClassVar[int]
    LLM_BUDGET_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    scrip: int
    llm_budget_micro_usd: int
    def __init__(self, scrip: _Optional[int] = ..., llm_budget_micro_usd: _Optional[int] = ...) -> None: ...

class ListDecisionsRequest(_message.Message):
    __slots__ = ("agent_id", "after_seq", "limit")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    after_seq: int
    limit: int
    def __init__(self, agent_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class LlmExchange(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "answer", "truncated", "at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: _struct_pb2.Value
    answer: str
    truncated: bool
    at: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., answer: _Optional[str] = ..., truncated: _Optional[bool] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("seq", "at", "step", "observed", "action", "outcome", "llm", "llm_request_ids", "truncated")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    LLM_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: _timestamp_pb2.Timestamp
    step: int
    observed: _struct_pb2.Value
    action: _struct_pb2.Value
    outcome: _struct_pb2.Value
    llm: _containers.RepeatedCompositeFieldContainer[LlmExchange]
    llm_request_ids: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., observed: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., action: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., outcome: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., llm: _Optional[_Iterable[_Union[LlmExchange, _Mapping]]] = ..., llm_request_ids: _Optional[_Iterable[str]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ListDecisionsResponse(_message.Message):
    __slots__ = ("decisions", "next_after_seq")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    next_after_seq: int
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., next_after_seq: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_seq", "types", "artifact_ids", "principal_ids")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_IDS_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    types: _containers.RepeatedScalarFieldContainer[str]
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    principal_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, after_seq: _Optional[int] = ..., types: _Optional[_Iterable[str]] = ..., artifact_ids: _Optional[_Iterable[str]] = ..., principal_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchEventBatchesRequest(_message.Message):
    __slots__ = ("after_seq", "types", "artifact_ids", "principal_ids", "interval_ms", "max_events")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_IDS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    types: _containers.RepeatedScalarFieldContainer[str]
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    principal_ids: _containers.RepeatedScalarFieldContainer[str]
    interval_ms: int
    max_events: int
    def __init__(self, after_seq: _Optional[int] = ..., types: _Optional[_Iterable[str]] = ..., artifact_ids: _Optional[_Iterable[str]] = ..., principal_ids: _Optional[_Iterable[str]] = ..., interval_ms: _Optional[int] = ..., max_events: _Optional[int] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_world_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_world_pb2.Event, _Mapping]]] = ...) -> None: ...

class StopAgentRequest(_message.Message):
    __slots__ = ("agent_id", "memo")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    memo: str
    def __init__(self, agent_id: _Optional[str] = ..., memo: _Optional[str] = ...) -> None: ...

class StartAgentRequest(_message.Message):
    __slots__ = ("agent_id", "memo")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    memo: str
    def __init__(self, agent_id: _Optional[str] = ..., memo: _Optional[str] = ...) -> None: ...

class AgentControlResponse(_message.Message):
    __slots__ = ("agent_id", "stopped", "changed")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    stopped: bool
    changed: bool
    def __init__(self, agent_id: _Optional[str] = ..., stopped: _Optional[bool] = ..., changed: _Optional[bool] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("after_seq", "types", "artifact_ids", "principal_ids", "limit")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    types: _containers.RepeatedScalarFieldContainer[str]
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    principal_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, after_seq: _Optional[int] = ..., types: _Optional[_Iterable[str]] = ..., artifact_ids: _Optional[_Iterable[str]] = ..., principal_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "scanned_to", "more")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SCANNED_TO_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_world_pb2.Event]
    scanned_to: int
    more: bool
    def __init__(self, events: _Optional[_Iterable[_Union[_world_pb2.Event, _Mapping]]] = ..., scanned_to: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("artifact_id",)
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    def __init__(self, artifact_id: _Optional[str] = ...) -> None: ...

class GetArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: _world_pb2.Artifact
    def __init__(self, artifact: _Optional[_Union[_world_pb2.Artifact, _Mapping]] = ...) -> None: ...

class QueryGenesisRequest(_message.Message):
    __slots__ = ("artifact_id", "method", "args")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    method: str
    args: _struct_pb2.Struct
    def __init__(self, artifact_id: _Optional[str] = ..., method: _Optional[str] = ..., args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class QueryGenesisResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _struct_pb2.Value
    def __init__(self, result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...
