"""The grpclib codec for etcd messages.

Outbound, a handler returns either a betterproto2 message (encoded here with
``bytes(message)``) or a :class:`Preencoded` holding wire bytes it built
itself; the hot paths (Range, Txn and Watch responses) splice stored KeyValue
bytes and must not be re-encoded.

Inbound, betterproto2's parser is lenient: it silently stops at a truncated
tag, accepts a length prefix running past the end of the buffer and stores
values of the wrong wire type. etcd (gogoproto) rejects all of those, so every
payload is first walked by :func:`check_wire`, a strict structural scan that
follows the schema into nested messages. Any malformed payload raises
:class:`CodecDecodeError`, a ``GRPCError`` with status INTERNAL, which is what
grpc-go answers for a request it cannot unmarshal; grpclib sends it to the
client as the call's status instead of an opaque UNKNOWN.
"""

from __future__ import annotations

from typing import Any, Final

import betterproto2
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

__all__ = ["CodecDecodeError", "EtcdCodec", "Preencoded", "check_wire"]

# protobuf's default recursion limit; nested Txn requests are the deep case.
MAX_DEPTH: Final = 100

_VARINT: Final = 0
_FIXED64: Final = 1
_LEN: Final = 2
_FIXED32: Final = 5

# Wire types a field of each proto type may arrive with. Packed encoding (LEN)
# is legal for every repeated scalar number type; it is added per field below.
_WIRE_BY_TYPE: Final[dict[str, int]] = {
    betterproto2.TYPE_ENUM: _VARINT,
    betterproto2.TYPE_BOOL: _VARINT,
    betterproto2.TYPE_INT32: _VARINT,
    betterproto2.TYPE_INT64: _VARINT,
    betterproto2.TYPE_UINT32: _VARINT,
    betterproto2.TYPE_UINT64: _VARINT,
    betterproto2.TYPE_SINT32: _VARINT,
    betterproto2.TYPE_SINT64: _VARINT,
    betterproto2.TYPE_FLOAT: _FIXED32,
    betterproto2.TYPE_FIXED32: _FIXED32,
    betterproto2.TYPE_SFIXED32: _FIXED32,
    betterproto2.TYPE_DOUBLE: _FIXED64,
    betterproto2.TYPE_FIXED64: _FIXED64,
    betterproto2.TYPE_SFIXED64: _FIXED64,
    betterproto2.TYPE_STRING: _LEN,
    betterproto2.TYPE_BYTES: _LEN,
    betterproto2.TYPE_MESSAGE: _LEN,
    betterproto2.TYPE_MAP: _LEN,
}

# field number -> (allowed wire types, nested message class to descend into)
_Plan = dict[int, tuple[frozenset[int], "type[betterproto2.Message] | None"]]
_plans: dict[type[betterproto2.Message], _Plan] = {}


class CodecDecodeError(GRPCError):
    """A payload that is not a valid encoding of the expected message."""

    def __init__(self, detail: str) -> None:
        super().__init__(Status.INTERNAL, f"grpc: error unmarshalling request: {detail}")
        self.detail = detail


class Preencoded:
    """Bytes that already are the wire form of the response message."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Preencoded(<{len(self.data)} bytes>)"


def _plan_for(cls: type[betterproto2.Message]) -> _Plan:
    plan = _plans.get(cls)
    if plan is not None:
        return plan
    plan = {}
    # betterproto2's classproperty is typed too narrowly for a plain type[Message].
    meta: betterproto2.ProtoClassMetadata = cls._betterproto  # type: ignore[arg-type]
    for name, field in meta.meta_by_field_name.items():
        wire = {_WIRE_BY_TYPE[field.proto_type]}
        if field.repeated and field.proto_type in betterproto2.PACKED_TYPES:
            wire.add(_LEN)
        nested: type[betterproto2.Message] | None = None
        if field.proto_type == betterproto2.TYPE_MESSAGE and field.unwrap is None:
            candidate = meta.cls_by_field.get(name)
            if isinstance(candidate, type) and issubclass(candidate, betterproto2.Message):
                nested = candidate
        plan[field.number] = (frozenset(wire), nested)
    _plans[cls] = plan
    return plan


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise CodecDecodeError("varint longer than 10 bytes")
    raise CodecDecodeError("truncated varint")


def check_wire(
    data: bytes,
    message_type: type[betterproto2.Message],
    start: int = 0,
    end: int | None = None,
    depth: int = 0,
) -> None:
    """Raise :class:`CodecDecodeError` unless ``data[start:end]`` is well formed.

    Checks tags, wire types (against the schema for known fields), lengths and
    nesting depth, descending into every known message-typed field. Unknown
    fields are skipped like protobuf does; string UTF-8 validity is left to the
    parser (which fails on it).
    """
    if depth > MAX_DEPTH:
        raise CodecDecodeError("message nested too deeply")
    if end is None:
        end = len(data)
    plan = _plan_for(message_type)
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CodecDecodeError("illegal field number 0")
        value_start = pos
        if wire == _VARINT:
            _, pos = _varint(data, pos, end)
        elif wire == _LEN:
            length, value_start = _varint(data, pos, end)
            pos = value_start + length
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        else:
            raise CodecDecodeError(f"unsupported wire type {wire} for field {number}")
        if pos > end:
            raise CodecDecodeError(f"field {number} runs past the end of the message")
        spec = plan.get(number)
        if spec is None:
            continue
        allowed, nested = spec
        if wire not in allowed:
            raise CodecDecodeError(f"wrong wire type {wire} for field {number}")
        if nested is not None:
            check_wire(data, nested, value_start, pos, depth + 1)


class EtcdCodec(CodecBase):
    """grpclib codec: betterproto2 messages, plus :class:`Preencoded` passthrough."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if type(message) is Preencoded:
            return message.data
        if isinstance(message, betterproto2.Message):
            return bytes(message)
        raise TypeError(f"cannot encode {type(message).__name__!r} as {message_type!r}")

    def decode(self, data: bytes, message_type: Any) -> Any:
        data = bytes(data)
        check_wire(data, message_type)
        try:
            return message_type.parse(data)
        except CodecDecodeError:
            raise
        except Exception as exc:  # the parser's own failures (e.g. bad UTF-8)
            raise CodecDecodeError(f"{type(exc).__name__}: {exc}") from exc
