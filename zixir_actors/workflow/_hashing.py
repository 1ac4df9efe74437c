"""Fingerprints that decide whether a checkpoint is still valid.

`code_hash(fn)` hashes what a function does, not where it sits: its bytecode,
constants (nested functions included), the global names it uses and its
defaults, so moving it or adding a blank line above it does not invalidate
its checkpoints, while editing its body does. Closure cells and the globals
it reads are not hashed: give the step a `version=` when those change.

`fingerprint(value)` hashes step inputs canonically: dict order, set order
and hash randomization across processes do not change it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pickle
import struct
import types
from typing import Any

__all__ = ["code_hash", "fingerprint"]

_MAX_DEPTH = 50


def _code_bytes(code: types.CodeType, out: Any) -> None:
    out.update(code.co_code)
    out.update(repr(code.co_names).encode())
    out.update(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_bytes(const, out)
        else:
            out.update(repr(const).encode())


def code_hash(fn: Any, version: str | None = None) -> str:
    """A short hash of what `fn` does (or of `version` when one is given)."""
    if version is not None:
        return "v:" + version
    digest = hashlib.sha256()
    target = fn
    while isinstance(target, functools.partial):
        digest.update(repr((target.args, sorted(target.keywords.items()))).encode())
        target = target.func
    target = getattr(target, "__wrapped__", target)
    code = getattr(target, "__code__", None)
    if code is None:
        call = vars(type(target)).get("__call__")
        code = getattr(call, "__code__", None)
        digest.update(type(target).__qualname__.encode())
    if code is not None:
        _code_bytes(code, digest)
        digest.update(repr(getattr(target, "__defaults__", None)).encode())
        digest.update(repr(getattr(target, "__kwdefaults__", None)).encode())
    else:
        digest.update(repr(target).encode())
    return digest.hexdigest()[:16]


def _feed(value: Any, out: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        out.update(b"?deep")
        return
    kind = type(value)
    if value is None or kind is bool:
        out.update(b"c" + repr(value).encode())
    elif kind is int:
        out.update(b"i" + str(value).encode() + b";")
    elif kind is float:
        out.update(b"f" + struct.pack(">d", value))
    elif kind is str:
        data = value.encode("utf-8", "surrogatepass")
        out.update(b"s" + struct.pack(">Q", len(data)) + data)
    elif kind is bytes:
        out.update(b"b" + struct.pack(">Q", len(value)) + value)
    elif kind in (list, tuple):
        out.update((b"l" if kind is list else b"t") + struct.pack(">Q", len(value)))
        for item in value:
            _feed(item, out, depth + 1)
    elif isinstance(value, dict):
        items = sorted(((_key_print(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        out.update(b"d" + struct.pack(">Q", len(items)))
        for key_hash, item in items:
            out.update(key_hash.encode())
            _feed(item, out, depth + 1)
    elif isinstance(value, (set, frozenset)):
        hashes = sorted(fingerprint(item) for item in value)
        out.update(b"S" + struct.pack(">Q", len(hashes)) + "".join(hashes).encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out.update(b"D" + f"{kind.__module__}.{kind.__qualname__}".encode())
        for f in dataclasses.fields(value):
            out.update(f.name.encode())
            _feed(getattr(value, f.name), out, depth + 1)
    else:
        out.update(b"p" + f"{kind.__module__}.{kind.__qualname__}".encode())
        try:
            out.update(pickle.dumps(value, protocol=4))
        except Exception:  # lambdas, closures: dill, then repr
            import dill

            try:
                out.update(dill.dumps(value, protocol=4, recurse=True))
            except Exception:
                out.update(repr(value).encode())


def _key_print(key: Any) -> str:
    # Mapping keys are mostly parameter and step names: the same few strings
    # for every step of every run, so their digests are kept.
    if type(key) is str:
        return _str_print(key)
    return fingerprint(key)


@functools.lru_cache(maxsize=4096)
def _str_print(key: str) -> str:
    return _digest(key)


def _digest(value: Any) -> str:
    digest = hashlib.sha256()
    _feed(value, digest, 0)
    return digest.hexdigest()[:16]


def fingerprint(value: Any) -> str:
    """A stable hex digest of `value`'s content."""
    if type(value) is dict and not value:
        return _EMPTY_DICT  # steps without parameters: the common case, kept cheap
    return _digest(value)


_EMPTY_DICT = _digest({})
