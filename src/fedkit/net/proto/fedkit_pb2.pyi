from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    OK: _ClassVar[ErrorCode]
    UNAUTHENTICATED: _ClassVar[ErrorCode]
    UNKNOWN_WORKER: _ClassVar[ErrorCode]
    RUN_MISMATCH: _ClassVar[ErrorCode]
    STALE_ROUND: _ClassVar[ErrorCode]
    DUPLICATE_RESULT: _ClassVar[ErrorCode]
    UNKNOWN_TASK: _ClassVar[ErrorCode]
    PAYLOAD_TOO_LARGE: _ClassVar[ErrorCode]
    MALFORMED: _ClassVar[ErrorCode]
    CHECKSUM_MISMATCH: _ClassVar[ErrorCode]
    SCHEMA_MISMATCH: _ClassVar[ErrorCode]
    DEADLINE_PASSED: _ClassVar[ErrorCode]
    CLIENT_TAKEN: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    UNSUPPORTED_VERSION: _ClassVar[ErrorCode]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    WAIT: _ClassVar[TaskKind]
    TRAIN: _ClassVar[TaskKind]
    SHUTDOWN: _ClassVar[TaskKind]
    EVALUATE: _ClassVar[TaskKind]
    SECAGG: _ClassVar[TaskKind]
ERROR_CODE_UNSPECIFIED: ErrorCode
OK: ErrorCode
UNAUTHENTICATED: ErrorCode
UNKNOWN_WORKER: ErrorCode
RUN_MISMATCH: ErrorCode
STALE_ROUND: ErrorCode
DUPLICATE_RESULT: ErrorCode
UNKNOWN_TASK: ErrorCode
PAYLOAD_TOO_LARGE: ErrorCode
MALFORMED: ErrorCode
CHECKSUM_MISMATCH: ErrorCode
SCHEMA_MISMATCH: ErrorCode
DEADLINE_PASSED: ErrorCode
CLIENT_TAKEN: ErrorCode
INTERNAL: ErrorCode
UNSUPPORTED_VERSION: ErrorCode
TASK_KIND_UNSPECIFIED: TaskKind
WAIT: TaskKind
TRAIN: TaskKind
SHUTDOWN: TaskKind
EVALUATE: TaskKind
SECAGG: TaskKind

class Error(_message.Message):
    __slots__ = ("code", "detail")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    detail: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("run_id", "round", "task_id", "worker_id", "token")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    task_id: str
    worker_id: str
    token: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("header", "client_id", "experiment_digest", "enrolment_secret", "protocol_version", "client_ids", "enrolment_secrets", "num_examples")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENROLMENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    ENROLMENT_SECRETS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    header: Header
    client_id: str
    experiment_digest: str
    enrolment_secret: str
    protocol_version: int
    client_ids: _containers.RepeatedScalarFieldContainer[str]
    enrolment_secrets: _containers.RepeatedScalarFieldContainer[str]
    num_examples: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., client_id: _Optional[str] = ..., experiment_digest: _Optional[str] = ..., enrolment_secret: _Optional[str] = ..., protocol_version: _Optional[int] = ..., client_ids: _Optional[_Iterable[str]] = ..., enrolment_secrets: _Optional[_Iterable[str]] = ..., num_examples: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("error", "run_id", "worker_id", "token", "heartbeat_interval_s", "max_payload_bytes", "chunk_bytes", "protocol_version", "bulk_port")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BULK_PORT_FIELD_NUMBER: _ClassVar[int]
    error: Error
    run_id: str
    worker_id: str
    token: str
    heartbeat_interval_s: float
    max_payload_bytes: int
    chunk_bytes: int
    protocol_version: int
    bulk_port: int
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., run_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., token: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., max_payload_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., protocol_version: _Optional[int] = ..., bulk_port: _Optional[int] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("header", "wait_s", "held_payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    HELD_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: Header
    wait_s: float
    held_payload: bytes
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., wait_s: _Optional[float] = ..., held_payload: _Optional[bytes] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("error", "kind", "header", "client_id", "work_fraction", "deadline_s", "payload_bytes", "num_chunks", "payload_digest", "payload_held", "client_values")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    WORK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_HELD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VALUES_FIELD_NUMBER: _ClassVar[int]
    error: Error
    kind: TaskKind
    header: Header
    client_id: str
    work_fraction: float
    deadline_s: float
    payload_bytes: int
    num_chunks: int
    payload_digest: bytes
    payload_held: bool
    client_values: _containers.RepeatedCompositeFieldContainer[NamedValue]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., header: _Optional[_Union[Header, _Mapping]] = ..., client_id: _Optional[str] = ..., work_fraction: _Optional[float] = ..., deadline_s: _Optional[float] = ..., payload_bytes: _Optional[int] = ..., num_chunks: _Optional[int] = ..., payload_digest: _Optional[bytes] = ..., payload_held: _Optional[bool] = ..., client_values: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ...) -> None: ...

class NamedValue(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "data", "sha256")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    sha256: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class TaskPart(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: TaskInfo
    chunk: Chunk
    def __init__(self, info: _Optional[_Union[TaskInfo, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class ResultInfo(_message.Message):
    __slots__ = ("header", "client_id", "payload_bytes", "num_chunks", "compute_s", "payload_sha256")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    header: Header
    client_id: str
    payload_bytes: int
    num_chunks: int
    compute_s: float
    payload_sha256: bytes
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., client_id: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., num_chunks: _Optional[int] = ..., compute_s: _Optional[float] = ..., payload_sha256: _Optional[bytes] = ...) -> None: ...

class ResultPart(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: ResultInfo
    chunk: Chunk
    def __init__(self, info: _Optional[_Union[ResultInfo, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: Error
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: Header
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("error", "round")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    error: Error
    round: int
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., round: _Optional[int] = ...) -> None: ...
