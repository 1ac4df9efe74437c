"""`Cache`: the handle applications use; reads go straight to the published state."""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar, overload

from supervisors import ChildSpec, SupervisorRef, whereis
from supervisors.errors import ChildStartError
from zixir_actors._clock import Clock
from zixir_actors.cache._actor import (
    ACTOR_PREFIX,
    CACHES,
    CacheActor,
    current_state,
    default_data_dir,
    ensure_collector,
    live_names,
    runtime_data_dir,
)
from zixir_actors.cache._keys import memo_key, parse_size, signature_of
from zixir_actors.cache._options import (
    DEFAULT_SYNC_INTERVAL,
    DEFAULT_TIMEOUT,
    CacheStats,
    check_callable,
    check_clock,
    check_count,
    check_ratio,
    check_timeout,
    check_ttl,
)
from zixir_actors.cache._shared import DEFAULT_VISIBILITY
from zixir_actors.cache._state import _MISSING, CacheOptions, CacheState, Closed
from zixir_actors.cache._table_api import TableMethods
from zixir_actors.cache._warm import DEFAULT_WARM_CONCURRENCY, WarmProgress, WarmReport, run_warm
from zixir_actors.errors import ConfigError, NotStartedError, ZixirError, ZixirTimeoutError
from zixir_actors.observability import span

