import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ecology.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union
from ecology.v1.errors_pb2 import ErrorModel as ErrorModel

DESCRIPTOR: _descriptor.FileDescriptor

class MethodSpec(_message.Message):
    __slots__ = ("name", "description", "input_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    input_schema: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("id", "content", "created_by", "access_contract_id", "has_standing", "can_execute", "interface", "metadata", "state", "kind", "version", "created_at", "updated_at", "size_bytes", "deleted", "billed_to")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    ACCESS_CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_STANDING_FIELD_NUMBER: _ClassVar[int]
    CAN_EXECUTE_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    BILLED_TO_FIELD_NUMBER: _ClassVar[int]
    id: str
    content: str
    created_by: str
    access_contract_id: str
    has_standing: bool
    can_execute: bool
    interface: _containers.RepeatedCompositeFieldContainer[MethodSpec]
    metadata: _struct_pb2.Struct
    state: _struct_pb2.Struct
    kind: str
    version: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    size_bytes: int
    deleted: bool
    billed_to: str
    def __init__(self, id: _Optional[str] = ..., content: _Optional[str] = ..., created_by: _Optional[str] = ..., access_contract_id: _Optional[str] = ..., has_standing: _Optional[bool] = ..., can_execute: _Optional[bool] = ..., interface: _Optional[_Iterable[_Union[MethodSpec, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., kind: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., deleted: _Optional[bool] = ..., billed_to: _Optional[str] = ...) -> None: ...

class FlowResource(_message.Message):
    __slots__ = ("name", "balance", "rate", "capacity", "usable_at", "seconds_until_usable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    USABLE_AT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_UNTIL_USABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    balance: float
    rate: float
    capacity: float
    usable_at: _timestamp_pb2.Timestamp
    seconds_until_usable: float
    def __init__(self, name: _Optional[str] = ..., balance: _Optional[float] = ..., rate: _Optional[float] = ..., capacity: _Optional[float] = ..., usable_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., seconds_until_usable: _Optional[float] = ...) -> None: ...

class StockResource(_message.Message):
    __slots__ = ("name", "used", "quota")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    name: str
    used: int
    quota: int
    def __init__(self, name: _Optional[str] = ..., used: _Optional[int] = ..., quota: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "at", "type", "principal_id", "artifact_id", "related_ids", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    RELATED_IDS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: _timestamp_pb2.Timestamp
    type: str
    principal_id: str
    artifact_id: str
    related_ids: _containers.RepeatedScalarFieldContainer[str]
    data: _struct_pb2.Struct
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., principal_id: _Optional[str] = ..., artifact_id: _Optional[str] = ..., related_ids: _Optional[_Iterable[str]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("now", "principal_id", "scrip", "flow", "stock", "last_event_seq", "next_mint_at")
    NOW_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_ID_FIELD_NUMBER: _ClassVar[int]
    SCRIP_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    NEXT_MINT_AT_FIELD_NUMBER: _ClassVar[int]
    now: _timestamp_pb2.Timestamp
    principal_id: str
    scrip: int
    flow: _containers.RepeatedCompositeFieldContainer[FlowResource]
    stock: _containers.RepeatedCompositeFieldContainer[StockResource]
    last_event_seq: int
    next_mint_at: _timestamp_pb2.Timestamp
    def __init__(self, now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal_id: _Optional[str] = ..., scrip: _Optional[int] = ..., flow: _Optional[_Iterable[_Union[FlowResource, _Mapping]]] = ..., stock: _Optional[_Iterable[_Union[StockResource, _Mapping]]] = ..., last_event_seq: _Optional[int] = ..., next_mint_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReadArtifactRequest(_message.Message):
    __slots__ = ("artifact_id",)
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    def __init__(self, artifact_id: _Optional[str] = ...) -> None: ...

class ReadArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class WriteArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "content", "access_contract_id", "can_execute", "interface", "metadata", "state", "expected_version", "create_only", "replace_interface", "replace_metadata", "replace_state", "request_id")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    CAN_EXECUTE_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    REPLACE_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_METADATA_FIELD_NUMBER: _ClassVar[int]
    REPLACE_STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    content: str
    access_contract_id: str
    can_execute: bool
    interface: _containers.RepeatedCompositeFieldContainer[MethodSpec]
    metadata: _struct_pb2.Struct
    state: _struct_pb2.Struct
    expected_version: int
    create_only: bool
    replace_interface: bool
    replace_metadata: bool
    replace_state: bool
    request_id: str
    def __init__(self, artifact_id: _Optional[str] = ..., content: _Optional[str] = ..., access_contract_id: _Optional[str] = ..., can_execute: _Optional[bool] = ..., interface: _Optional[_Iterable[_Union[MethodSpec, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., expected_version: _Optional[int] = ..., create_only: _Optional[bool] = ..., replace_interface: _Optional[bool] = ..., replace_metadata: _Optional[bool] = ..., replace_state: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class WriteArtifactResponse(_message.Message):
    __slots__ = ("artifact", "created")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    created: bool
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeleteArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "expected_version", "request_id")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    expected_version: int
    request_id: str
    def __init__(self, artifact_id: _Optional[str] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class InvokeArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "method", "args", "max_spend", "request_id")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    method: str
    args: _struct_pb2.Struct
    max_spend: int
    request_id: str
    def __init__(self, artifact_id: _Optional[str] = ..., method: _Optional[str] = ..., args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., max_spend: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class InvokeArtifactResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _struct_pb2.Value
    def __init__(self, result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("created_by", "kind", "has_standing", "can_execute", "metadata_equals", "include_deleted", "page_size", "cursor")
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HAS_STANDING_FIELD_NUMBER: _ClassVar[int]
    CAN_EXECUTE_FIELD_NUMBER: _ClassVar[int]
    METADATA_EQUALS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    created_by: str
    kind: str
    has_standing: bool
    can_execute: bool
    metadata_equals: _struct_pb2.Struct
    include_deleted: bool
    page_size: int
    cursor: str
    def __init__(self, created_by: _Optional[str] = ..., kind: _Optional[str] = ..., has_standing: _Optional[bool] = ..., can_execute: _Optional[bool] = ..., metadata_equals: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., include_deleted: _Optional[bool] = ..., page_size: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "next_cursor")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    next_cursor: str
    def __init__(self, artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
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

class RecordDecisionRequest(_message.Message):
    __slots__ = ("step", "observed", "action", "outcome", "llm_request_ids")
    STEP_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LLM_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    observed: _struct_pb2.Struct
    action: _struct_pb2.Struct
    outcome: _struct_pb2.Struct
    llm_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, step: _Optional[int] = ..., observed: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., action: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., outcome: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., llm_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordDecisionResponse(_message.Message):
    __slots__ = ("seq", "truncated")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    truncated: bool
    def __init__(self, seq: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...
