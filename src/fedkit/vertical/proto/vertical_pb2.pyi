from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Points(_message.Message):
    __slots__ = ("split", "points")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    split: str
    points: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, split: _Optional[str] = ..., points: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PsiReply(_message.Message):
    __slots__ = ("double_blinded", "blinded")
    DOUBLE_BLINDED_FIELD_NUMBER: _ClassVar[int]
    BLINDED_FIELD_NUMBER: _ClassVar[int]
    double_blinded: _containers.RepeatedScalarFieldContainer[bytes]
    blinded: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, double_blinded: _Optional[_Iterable[bytes]] = ..., blinded: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Alignment(_message.Message):
    __slots__ = ("split", "positions")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    split: str
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, split: _Optional[str] = ..., positions: _Optional[_Iterable[int]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("split", "step", "rows", "train")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    split: str
    step: int
    rows: _containers.RepeatedScalarFieldContainer[int]
    train: bool
    def __init__(self, split: _Optional[str] = ..., step: _Optional[int] = ..., rows: _Optional[_Iterable[int]] = ..., train: _Optional[bool] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("safetensors",)
    SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    safetensors: bytes
    def __init__(self, safetensors: _Optional[bytes] = ...) -> None: ...

class Gradient(_message.Message):
    __slots__ = ("step", "safetensors")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    step: int
    safetensors: bytes
    def __init__(self, step: _Optional[int] = ..., safetensors: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
