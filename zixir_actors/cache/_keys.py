"""Stable key encodings: LMDB keys, memoize keys and size strings.

`canonical(obj)` turns a key (or a memoized call's arguments) into bytes that
are equal whenever the values are equal, in any process: dicts and sets are
sorted by their encodings, numbers are normalized the way Python's `==` sees
them (``1 == 1.0 == True``), and nothing depends on `hash()` (which is salted
per process for strings).

Example:
    >>> canonical({"b": 1, "a": [1.0, None]}) == canonical({"a": [1, None], "b": True})
    True
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import math
import pickle
import re
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from zixir_actors.errors import ConfigError, InvalidKeyError

__all__ = ["MAX_LMDB_KEY", "canonical", "key_bytes", "memo_key", "parse_size"]

MAX_LMDB_KEY = 500
"""Longer encoded keys are stored under their SHA-256 (LMDB's limit is 511 bytes)."""

_MAX_DEPTH = 64


def canonical(obj: Any) -> bytes:
    """A deterministic byte encoding of `obj`, equal for equal values in any process.

    Raises:
        InvalidKeyError: `obj` holds something that has no stable encoding
            (an object pickle refuses, or nesting deeper than 64 levels).
    """
    out: list[bytes] = []
    _encode(obj, out, 0, obj)
    return b"".join(out)


def _encode(obj: Any, out: list[bytes], depth: int, root: Any) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidKeyError(root, f"nested deeper than {_MAX_DEPTH} levels")
    t = type(obj)
    if t is str:
        data = obj.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(data))
        out.append(data)
    elif obj is None:
        out.append(b"N")
    elif t is bool or t is int:
        out.append(b"i%d;" % obj)
    elif t is float:
        if math.isfinite(obj) and obj.is_integer():
            out.append(b"i%d;" % int(obj))
        else:
            out.append(b"f" + obj.hex().encode() + b";")
    elif t is bytes:
        out.append(b"b%d:" % len(obj))
        out.append(obj)
    elif t is tuple or t is list:
        out.append(b"(" if t is tuple else b"[")
        for item in obj:
            _encode(item, out, depth + 1, root)
        out.append(b")")
    elif isinstance(obj, Mapping):
        pairs = sorted((canonical(k), canonical(v)) for k, v in obj.items())
        out.append(b"{%d:" % len(pairs))
        for k, v in pairs:
            out.append(k)
            out.append(v)
        out.append(b"}")
    elif t is set or t is frozenset:
        items = sorted(canonical(item) for item in obj)
        out.append(b"<%d:" % len(items))
        out.extend(items)
        out.append(b">")
    elif isinstance(obj, enum.Enum):
        out.append(b"E" + _qualname(t) + b":")
        _encode(obj.value, out, depth + 1, root)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out.append(b"D" + _qualname(t) + b":(")
        for f in dataclasses.fields(obj):
            _encode(getattr(obj, f.name), out, depth + 1, root)
        out.append(b")")
    elif isinstance(obj, (str, int, float, bytes, tuple)):
        # Subclasses (NamedTuple, IntEnum handled above, str subclasses):
        # keep the type name so they do not collide with the base type.
        out.append(b"S" + _qualname(t) + b":")
        base: Any = next(b for b in (str, int, float, bytes, tuple) if isinstance(obj, b))
        _encode(base(obj), out, depth + 1, root)
    else:
        try:
            data = pickle.dumps(obj, protocol=4)
        except Exception as exc:  # reported as a bad key
            raise InvalidKeyError(root, f"{t.__name__} has no stable encoding: {exc}") from exc
        out.append(b"P%d:" % len(data))
        out.append(data)


def _qualname(t: type) -> bytes:
    return f"{t.__module__}.{t.__qualname__}".encode()


def key_bytes(key: Hashable) -> bytes:
    """The LMDB key of a cache key: its canonical encoding, hashed when too long.

    Raises:
        InvalidKeyError: the key is unhashable or has no stable encoding.
    """
    if type(key) is str and len(key) < MAX_LMDB_KEY // 4:
        data = key.encode("utf-8", "surrogatepass")
        return b"s%d:" % len(data) + data
    try:
        hash(key)
    except TypeError as exc:
        raise InvalidKeyError(key, "unhashable") from exc
    data = canonical(key)
    if len(data) > MAX_LMDB_KEY:
        return b"#" + hashlib.sha256(data).digest()
    return data


def memo_key(qualified_name: str, signature: inspect.Signature | None,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str, str]:
    """The cache key of one call of a memoized function.

    ``f(1, b=2)`` and ``f(1, 2)`` give the same key (arguments are bound to
    the signature and defaults applied); the key is a hash of a canonical
    encoding, so it is the same in every process.

    Raises:
        InvalidKeyError: an argument has no stable encoding.
        TypeError: the arguments do not fit the function's signature.
    """
    if signature is not None:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        payload: Any = tuple(bound.arguments.items())
    else:
        payload = (args, kwargs)
    digest = hashlib.sha256(canonical(payload)).hexdigest()
    return ("zixir.memo", qualified_name, digest)


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """`inspect.signature(fn)`, or None for callables without one (some builtins)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2,
          "gb": 1024**3, "gib": 1024**3, "tb": 1024**4, "tib": 1024**4}


def parse_size(value: int | str | None, field: str) -> int | None:
    """Bytes from an int or a Zixir size string (``"64MB"`` is 64 x 1024^2).

    Raises:
        ConfigError: not a positive int or a size string.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(field, value, "expected bytes or a size like '64MB'")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(field, value, "must be positive")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
            if size > 0:
                return size
    raise ConfigError(field, value, "expected positive bytes or a size like '64MB'")
