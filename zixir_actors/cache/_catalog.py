"""What a data directory knows about its caches, read without starting any (`zixir cache`).

A persistent cache's entries live in the sub-database ``cache:<name>``; every
cache that stopped under a runtime left a record in ``cache-stats`` (see
`CacheState._save_record`): persistent or not, its size and its counters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from zixir_actors import _codec
from zixir_actors._lmdb import open_env, release
from zixir_actors.cache._state import STATS_DB
from zixir_actors.errors import CorruptBlobError

__all__ = ["StoredCache", "stored_caches"]

_ENTRIES_PREFIX = b"cache:"


@dataclass(frozen=True, slots=True)
class StoredCache:
    """One cache of a data directory, as `stored_caches` reads it.

    Attributes:
        name: the cache name.
        persistent: whether its entries are kept in LMDB.
        entries, bytes: for a persistent cache, the entries stored now (expired
            ones not reclaimed yet included) and their encoded size; for a
            memory-only cache, its size when it last stopped.
        hits, misses: lookups counted by every process so far for a persistent
            cache (saved when each stops); a memory-only cache's last run.
        updated_at: when the record was last saved (None: never, e.g. a
            persistent cache whose process was killed before it stopped).
    """

    name: str
    persistent: bool
    entries: int
    bytes: int
    hits: int
    misses: int
    updated_at: float | None


def stored_caches(data_dir: str | os.PathLike[str]) -> list[StoredCache]:
    """The caches recorded in `data_dir`, sorted by name; never creates anything.

    Example:
        >>> import tempfile
        >>> stored_caches(tempfile.mkdtemp())
        []

    Raises:
        StoreError: the directory holds a store that cannot be opened.
    """
    if not (Path(data_dir) / "data.mdb").is_file():
        return []
    env = open_env(data_dir)
    try:
        with env.read() as txn:
            records = _records(env.env, txn)
            for name in _persistent_names(txn):
                db = env.env.open_db(_ENTRIES_PREFIX + name.encode(), txn=txn, create=False)
                size = sum(len(value) for value in txn.cursor(db=db).iternext(keys=False))
                old = records.get(name, {})
                records[name] = {**old, "persistent": True,
                                 "entries": txn.stat(db)["entries"], "bytes": size}
    finally:
        release(env)
    return [StoredCache(name, bool(r.get("persistent")), int(r.get("entries", 0)),
                        int(r.get("bytes", 0)), int(r.get("hits", 0)), int(r.get("misses", 0)),
                        r.get("updated_at"))
            for name, r in sorted(records.items())]


def _persistent_names(txn: Any) -> list[str]:
    names = []
    cursor = txn.cursor()   # the main database lists the named sub-databases
    if cursor.set_range(_ENTRIES_PREFIX):
        for key in cursor.iternext(values=False):
            if not key.startswith(_ENTRIES_PREFIX):
                break
            names.append(key[len(_ENTRIES_PREFIX):].decode(errors="replace"))
    return names


def _records(env: Any, txn: Any) -> dict[str, dict[str, Any]]:
    try:
        db = env.open_db(STATS_DB.encode(), txn=txn, create=False)
    except lmdb.NotFoundError:
        return {}
    records: dict[str, dict[str, Any]] = {}
    for key, blob in txn.cursor(db=db):
        try:
            records[key.decode(errors="replace")] = dict(_codec.decode(blob, key=key))
        except (CorruptBlobError, ValueError, TypeError):
            continue   # a damaged record hides its counters, not the cache
    return records
