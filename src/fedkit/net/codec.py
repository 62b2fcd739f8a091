"""Tensor bytes on the wire: safetensors payloads, cut into SHA-256-verified chunks.

Why this shape: gRPC refuses messages over 4 MiB by default and a model is bigger, so a payload is
streamed as chunks of at most :data:`CHUNK_BYTES`, each carrying the SHA-256 of its bytes. The
receiver checks the declared total size against its cap *before* it allocates anything, checks
every chunk as it arrives, and finally checks the safetensors header (names, dtypes, shapes)
against the template it expects before a single tensor is materialised. Nothing is ever unpickled:
safetensors is a JSON header plus raw little-endian buffers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.proto import fedkit_pb2 as pb

CHUNK_BYTES = 4 * 1024 * 1024
"""Largest chunk on the wire (4 MiB): the data of one ``Chunk`` message."""

GRPC_MESSAGE_BYTES = CHUNK_BYTES + 64 * 1024
"""gRPC max send/receive message size: one chunk plus room for the protobuf framing."""

MAX_HEADER_BYTES = 16 * 1024 * 1024
"""Largest safetensors JSON header accepted (the format's own limit is 100 MB)."""
MAX_HEADER_DEPTH = 8
"""Deepest JSON nesting a header may have (safetensors needs 3: object, entry, shape list); a
header nested thousands deep would otherwise end the parser in a RecursionError."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text (strings skipped), in linear time without
    recursion."""
    steps = _OPEN[np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES: dict[torch.dtype, str] = {v: k for k, v in _DTYPES.items()}

Buffer = bytes | bytearray
"""Payload bytes: ``bytes``, or the ``bytearray`` a :class:`Reassembler` fills (decoded in
place)."""


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """What a receiver expects of one named tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]


Template = Mapping[str, TensorSpec]


@dataclass(frozen=True, kw_only=True)
class Decoded:
    """A decoded payload: named tensors plus the string metadata of the safetensors header."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


def template_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The template (name -> dtype, shape) that ``tensors`` satisfy."""
    return {k: TensorSpec(dtype=v.dtype, shape=tuple(v.shape)) for k, v in tensors.items()}


def _raw_bytes(t: torch.Tensor) -> memoryview:
    """The little-endian bytes of a contiguous CPU tensor, without copying."""
    if t.numel() == 0:
        return memoryview(b"")
    flat = t.reshape(-1)
    if t.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    arr: Any = flat.numpy()
    return memoryview(arr).cast("B")


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise named tensors (and string metadata) to safetensors bytes.

    The header is written here (JSON, padded to 8 bytes as the format recommends) and the tensor
    bytes are joined straight from the tensors' storage: one copy in all. On a big-endian host the
    reference ``safetensors`` writer is used instead.
    """
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise NetError(
                ErrorCode.SCHEMA_MISMATCH, f"tensor {name!r}: dtype {t.dtype} unsupported"
            )
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if sys.byteorder != "little":
        flat = {k: v.clone() for k, v in cpu.items()}
        return bytes(st_save(flat, metadata=dict(metadata) if metadata else None))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    parts: list[memoryview] = []
    offset = 0
    for name, t in cpu.items():
        raw = _raw_bytes(t)
        header[name] = {
            "dtype": _NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + raw.nbytes],
        }
        parts.append(raw)
        offset += raw.nbytes
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return b"".join([struct.pack("<Q", len(h)), h, *parts])


def read_header(data: Buffer) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Parse and validate the safetensors header of ``data`` without touching tensor bytes.

    Returns the tensor specs by name and the string metadata.

    Raises:
        NetError: ``MALFORMED`` when the header is truncated, not JSON, or its offsets do not tile
            the buffer; ``SCHEMA_MISMATCH`` for an unknown dtype.
    """
    specs, meta, _ = _parse_header(data)
    return specs, meta


def _parse_header(data: Buffer) -> tuple[dict[str, TensorSpec], dict[str, str], dict[str, int]]:
    """:func:`read_header` plus each tensor's absolute byte offset in ``data``."""
    if len(data) < 8:
        raise NetError(
            ErrorCode.MALFORMED, f"payload of {len(data)} bytes has no safetensors header"
        )
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise NetError(ErrorCode.MALFORMED, f"safetensors header length {n} exceeds the payload")
    text = bytes(data[8 : 8 + n])
    if json_depth(text) > MAX_HEADER_DEPTH:
        raise NetError(
            ErrorCode.MALFORMED, f"safetensors header nested deeper than {MAX_HEADER_DEPTH} levels"
        )
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise NetError(ErrorCode.MALFORMED, f"safetensors header is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise NetError(ErrorCode.MALFORMED, "safetensors header is not a JSON object")
    meta_raw = raw.pop("__metadata__", {}) or {}
    if not isinstance(meta_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta_raw.items()
    ):
        raise NetError(ErrorCode.MALFORMED, "safetensors __metadata__ must map strings to strings")
    specs: dict[str, TensorSpec] = {}
    starts: dict[str, int] = {}
    spans: list[tuple[int, int]] = []
    for name, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise NetError(ErrorCode.MALFORMED, f"tensor {name!r}: bad header entry")
        dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise NetError(
                ErrorCode.SCHEMA_MISMATCH,
                f"tensor {name!r}: dtype {entry['dtype']!r} not one of {sorted(_DTYPES)}",
            )
        shape, offs = entry["shape"], entry["data_offsets"]
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offs, list)
            and len(offs) == 2
            and all(isinstance(o, int) for o in offs)
        ):
            raise NetError(ErrorCode.MALFORMED, f"tensor {name!r}: bad shape or offsets")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if offs[1] - offs[0] != math.prod(shape) * itemsize or offs[0] < 0:
            raise NetError(ErrorCode.MALFORMED, f"tensor {name!r}: offsets do not match its shape")
        specs[name] = TensorSpec(dtype=dtype, shape=tuple(shape))
        starts[name] = 8 + n + offs[0]
        spans.append((offs[0], offs[1]))
    spans.sort()
    end = 0
    for begin, stop in spans:
        if begin != end:
            raise NetError(ErrorCode.MALFORMED, "tensor byte ranges overlap or leave holes")
        end = stop
    if 8 + n + end != len(data):
        raise NetError(
            ErrorCode.MALFORMED, f"payload is {len(data)} bytes, header describes {8 + n + end}"
        )
    return specs, dict(meta_raw), starts