__all__ = ["Cache"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


_start_lock = threading.Lock()
_NOKEY: Any = object()


class Cache(TableMethods):
    """A named TTL/LRU cache with optional LMDB persistence, tables and warming.

    Example:
        >>> from supervisors import DynamicSupervisor
        >>> caches = DynamicSupervisor.start_link(name="zixir.caches")  # as start() does
        >>> llm = Cache.start("doc-llm", ttl=3600, max_entries=10_000)
        >>> llm.put("prompt-1", "answer")
        >>> llm.get("prompt-1")
        'answer'
        >>> llm.get_or_compute("prompt-2", lambda: "computed once")
        'computed once'
        >>> @llm.memoize(ttl=60)
        ... def embed(text: str) -> list[float]:
        ...     return [float(len(text))]
        >>> embed("hello"), embed("hello")
        ([5.0], [5.0])
        >>> llm.stats().hits
        2
        >>> caches.stop()

    A handle is cheap and holds no data: the cache's actor (``zixir.cache.<name>``
    under ``zixir.caches``) owns the entries and publishes them, so `get` reads
    them directly, without a message; writers serialize on the owner's lock
    and, for a persistent cache, commit to LMDB before they return. A handle
    keeps working across restarts of the actor.

    Durability of a persistent cache (``persist=True``): a `put` (or any
    write) returns only after its LMDB transaction committed. From then on it
    survives a crash of the cache actor and the death of the process (kill -9
    included): the data is in the OS page cache. Commits are not fsynced one
    by one: a group fsync runs at most `sync_interval` seconds (default 1.0)
    after a write, and when the cache stops. A power cut or kernel crash can
    lose the writes of that last interval (and, as LMDB documents for
    unsynced commits, may damage the environment); ``durable=True`` fsyncs
    every write before returning instead, at about 280 µs per write.
    """

    __slots__ = ("_name", "_state")

    def __init__(self, name: str, *, timeout: float | None = 0.0) -> None:
        """A handle on the running cache `name` (see also `Cache.lookup`).

        Raises:
            CacheNotFoundError: no cache of that name is running.
        """
        self._name = name
        self._state: CacheState = current_state(name, timeout=timeout)

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    def start(cls, name: str, ttl: float | None = None, max_entries: int | None = None,
              max_bytes: int | str | None = None, persist: bool = False, *,
              data_dir: str | Any | None = None, clock: Clock | None = None,
              refresh_ahead: float | None = None, loader: Callable[[Any], Any] | None = None,
              warm: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
              durable: bool = False, sync_interval: float = DEFAULT_SYNC_INTERVAL,
              visibility: float = DEFAULT_VISIBILITY,
              timeout: float | None = DEFAULT_TIMEOUT) -> Cache:
        """Start the cache `name` under ``zixir.caches``, or return it if it runs.

        Idempotent like a GenServer start: if the cache is already running
        (also when threads race to start it), its handle is returned and the
        options given here are ignored.

        Example:
            >>> from supervisors import DynamicSupervisor
            >>> caches = DynamicSupervisor.start_link(name="zixir.caches")
            >>> a = Cache.start("doc-start", ttl=60)
            >>> Cache.start("doc-start").name          # idempotent: the same cache
            'doc-start'
            >>> caches.stop()

        Args:
            name: the cache's name (its actor is ``zixir.cache.<name>``).
            ttl: default time to live of an entry in seconds (None: forever).
            max_entries: evict least recently used entries beyond this count.
            max_bytes: evict least recently used entries beyond this size: bytes
                or a size string (``"64MB"`` is 64 x 1024^2). Sizes are the
                encoded (pickled) size of the value.
            persist: mirror entries and tables in LMDB so they survive restarts.
                Its hit and miss counts are stored when it stops and continue
                in the next process (`zixir cache stats NAME`).
            data_dir: LMDB directory for ``persist=True``; default the runtime's
                (given to `child_spec`), else ``$ZIXIR_DATA_DIR``, else ``./.zixir``.
            clock: time source for TTLs (`zixir_actors.testing.FakeClock` in
                tests); expiry uses its wall time `clock.time()`, so persisted
                entries expire correctly in a later process.
            refresh_ahead: a fraction of the TTL, e.g. 0.1: a `get` in the last
                10% of an entry's life reloads it in the background with its
                loader (from `get_or_compute`, `memoize`, `warm(keys, loader)`
                or the `loader` argument), so hot keys never expire.
            loader: ``loader(key) -> value`` used by refresh-ahead for keys
                without a loader of their own, and by `warm(keys)`.
            warm: pairs (or keys, with `loader`) to load in the background once
                the cache started; see `warm_async`.
            durable: fsync every write before it returns (see class docs).
            sync_interval: seconds between a write and its group fsync.
            visibility: a persistent cache shared by several processes: a
                confirmed write in one is seen by `get` in the others within
                this many seconds (default 0.1; a miss reads through to LMDB).
            timeout: seconds to wait for the actor to start.

        Raises:
            NotStartedError: the ``zixir.caches`` supervisor is not running
                (call `zixir_actors.start()`, or start a DynamicSupervisor
                named ``zixir.caches``).
            ConfigError: a bad argument (named in the error).
            StoreError: ``persist=True`` and the LMDB environment cannot be opened.
            ZixirError: the actor failed to start (`ChildStartError` with the cause).
        """
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigError("name", name, "a cache name must be a non-empty string")
        options = CacheOptions(
            name=name, ttl=check_ttl(ttl),
            max_entries=check_count(max_entries, "max_entries"),
            max_bytes=parse_size(max_bytes, "max_bytes"), persist=bool(persist),
            data_dir=(os.fspath(data_dir) if data_dir is not None else default_data_dir())
            if persist else runtime_data_dir(),
            clock=check_clock(clock), refresh_ahead=check_ratio(refresh_ahead),
            loader=check_callable(loader, "loader"), durable=bool(durable),
            sync_interval=check_ttl(sync_interval, "sync_interval") or DEFAULT_SYNC_INTERVAL,
            visibility=check_ttl(visibility, "visibility") or DEFAULT_VISIBILITY)
        timeout = check_timeout(timeout)
        with _start_lock:
            if whereis(ACTOR_PREFIX + name) is not None:
                return cls(name, timeout=timeout)
            sup = whereis(CACHES)
            if sup is None:
                raise NotStartedError(CACHES)
            spec = ChildSpec(name, CacheActor, kwargs={"options": options},
                             restart="permanent", name=ACTOR_PREFIX + name)
            try:
                SupervisorRef(sup).start_child(spec, timeout=timeout)
            except ChildStartError as exc:
                if isinstance(exc.cause, ZixirError):
                    raise exc.cause from exc
                raise
            ensure_collector()
            handle = cls(name, timeout=timeout)
        if warm is not None:
            handle.warm_async(warm, loader)
        return handle

    @classmethod
    def lookup(cls, name: str, *, timeout: float | None = 0.0) -> Cache:
        """The running cache `name`, waiting up to `timeout` if it is restarting.

        Raises:
            CacheNotFoundError: no cache of that name is running.
        """
        return cls(name, timeout=timeout)

    @staticmethod
    def names() -> list[str]:
        """Names of the running caches, sorted."""
        return live_names()

    def stop(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Stop the cache: flush it to disk (persistent caches) and end its actor.

        A persistent cache's data stays in LMDB for the next `Cache.start`;
        a memory-only cache's entries are gone. Stopping a stopped cache does
        nothing.
        """
        actor = whereis(ACTOR_PREFIX + self._name)
        if actor is None:
            return
        sup = whereis(CACHES)
        if sup is not None:
            try:
                SupervisorRef(sup).terminate_child(actor, timeout=timeout)
                return
            except ZixirError:
                pass
        actor.stop(timeout=timeout)

    @property
    def name(self) -> str:
        """The cache's name."""
        return self._name

    def __repr__(self) -> str:
        return f"Cache({self._name!r})"

    def _live(self, deadline: float | None = -1.0) -> CacheState:
        """The open state, waiting for a restart until `deadline` (monotonic; None:
        forever; the default: `DEFAULT_TIMEOUT` from now)."""
        state = self._state
        if state.closed:
            if deadline is None:
                timeout = None
            elif deadline < 0:
                timeout = DEFAULT_TIMEOUT
            else:
                timeout = max(0.0, deadline - time.monotonic())
            state = self._state = current_state(self._name, timeout=timeout)
        return state

    def _write(self, op: Callable[[CacheState], T], timeout: float | None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self._live(deadline)
            try:
                return op(state)
            except Closed:
                continue

    # -- key/value -------------------------------------------------------------

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The live value of `key`, or `default` (an expired entry is never returned).

        Raises:
            InvalidKeyError: `key` is unhashable.
        """
        state = self._state
        if state.closed:
            state = self._live()
        return state.get(key, default)

    def get_many(self, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """The live entries among `keys`, as a dict (missing keys are left out)."""
        state = self._live()
        found: dict[Hashable, Any] = {}
        for key in keys:
            value = state.get(key, _MISSING)
            if value is not _MISSING:
                found[key] = value
        return found

    def contains(self, key: Hashable) -> bool:
        """Whether `key` has a live entry (no stats, no LRU update)."""
        return self._live().peek(key) is not _MISSING

    __contains__ = contains

    def put(self, key: Hashable, value: Any, ttl: float | None = None, *,
            timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Store `value` under `key` for `ttl` seconds (default the cache's `ttl`).

        Returns once the entry is visible to every reader and, for a
        persistent cache, committed to LMDB (see the class docs for durability).

        Raises:
            ConfigError: a bad `ttl`.
            InvalidKeyError: `key` is unhashable or (persistent) not encodable.
            UnserializableError: a persistent cache cannot serialize `value`.
            EntryTooLargeError: the entry alone exceeds `max_bytes`.
            ZixirTimeoutError: the cache was restarting for longer than `timeout`.
            StoreError: LMDB refused the write.
        """
        if ttl is not None:
            ttl = check_ttl(ttl)
        state = self._state
        if not state.closed:
            try:
                state.put(key, value, ttl)
                return
            except Closed:
                pass
        self._write(lambda s: s.put(key, value, ttl), timeout)

    def delete(self, key_or_table: Any, key: Any = _NOKEY, *,
               timeout: float | None = DEFAULT_TIMEOUT) -> bool:
        """``delete(key)`` removes a cache entry; ``delete(table, key)`` a table record.

        Returns whether something live was removed.

        Raises:
            UnknownTableError: ``delete(table, key)`` on a table that does not exist.
        """
        if key is _NOKEY:
            return self._write(lambda s: s.delete(key_or_table), timeout)
        return self._write(lambda s: s.tables.delete(key_or_table, key), timeout)  # type: ignore[union-attr]

    def clear(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Remove every key/value entry (tables are kept); returns how many were held."""
        return self._write(lambda s: s.clear(), timeout)

    def get_or_compute(self, key: Hashable, fn: Callable[[], T], ttl: float | None = None, *,
                       timeout: float | None = None) -> T:
        """The value of `key`, computing and storing ``fn()`` if it is missing.

        Concurrent callers for the same missing key compute once: the first
        runs `fn` in its own thread, the others wait for its result (or its
        exception, which every waiter receives; nothing is stored then).

        Args:
            timeout: how long a waiting caller waits for the computing one
                (None: as long as it takes).

        Raises:
            ZixirTimeoutError: the computation of another caller took longer than `timeout`.
            Exception: whatever `fn` raised.
        """
        ttl = check_ttl(ttl)
        state = self._live()
        value = state.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        with state.inflight_lock:
            future = state.inflight.get(key)
            owner = future is None
            if future is None:
                future = state.inflight[key] = Future()
        if not owner:
            try:
                return future.result(timeout)  # type: ignore[no-any-return]
            except FutureTimeout:
                raise ZixirTimeoutError(f"get_or_compute({key!r}) waiting for another caller",
                                        timeout) from None
        try:
            value = state.peek(key)
            if value is _MISSING:
                with span("cache.compute", cache=self._name):
                    value = fn()
                self.put(key, value, ttl)
                self._live().register_loader(key, lambda _key: fn())
            future.set_result(value)
            return value  # type: ignore[no-any-return]
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with state.inflight_lock:
                state.inflight.pop(key, None)

    @overload
    def memoize(self, fn: F, *, ttl: float | None = None) -> F: ...

    @overload
    def memoize(self, fn: None = None, *, ttl: float | None = None) -> Callable[[F], F]: ...

    def memoize(self, fn: F | None = None, *, ttl: float | None = None) -> F | Callable[[F], F]:
        """Decorator: cache a function's results by its arguments.

        Example:
            >>> from supervisors import DynamicSupervisor
            >>> caches = DynamicSupervisor.start_link(name="zixir.caches")
            >>> c = Cache.start("doc-memo")
            >>> @c.memoize(ttl=60)
            ... def square(x: int) -> int:
            ...     return x * x
            >>> square(4), square(x=4)        # one computation, one cache entry
            (16, 16)
            >>> caches.stop()

        The key hashes (SHA-256) a canonical encoding of the function's module
        and qualified name and its arguments bound to its signature (defaults
        applied), so it is the same in every process: a persistent cache
        serves memoized results across restarts. Concurrent calls with the
        same arguments compute once. `wrapper.cache_key(*args, **kwargs)` gives
        the key of a call.

        Raises:
            ConfigError: `fn` is a coroutine function (not supported) or `ttl` is bad.
            InvalidKeyError: (at call time) an argument has no stable encoding.
        """
        ttl = check_ttl(ttl)

        def decorate(f: F) -> F:
            if inspect.iscoroutinefunction(f):
                raise ConfigError("fn", f, "memoize supports plain functions, not coroutines")
            qualified = f"{f.__module__}.{f.__qualname__}"
            sig = signature_of(f)

            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                key = memo_key(qualified, sig, args, kwargs)
                return self.get_or_compute(key, lambda: f(*args, **kwargs), ttl)

            wrapper.cache_key = (  # type: ignore[attr-defined]
                lambda *args, **kwargs: memo_key(qualified, sig, args, kwargs))
            wrapper.cache = self  # type: ignore[attr-defined]
            return wrapper  # type: ignore[return-value]

        return decorate(fn) if fn is not None else decorate

    # -- warming ---------------------------------------------------------------

    def warm(self, source: Iterable[Any] | Callable[[], Iterable[Any]],
             loader: Callable[[Any], Any] | None = None, *,
             concurrency: int = DEFAULT_WARM_CONCURRENCY, rate: float | None = None,
             ttl: float | None = None, progress: Callable[[WarmProgress], object] | None = None,
             timeout: float | None = None) -> WarmReport:
        """Fill the cache and return a report; failures are counted, never raised.

        Example:
            >>> from supervisors import DynamicSupervisor
            >>> caches = DynamicSupervisor.start_link(name="zixir.caches")
            >>> c = Cache.start("doc-warm")
            >>> c.warm([("a", 1), ("b", 2)]).loaded
            2
            >>> report = c.warm(["x", "y", "boom"], loader=lambda k: 1 / (k != "boom"))
            >>> report.loaded, report.errors
            (2, 1)
            >>> caches.stop()

        Args:
            source: ``(key, value)`` pairs; or keys, when `loader` is given; or
                a callable returning pairs. Read lazily.
            loader: ``loader(key) -> value``; also kept for refresh-ahead.
            concurrency: worker threads loading at once (default 4).
            rate: at most this many items started per second (paced with the
                cache's clock), None for no limit.
            ttl: TTL of the warmed entries (default the cache's).
            progress: called with a `WarmProgress` after each item.
            timeout: stop starting new items after this many seconds; items in
                flight finish and the report says ``cancelled=True``.

        Raises:
            ConfigError: a bad `concurrency`, `rate`, `ttl` or a source that is
                not iterable.
            CacheNotFoundError: the cache is not running.
        """
        ttl = check_ttl(ttl)
        state = self._live()
        with span("cache.warm", cache=self._name):
            return run_warm(state, source, loader, concurrency=concurrency, rate=rate, ttl=ttl,
                            progress=progress, timeout=check_timeout(timeout))

    def warm_async(self, source: Iterable[Any] | Callable[[], Iterable[Any]],
                   loader: Callable[[Any], Any] | None = None, **options: Any
                   ) -> Future[WarmReport]:
        """`warm` in the background; returns a future of its report.

        A warm-up in flight is cancelled (report ``cancelled=True``) when the
        cache stops or its actor restarts.
        """
        state = self._live()
        context = contextvars.copy_context()   # the warm span's parent is the caller's span

        def job() -> WarmReport:
            return self.warm(source, loader, **options)

        return state.background().submit(context.run, job)

    # -- introspection -----------------------------------------------------------

    def stats(self) -> CacheStats:
        """Counters and sizes, after reclaiming expired entries."""
        state = self._live()
        state.sweep()
        return CacheStats(
            name=self._name, hits=state.hits, misses=state.misses, evictions=state.evictions,
            expirations=state.expirations, size=len(state.data), bytes=state.bytes,
            refreshes=state.refreshes, refresh_errors=state.refresh_errors,
            warm_loaded=state.warm_loaded, warm_errors=state.warm_errors,
            persist=state.persist,
            tables=tuple(state.tables.names()) if state.tables is not None else ())

    def purge(self) -> int:
        """Reclaim every expired entry now; returns how many. (Writes and a
        background timer also reclaim them, a bounded number at a time.)"""
        state = self._live()
        total = 0
        while True:
            n = state.sweep()
            total += n
            if n == 0:
                return total

    def keys(self) -> list[Hashable]:
        """The keys with live entries, least recently used first."""
        state = self._live()
        now = state.now()
        with state.lock:
            items = list(state.data.items())
        return [k for k, e in items if e[1] > now]

    def __len__(self) -> int:
        return len(self.keys())
