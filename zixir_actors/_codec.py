"""Blob encoding for everything zixir-actors stores: a header, then a pickle.

Layout (12 bytes of header, big-endian)::

    magic b"ZX" | version u8 | format u8 | length u32 | crc32 u32 | payload

`format` is 0 for the standard `pickle` module and 1 for `dill`. Plain data
(dicts, lists, numbers, strings, dataclasses of module-level classes) takes
the pickle fast path, about 60x faster than dill; lambdas, closures and other
things pickle refuses fall back to dill, so anything dill handles round-trips.
A blob with a wrong magic, unknown version, bad length or checksum raises
`CorruptBlobError`; it never decodes to garbage.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from typing import Any, TypeVar

from zixir_actors.errors import CorruptBlobError, UnserializableError

__all__ = ["FORMAT_VERSION", "HEADER_SIZE", "decode", "decode_as", "encode"]

T = TypeVar("T")

MAGIC = b"ZX"
FORMAT_VERSION = 1
_PICKLE = 0
_DILL = 1
_HEADER = struct.Struct(">2sBBII")
HEADER_SIZE = _HEADER.size
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _dumps(value: Any) -> tuple[int, bytes]:
    try:
        return _PICKLE, pickle.dumps(value, protocol=_PROTOCOL)
    except Exception:
        pass
    import dill  # the fallback: loaded the first time pickle refuses a value

    try:
        return _DILL, dill.dumps(value, protocol=_PROTOCOL, recurse=True)
    except Exception as exc:
        raise UnserializableError(value, exc) from exc


def encode(value: Any) -> bytes:
    """Serialize `value` into a self-checking blob.

    Raises:
        UnserializableError: neither pickle nor dill can serialize the value.
    """
    try:  # _dumps' fast path, inline: this runs for every checkpoint
        fmt, payload = _PICKLE, pickle.dumps(value, protocol=_PROTOCOL)
    except Exception:
        fmt, payload = _dumps(value)
    return _HEADER.pack(MAGIC, FORMAT_VERSION, fmt, len(payload),
                        zlib.crc32(payload)) + payload


def decode(blob: bytes | memoryview, *, key: Any = None) -> Any:
    """Deserialize a blob made by `encode`.

    Raises:
        CorruptBlobError: the blob is truncated, corrupted, from another
            format version, or not a zixir-actors blob at all.
    """
    data = bytes(blob)
    if len(data) < HEADER_SIZE:
        raise CorruptBlobError(f"truncated: {len(data)} bytes, header needs {HEADER_SIZE}", key=key)
    magic, version, fmt, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptBlobError(f"bad magic {magic!r}, not a zixir-actors blob", key=key)
    if version != FORMAT_VERSION:
        raise CorruptBlobError(f"unsupported format version {version}", key=key)
    payload = memoryview(data)[HEADER_SIZE:]
    if len(payload) != length:
        raise CorruptBlobError(f"truncated: payload {len(payload)} bytes, header says {length}",
                               key=key)
    if zlib.crc32(payload) != crc:
        raise CorruptBlobError("checksum mismatch", key=key)
    try:
        if fmt == _PICKLE:
            return pickle.loads(payload)
        if fmt == _DILL:
            import dill

            return dill.loads(bytes(payload))
    except Exception as exc:
        raise CorruptBlobError(f"cannot decode: {type(exc).__name__}: {exc}", key=key) from exc
    raise CorruptBlobError(f"unknown serializer id {fmt}", key=key)


def decode_as(blob: bytes | memoryview | None, kind: type[T], *, key: Any = None) -> T | None:
    """The `kind` in `blob`, or None when the blob is missing, damaged or holds another type.

    For records read inside a transaction that must go on past a bad one
    (claiming runs, queue and schedule bookkeeping).
    """
    if blob is None:
        return None
    try:
        value = decode(blob, key=key)
    except CorruptBlobError:
        return None
    return value if isinstance(value, kind) else None