def check_template(specs: Mapping[str, TensorSpec], template: Template) -> None:
    """Raise ``SCHEMA_MISMATCH`` unless ``specs`` has the template's names, dtypes and shapes."""
    missing = sorted(set(template) - set(specs))
    extra = sorted(set(specs) - set(template))
    if missing or extra:
        raise NetError(
            ErrorCode.SCHEMA_MISMATCH, f"tensor names differ: missing {missing}, unexpected {extra}"
        )
    for name, want in template.items():
        got = specs[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            raise NetError(
                ErrorCode.SCHEMA_MISMATCH,
                f"tensor {name!r}: got {got.dtype} {list(got.shape)}, "
                f"expected {want.dtype} {list(want.shape)}",
            )


def decode(
    data: Buffer, *, template: Template | None = None, max_bytes: int | None = None
) -> Decoded:
    """Validate and load a safetensors payload.

    Everything is checked (header structure, offsets tiling the buffer, template) before a tensor
    is made. Tensors are views into ``data`` when it is a ``bytearray`` (what a
    :class:`Reassembler` returns) and the offset is aligned, copies otherwise.

    Args:
        data: The payload bytes.
        template: When given, the exact names, dtypes and shapes required.
        max_bytes: When given, the largest payload accepted.

    Raises:
        NetError: ``PAYLOAD_TOO_LARGE``, ``MALFORMED`` or ``SCHEMA_MISMATCH``.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise NetError(ErrorCode.PAYLOAD_TOO_LARGE, f"payload {len(data)} B > cap {max_bytes} B")
    specs, metadata, starts = _parse_header(data)
    if template is not None:
        check_template(specs, template)
    if sys.byteorder != "little":
        try:
            return Decoded(tensors=dict(st_load(bytes(data))), metadata=metadata)
        except Exception as exc:  # safetensors raises its own error types
            raise NetError(
                ErrorCode.MALFORMED, f"safetensors rejected the payload: {exc}"
            ) from None
    buf = data if isinstance(data, bytearray) else bytearray(data)
    tensors: dict[str, torch.Tensor] = {}
    for name, spec in specs.items():
        count = math.prod(spec.shape)
        if count == 0:
            tensors[name] = torch.empty(spec.shape, dtype=spec.dtype)
            continue
        size = torch.empty((), dtype=spec.dtype).element_size()
        start = starts[name]
        if start % size == 0:
            t = torch.frombuffer(buf, dtype=spec.dtype, count=count, offset=start)
        else:  # unaligned: copy the bytes into fresh (aligned) storage
            raw = torch.frombuffer(buf, dtype=torch.uint8, count=count * size, offset=start)
            t = raw.clone().view(spec.dtype)
        tensors[name] = t.view(spec.shape)
    return Decoded(tensors=tensors, metadata=metadata)


def sha256(data: bytes | memoryview) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def split(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[pb.Chunk]:
    """Cut ``data`` into ``Chunk`` messages of at most ``chunk_bytes``, each with its SHA-256."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ValueError(f"chunk_bytes={chunk_bytes} must be in (0, {CHUNK_BYTES}]")
    view = memoryview(data)
    return [
        pb.Chunk(
            index=i, data=bytes(view[o : o + chunk_bytes]), sha256=sha256(view[o : o + chunk_bytes])
        )
        for i, o in enumerate(range(0, len(data), chunk_bytes))
    ]


def payload_digest(chunks: Sequence[pb.Chunk], size: int) -> bytes:
    """The name of a chunked payload: SHA-256 over its size (8 bytes, little-endian) and its
    chunks' SHA-256s in order. Computed from the chunk digests, so naming a payload costs no second
    pass over its bytes; two payloads with the same digest have the same chunks."""
    h = hashlib.sha256(struct.pack("<Q", size))
    for c in chunks:
        h.update(c.sha256)
    return h.digest()


def num_chunks(size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many chunks :func:`split` makes of ``size`` bytes."""
    return -(-size // chunk_bytes)


class Upload(Protocol):
    """A payload arriving piece by piece into one buffer of its declared size: gRPC chunks
    (:class:`Reassembler`) or the bulk channel (:class:`fedkit.net.bulk.SocketUpload`)."""

    @property
    def header_received(self) -> bool:
        """Whether the safetensors header has fully arrived (it can be checked early)."""
        ...

    @property
    def complete(self) -> bool:
        """Whether every declared byte has arrived."""
        ...

    def peek(self) -> bytearray:
        """The buffer as filled so far."""
        ...

    def pieces(self) -> Iterator[None]:
        """Receive the payload, yielding after each piece written into the buffer."""
        ...

    def result(self) -> bytearray:
        """The verified payload (the buffer itself); ``MALFORMED`` if incomplete."""
        ...


def check_declared(declared_bytes: int, max_bytes: int) -> None:
    """``PAYLOAD_TOO_LARGE`` when a peer declares more than the cap (before any allocation)."""
    if declared_bytes > max_bytes:
        raise NetError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"declared payload {declared_bytes} B exceeds the cap of {max_bytes} B",
        )


def header_in(buf: Buffer, received: int) -> bool:
    """Whether the first ``received`` bytes of ``buf`` hold a whole safetensors header (its
    8-byte length prefix and the JSON it announces)."""
    if received < 8:
        return False
    (n,) = struct.unpack("<Q", buf[:8])
    return bool(received >= 8 + n)


class Reassembler:
    """Rebuilds a payload from chunks, refusing anything oversized before it is buffered.

    The declared total is checked against ``max_bytes`` at construction, so a peer announcing a
    huge payload is refused before one byte is allocated; every chunk must arrive in order, be at
    most ``chunk_bytes`` long, stay within the declared total and match its SHA-256. With
    ``source``, :meth:`pieces` adds its chunks one by one (the :class:`Upload` interface).
    """

    def __init__(
        self,
        *,
        declared_bytes: int,
        declared_chunks: int,
        max_bytes: int,
        chunk_bytes: int = CHUNK_BYTES,
        source: Iterable[pb.Chunk] = (),
    ) -> None:
        check_declared(declared_bytes, max_bytes)
        least = num_chunks(declared_bytes, chunk_bytes)
        if not least <= declared_chunks <= max(declared_bytes, least):
            raise NetError(
                ErrorCode.MALFORMED,
                f"{declared_chunks} chunks declared for {declared_bytes} B; expected between "
                f"{least} and {declared_bytes} non-empty chunks of at most {chunk_bytes} B",
            )
        self._buf = bytearray(declared_bytes)
        self._chunks = declared_chunks
        self._chunk_bytes = chunk_bytes
        self._next = 0
        self._offset = 0
        self._digest = hashlib.sha256(struct.pack("<Q", declared_bytes))
        self._source = source

    @property
    def header_received(self) -> bool:
        """Whether the safetensors header (length prefix and JSON) has fully arrived, so that it
        can be checked against a template before the rest of the payload is buffered."""
        return header_in(self._buf, self._offset)

    def pieces(self) -> Iterator[None]:
        """Add the ``source`` chunks one at a time, yielding after each."""
        for chunk in self._source:
            self.add(chunk)
            yield None

    def peek(self) -> bytearray:
        """The buffer as filled so far (declared size; bytes not yet received are zero)."""
        return self._buf

    @property
    def complete(self) -> bool:
        """Whether every declared chunk has arrived."""
        return self._next == self._chunks

    def add(self, chunk: pb.Chunk) -> None:
        """Verify and append one chunk.

        Raises:
            NetError: ``MALFORMED`` (order, size) or ``CHECKSUM_MISMATCH``.
        """
        if chunk.index != self._next:
            raise NetError(
                ErrorCode.MALFORMED, f"chunk {chunk.index} arrived, expected {self._next}"
            )
        data = chunk.data  # read once: each access of a protobuf bytes field may copy it
        n = len(data)
        if n == 0 or n > self._chunk_bytes or self._offset + n > len(self._buf):
            raise NetError(
                ErrorCode.MALFORMED,
                f"chunk {chunk.index} of {n} B overruns the declared {len(self._buf)} B "
                f"(max {self._chunk_bytes} B per chunk)",
            )
        if sha256(data) != chunk.sha256:
            raise NetError(ErrorCode.CHECKSUM_MISMATCH, f"chunk {chunk.index}: SHA-256 mismatch")
        self._buf[self._offset : self._offset + n] = data
        self._offset += n
        self._next += 1
        self._digest.update(chunk.sha256)

    def digest(self) -> bytes:
        """:func:`payload_digest` of the chunks added so far (of the payload, once complete)."""
        return self._digest.digest()

    def result(self) -> bytearray:
        """The reassembled payload (the buffer itself, no copy); ``MALFORMED`` if incomplete."""
        if not self.complete or self._offset != len(self._buf):
            raise NetError(
                ErrorCode.MALFORMED,
                f"payload incomplete: {self._next}/{self._chunks} chunks, "
                f"{self._offset}/{len(self._buf)} B",
            )
        return self._buf
