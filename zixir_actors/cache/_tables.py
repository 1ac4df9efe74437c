"""Named tables of records beside a cache's key/value entries.

A table maps a primary key to a record (a dict). Records never expire and
are never evicted. With ``persist=True`` every change is committed to the
cache's LMDB sub-database ``cache-tables:<name>`` before it is confirmed.

Storage layout (keys of that sub-database): ``T<table>`` holds the table's
key field; ``R<len>:<table><key bytes>`` holds ``(table, key, record)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from zixir_actors import _codec
from zixir_actors.cache._keys import key_bytes
from zixir_actors.errors import (
    ConfigError,
    CorruptBlobError,
    DuplicateKeyError,
    InvalidKeyError,
    InvalidQueryError,
    InvalidRecordError,
    RecordNotFoundError,
    TableExistsError,
    UnknownTableError,
)
from zixir_actors.observability import logger

if TYPE_CHECKING:
    from zixir_actors.cache._state import CacheState

__all__ = ["DEFAULT_KEY_FIELD", "OrderBy", "Tables", "Where", "new_record_id"]

DEFAULT_KEY_FIELD = "id"
"""The record field that holds a table's primary key unless `create_table` says otherwise."""



def new_record_id() -> str:
    """The key `insert` generates for a record without its key field: 32 random hex digits."""
    return uuid.uuid4().hex


Where = Callable[[Mapping[str, Any]], object] | Mapping[str, Any] | None
OrderBy = str | Sequence[str] | Callable[[Mapping[str, Any]], Any] | None


@dataclass(slots=True)
class _Table:
    key_field: str
    rows: dict[Hashable, dict[str, Any]] = field(default_factory=dict)


def _row_key(table: str, key: Hashable) -> bytes:
    tb = table.encode()
    return b"R%d:" % len(tb) + tb + key_bytes(key)


