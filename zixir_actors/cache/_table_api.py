"""The table operations of `Cache` (a mixin) and the `Table` view."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from zixir_actors.cache._options import DEFAULT_TIMEOUT
from zixir_actors.cache._tables import DEFAULT_KEY_FIELD, OrderBy, Tables, Where

if TYPE_CHECKING:
    from zixir_actors.cache._cache import Cache
    from zixir_actors.cache._state import CacheState

__all__ = ["Table", "TableMethods"]

T = TypeVar("T")


def _tables(state: CacheState) -> Tables:
    assert state.tables is not None
    return state.tables


class TableMethods:
    """Named tables of records beside the key/value entries (mixed into `Cache`)."""

    __slots__ = ()

    if TYPE_CHECKING:
        def _live(self, deadline: float | None = -1.0) -> CacheState: ...

        def _write(self, op: Callable[[CacheState], T], timeout: float | None) -> T: ...

    def create_table(self, table: str, *, key: str = DEFAULT_KEY_FIELD,
                     timeout: float | None = DEFAULT_TIMEOUT) -> bool:
        """Create `table` whose records are keyed by their `key` field (default ``"id"``).

        Optional: the first `insert` creates a table too. Returns False if it
        already existed with that key field.

        Raises:
            TableExistsError: it exists with another key field.
            ConfigError: an empty or non-string table or key field name.
        """
        return self._write(lambda s: _tables(s).create(table, key), timeout)

    def drop_table(self, table: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Delete `table` and all its records.

        Raises:
            UnknownTableError: no such table.
        """
        self._write(lambda s: _tables(s).drop(table), timeout)

    def tables(self) -> list[str]:
        """Names of the cache's tables, sorted."""
        return _tables(self._live()).names()

    def table(self, table: str) -> Table:
        """A view on one table: ``cache.table("users").insert({...})``.

        Raises:
            UnknownTableError: no such table.
        """
        _tables(self._live())._table(table)
        return Table(self, table)  # type: ignore[arg-type]

    def insert(self, table: str, record: Mapping[str, Any], key: str | None = None, *,
               timeout: float | None = DEFAULT_TIMEOUT) -> Hashable:
        """Add `record` to `table` (created by its first insert); returns the record's key.

        A record without the key field gets a generated key (32 random hex
        digits), stored in the key field of the stored copy; the mapping you
        pass is not changed.

        Example:
            >>> from supervisors import DynamicSupervisor
            >>> from zixir_actors.cache import Cache
            >>> caches = DynamicSupervisor.start_link(name="zixir.caches")
            >>> c = Cache.start("doc-insert")
            >>> c.insert("users", {"email": "ada@example.org", "name": "Ada"}, key="email")
            'ada@example.org'
            >>> generated = c.insert("users", {"name": "Bob"})
            >>> c.get_record("users", generated) == {"email": generated, "name": "Bob"}
            True
            >>> caches.stop()

        Args:
            key: the name of the record field that holds the primary key:
                the table's key field (``"id"`` for a table that `create_table`
                or a first insert made without one).

        Raises:
            DuplicateKeyError: a record with this key exists.
            InvalidRecordError: not a mapping, or `key` names another field
                than the table's key field.
            InvalidKeyError: the key is unhashable.
            ConfigError: an empty or non-string table name or `key`.
            UnserializableError: a persistent cache cannot serialize the record.
        """
        return self._write(lambda s: _tables(s).insert(table, record, key), timeout)

    def get_record(self, table: str, key: Hashable) -> dict[str, Any] | None:
        """A copy of the record under `key`, or None.

        Raises:
            UnknownTableError: no such table.
        """
        return _tables(self._live()).get(table, key)

    def query(self, table: str, where: Where = None, order_by: OrderBy = None,
              limit: int | None = None) -> list[dict[str, Any]]:
        """Records of `table` matching `where`, sorted by `order_by`, at most `limit`.

        Example:
            >>> from supervisors import DynamicSupervisor
            >>> from zixir_actors.cache import Cache
            >>> caches = DynamicSupervisor.start_link(name="zixir.caches")
            >>> c = Cache.start("doc-tables")
            >>> c.create_table("docs")
            True
            >>> for i, lang in enumerate(["en", "fr", "en"]):
            ...     _ = c.insert("docs", {"id": i, "lang": lang, "score": i * 10})
            >>> [r["id"] for r in c.query("docs", where={"lang": "en"}, order_by="-score")]
            [2, 0]
            >>> c.count("docs", where=lambda r: r["score"] > 5)
            2
            >>> caches.stop()

        Args:
            where: None (all), a callable ``record -> bool`` (it gets a
                read-only view), or ``{field: value}`` where every field must
                equal its value (or satisfy it, when the value is callable).
            order_by: a field, ``"-field"`` for descending, a list of those, or a
                key function. Records lacking the field sort last.
            limit: at most this many records (an int >= 0).

        Returns:
            Copies of the matching records.

        Raises:
            UnknownTableError: no such table.
            InvalidQueryError: a `where`/`order_by`/`limit` of the wrong kind,
                one that raised, or values that cannot be compared.
        """
        return _tables(self._live()).query(table, where, order_by, limit)

    def update(self, table: str, key: Hashable, changes: Mapping[str, Any], *,
               timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Merge `changes` into the record under `key`; returns the new record.

        Raises:
            UnknownTableError: no such table.
            RecordNotFoundError: no record under `key`.
            InvalidRecordError: `changes` is not a mapping or changes the key field.
        """
        return self._write(lambda s: _tables(s).update(table, key, changes), timeout)

    def count(self, table: str, where: Where = None) -> int:
        """How many records of `table` match `where` (see `query`).

        Raises:
            UnknownTableError: no such table.
            InvalidQueryError: a bad `where`.
        """
        return _tables(self._live()).count(table, where)


class Table:
    """A view on one table of a cache; every method is the `Cache` method for that table."""

    __slots__ = ("_cache", "name")

    def __init__(self, cache: Cache, name: str) -> None:
        self._cache = cache
        self.name = name

    def __repr__(self) -> str:
        return f"Table({self._cache.name!r}, {self.name!r})"

    def insert(self, record: Mapping[str, Any], key: str | None = None) -> Hashable:
        return self._cache.insert(self.name, record, key)

    def get(self, key: Hashable) -> dict[str, Any] | None:
        return self._cache.get_record(self.name, key)

    def query(self, where: Where = None, order_by: OrderBy = None,
              limit: int | None = None) -> list[dict[str, Any]]:
        return self._cache.query(self.name, where, order_by, limit)

    def update(self, key: Hashable, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self._cache.update(self.name, key, changes)

    def delete(self, key: Hashable) -> bool:
        return self._cache.delete(self.name, key)

    def count(self, where: Where = None) -> int:
        return self._cache.count(self.name, where)