class Tables:
    """The tables of one cache state; every method but `query`/`count` holds the state lock."""

    def __init__(self, state: CacheState, predecessor: Tables | None) -> None:
        from zixir_actors.cache._state import Closed

        self._closed_error = Closed
        self.state = state
        self.tables: dict[str, _Table] = {}
        self.db: Any = None
        if state.env is not None:
            self.db = state.env.db(f"cache-tables:{state.name}")
            self._load()
        elif predecessor is not None:
            self.tables = predecessor.tables

    # -- schema --------------------------------------------------------------

    def create(self, table: str, key_field: str) -> bool:
        _check_name(table)
        if not isinstance(key_field, str) or not key_field:
            raise ConfigError("key", key_field, "the key field must be a non-empty string")
        with self.state.lock:
            self._open()
            existing = self.tables.get(table)
            if existing is not None:
                if existing.key_field != key_field:
                    raise TableExistsError(self.state.name, table, existing.key_field)
                return False
            self._write(lambda txn: txn.put(b"T" + table.encode(),
                                            _codec.encode(key_field), db=self.db))
            self.tables[table] = _Table(key_field)
            return True

    def drop(self, table: str) -> None:
        with self.state.lock:
            self._open()
            self._table(table)
            prefix = b"R%d:" % len(table.encode()) + table.encode()

            def write(txn: Any) -> None:
                cursor = txn.cursor(db=self.db)
                if cursor.set_range(prefix):
                    while cursor.key().startswith(prefix):
                        if not cursor.delete():
                            break
                txn.delete(b"T" + table.encode(), db=self.db)

            self._write(write)
            del self.tables[table]

    def names(self) -> list[str]:
        return sorted(self.tables)

    # -- records -------------------------------------------------------------

    def insert(self, table: str, record: Mapping[str, Any], key_field: str | None) -> Hashable:
        _check_name(table)
        if key_field is not None and (not isinstance(key_field, str) or not key_field):
            raise ConfigError("key", key_field, "the name of the record field holding the key")
        if not isinstance(record, Mapping):
            raise InvalidRecordError(table, f"expected a mapping, got {type(record).__name__}")
        with self.state.lock:
            self._open()
            t = self.tables.get(table)
            kf = t.key_field if t is not None else key_field or DEFAULT_KEY_FIELD
            if key_field is not None and key_field != kf:
                raise InvalidRecordError(table, f"the table is keyed by {kf!r}, not {key_field!r}")
            row = dict(record)
            if kf not in row:
                # Like Zixir: a record without its key gets a generated one, stored in it.
                row[kf] = new_record_id()
            key = row[kf]
            try:
                hash(key)
            except TypeError:
                raise InvalidKeyError(key, "unhashable") from None
            if t is not None and key in t.rows:
                raise DuplicateKeyError(table, key)
            if t is None:
                # The first insert creates the table, in the same transaction.
                catalog = (b"T" + table.encode(), _codec.encode(kf))
                self._put_row(table, key, row, catalog)
                t = self.tables[table] = _Table(kf)
            else:
                self._put_row(table, key, row)
            t.rows[key] = row
            return key  # type: ignore[no-any-return]

    def get(self, table: str, key: Hashable) -> dict[str, Any] | None:
        t = self._table(table)
        try:
            row = t.rows.get(key)
        except TypeError:
            raise InvalidKeyError(key, "unhashable") from None
        return dict(row) if row is not None else None

    def update(self, table: str, key: Hashable, changes: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(changes, Mapping):
            raise InvalidRecordError(table, f"changes must be a mapping, got "
                                            f"{type(changes).__name__}")
        with self.state.lock:
            self._open()
            t = self._table(table)
            try:
                row = t.rows.get(key)
            except TypeError:
                raise InvalidKeyError(key, "unhashable") from None
            if row is None:
                raise RecordNotFoundError(table, key)
            kf = t.key_field
            if kf in changes and changes[kf] != key:
                raise InvalidRecordError(table, f"cannot change the key field {kf!r} "
                                                f"from {key!r} to {changes[kf]!r}")
            new = {**row, **changes}
            self._put_row(table, key, new)
            t.rows[key] = new
            return dict(new)

    def delete(self, table: str, key: Hashable) -> bool:
        with self.state.lock:
            self._open()
            t = self._table(table)
            try:
                present = key in t.rows
            except TypeError:
                raise InvalidKeyError(key, "unhashable") from None
            if not present:
                return False
            if self.db is not None:
                rk = _row_key(table, key)
                self._write(lambda txn: txn.delete(rk, db=self.db))
            del t.rows[key]
            return True

    def query(self, table: str, where: Where, order_by: OrderBy,
              limit: int | None) -> list[dict[str, Any]]:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise InvalidQueryError(table, "limit", limit, "expected None or an int >= 0")
        match = _matcher(table, where)
        with self.state.lock:
            rows = list(self._table(table).rows.values())
        found = [r for r in rows if match(r)]
        found = _sort(table, found, order_by)
        if limit is not None:
            found = found[:limit]
        return [dict(r) for r in found]

    def count(self, table: str, where: Where) -> int:
        if where is None:
            return len(self._table(table).rows)
        match = _matcher(table, where)
        with self.state.lock:
            rows = list(self._table(table).rows.values())
        return sum(1 for r in rows if match(r))

    # -- internals -----------------------------------------------------------

    def _table(self, table: str) -> _Table:
        t = self.tables.get(table) if isinstance(table, str) else None
        if t is None:
            _check_name(table)
            raise UnknownTableError(self.state.name, table)
        return t

    def _open(self) -> None:
        if self.state.closed:
            raise self._closed_error

    def _put_row(self, table: str, key: Hashable, row: dict[str, Any],
                 catalog: tuple[bytes, bytes] | None = None) -> None:
        if self.db is None:
            return
        rk = _row_key(table, key)
        blob = _codec.encode((table, key, row))
        db = self.db

        def write(txn: Any) -> None:
            if catalog is not None:
                txn.put(catalog[0], catalog[1], db=db)
            txn.put(rk, blob, db=db)

        self._write(write)

    def _write(self, fn: Callable[[Any], object]) -> None:
        state = self.state
        if state.env is None:
            return
        state.env.write(fn, durable=state.options.durable)
        state._after_write()

    def _load(self) -> None:
        assert self.state.env is not None
        rows: list[tuple[str, Hashable, dict[str, Any]]] = []
        with self.state.env.read() as txn:
            for k, blob in txn.cursor(db=self.db):
                try:
                    if k[:1] == b"T":
                        self.tables[k[1:].decode()] = _Table(_codec.decode(blob, key=k))
                    else:
                        rows.append(_codec.decode(blob, key=k))
                except (CorruptBlobError, ValueError, TypeError) as exc:
                    logger.bind(cache=self.state.name).warning("skipping unreadable row: {}", exc)
        for table, key, row in rows:
            t = self.tables.get(table)
            if t is not None:
                t.rows[key] = row


def _check_name(table: object) -> None:
    if not isinstance(table, str) or not table:
        raise ConfigError("table", table, "a table name must be a non-empty string")


def _matcher(table: str, where: Where) -> Callable[[dict[str, Any]], bool]:
    if where is None:
        return lambda row: True
    if callable(where):
        predicate = where

        def call(row: dict[str, Any]) -> bool:
            try:
                return bool(predicate(MappingProxyType(row)))
            except Exception as exc:
                raise InvalidQueryError(table, "where", where,
                                        f"raised {type(exc).__name__}: {exc}") from exc

        return call
    if isinstance(where, Mapping):
        conditions = list(where.items())
        for name, _ in conditions:
            if not isinstance(name, str):
                raise InvalidQueryError(table, "where", where, f"field {name!r} is not a string")

        def fields(row: dict[str, Any]) -> bool:
            for name, wanted in conditions:
                if name not in row:
                    return False
                value = row[name]
                if callable(wanted):
                    try:
                        if not wanted(value):
                            return False
                    except Exception as exc:
                        raise InvalidQueryError(table, "where", where,
                                                f"test of field {name!r} raised "
                                                f"{type(exc).__name__}: {exc}") from exc
                elif value != wanted:
                    return False
            return True

        return fields
    raise InvalidQueryError(table, "where", where,
                            "expected None, a callable or a {field: value} mapping")


def _sort(table: str, rows: list[dict[str, Any]], order_by: OrderBy) -> list[dict[str, Any]]:
    if order_by is None:
        return rows
    if callable(order_by):
        key_fn = order_by
        try:
            return sorted(rows, key=lambda r: key_fn(MappingProxyType(r)))
        except Exception as exc:
            raise InvalidQueryError(table, "order_by", order_by,
                                    f"raised {type(exc).__name__}: {exc}") from exc
    specs = [order_by] if isinstance(order_by, str) else order_by
    if not isinstance(specs, (list, tuple)) or not specs or \
            not all(isinstance(s, str) and s.lstrip("-") for s in specs):
        raise InvalidQueryError(table, "order_by", order_by,
                                "expected a field name, '-field' for descending, a list of "
                                "those, or a key function")
    # Least significant field first; each pass is stable. Records without the
    # field (or with None) go last in either direction.
    for spec in reversed(specs):
        desc = spec.startswith("-")
        name = spec[1:] if desc else spec
        present = [r for r in rows if r.get(name) is not None]
        missing = [r for r in rows if r.get(name) is None]
        try:
            present.sort(key=lambda r: r[name], reverse=desc)
        except TypeError as exc:
            raise InvalidQueryError(table, "order_by", order_by,
                                    f"values of field {name!r} cannot be compared: {exc}") from exc
        rows = present + missing
    return rows
