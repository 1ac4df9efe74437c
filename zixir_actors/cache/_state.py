"""The data of one cache incarnation: what readers read and writers update.

Readers never lock and never message the actor: a `get` is one dict lookup,
an expiry check and, for bounded caches, an append to a lossy access log (the
way ETS serves reads beside its owner process). Writers take the state's
lock, commit to LMDB first when the cache persists, then publish the new
entry in the dict. The actor that owns the state creates it, closes it and
hands it to its next incarnation.

An entry is a tuple ``(value, expires, refresh_at, size, ttl)``; ``expires``
is wall-clock time (`Clock.time()`) so a new process can judge expiry of
persisted entries, and `INF` when the entry never expires.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import pickle
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zixir_actors import _codec
from zixir_actors._clock import Clock
from zixir_actors._lmdb import SharedEnv, open_env, release
from zixir_actors.cache._keys import key_bytes
from zixir_actors.cache._shared import (
    CLEAR,
    DEFAULT_VISIBILITY,
    DELETE,
    PUT,
    Journal,
    follow,
    unfollow,
)
from zixir_actors.errors import CorruptBlobError, EntryTooLargeError, InvalidKeyError
from zixir_actors.observability import logger, span

if TYPE_CHECKING:
    from zixir_actors.cache._tables import Tables

__all__ = ["INF", "STATS_DB", "CacheOptions", "CacheState", "Closed"]

INF = float("inf")
ACCESS_LOG_SIZE = 65_536
"""Reads recorded between two writes for LRU order; older records are dropped."""
REAP_PER_WRITE = 32
"""Expired entries reclaimed by one write, at most (amortized reclamation)."""
REAP_PER_TICK = 10_000
"""Expired entries reclaimed by one maintenance tick, at most."""
MAX_TICK_DELAY = 60.0
BACKGROUND_WORKERS = 2
STATS_DB = "cache-stats"
"""LMDB sub-database of every cache's record: name -> persistence, size and counters."""

Loader = Callable[[Any], Any]
_MISSING: Any = object()
_NONE: list[Any] = []


class Closed(Exception):  # internal signal, never escapes the handle
    """The state was closed by its actor; the caller retries on the next incarnation."""


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """Everything a cache actor needs to build its state (validated by `Cache.start`)."""

    name: str
    ttl: float | None
    max_entries: int | None
    max_bytes: int | None
    persist: bool
    data_dir: str | None
    clock: Clock
    refresh_ahead: float | None
    loader: Loader | None
    durable: bool
    sync_interval: float
    visibility: float = DEFAULT_VISIBILITY


class CacheState:
    """Entries, expiry heap, LRU order, counters and (optionally) the LMDB mirror."""

    def __init__(self, options: CacheOptions, predecessor: CacheState | None = None) -> None:
        self.options = options
        self.name = options.name
        self.clock = options.clock
        self.now = options.clock.time
        self.lock = threading.Lock()
        self.closed = False
        self.crashed = False
        self.tables: Tables | None = None
        self.persist = options.persist
        self.default_ttl = options.ttl
        self.max_entries = options.max_entries
        self.max_bytes = options.max_bytes
        self.track = options.max_entries is not None or options.max_bytes is not None
        self.cap_entries = options.max_entries if options.max_entries is not None else sys.maxsize
        self.cap_bytes = options.max_bytes if options.max_bytes is not None else sys.maxsize
        self.ratio = options.refresh_ahead
        self.default_loader = options.loader
        self.data: OrderedDict[Hashable, tuple[Any, float, float, int, float | None]] = \
            OrderedDict()
        self.heap: list[tuple[float, int, Hashable]] = []
        self.seq = itertools.count()
        self.access: deque[Hashable] = deque(maxlen=ACCESS_LOG_SIZE)
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.expirations = 0
        self.refreshes = self.refresh_errors = 0
        self.loaders: dict[Hashable, Loader] = {}
        self.refreshing: set[Hashable] = set()
        self.inflight: dict[Hashable, Future[Any]] = {}
        self.inflight_lock = threading.Lock()
        self.warm_loaded = self.warm_errors = 0
        # Hits and misses already added to the stored counters (see `_save_record`).
        self._saved_hits = self._saved_misses = 0
        self._dirty = False
        self._timer: threading.Timer | None = None   # armed and not yet fired
        self._last_timer: threading.Timer | None = None   # joined by close()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.env: SharedEnv | None = None
        self.db: Any = None
        self.journal: Journal | None = None
        if predecessor is not None:
            self._inherit(predecessor)
        if options.persist:
            if options.data_dir is None:
                raise ValueError("a persistent cache needs a data_dir")
            self.env = open_env(options.data_dir)
            try:
                self.db = self.env.db(f"cache:{self.name}")
                self.journal = Journal(self, self.env.db(f"cache-journal:{self.name}"))
                self._load()
                if predecessor is None:
                    self._load_counters()
            except BaseException:
                release(self.env)
                self.env = None
                raise
            follow(self.journal)
        elif predecessor is not None:
            # Like an ETS heir: a memory-only cache keeps its entries across
            # a restart of its actor, so a crash loses no confirmed write.
            self.data = predecessor.data
            self.heap = predecessor.heap
            self.seq = predecessor.seq   # heap items never tie, so keys are never compared
            self.bytes = predecessor.bytes
            self.loaders = predecessor.loaders

    # -- reads (any thread, no lock) -----------------------------------------

    def get(self, key: Hashable, default: Any = None) -> Any:
        try:
            e = self.data.get(key)
        except TypeError:
            raise InvalidKeyError(key, "unhashable") from None
        if e is None:
            if self.persist and self.env is not None:
                e = self._read_through(key)
            if e is None:
                self.misses += 1
                return default
        if e[1] != INF:
            now = self.now()
            if now >= e[1]:
                self.misses += 1
                return default
            if now >= e[2]:
                self._refresh(key, e)
        if self.track:
            self.access.append(key)
        self.hits += 1
        return e[0]

    def peek(self, key: Hashable) -> Any:
        """The live value of `key` or `_MISSING`, without touching stats or LRU order."""
        try:
            e = self.data.get(key)
        except TypeError:
            raise InvalidKeyError(key, "unhashable") from None
        if e is None or (e[1] != INF and self.now() >= e[1]):
            return _MISSING
        return e[0]

    # -- writes (any thread, under the lock) ---------------------------------

    def put(self, key: Hashable, value: Any, ttl: float | None) -> None:
        if ttl is None:
            ttl = self.default_ttl
        now = self.now()
        if ttl is None:
            expires = refresh_at = INF
        else:
            expires = now + ttl
            refresh_at = expires - ttl * self.ratio if self.ratio else INF
        kb = blob = None
        if self.persist:
            kb = key_bytes(key)
            blob = _codec.encode((key, value, expires, ttl))
            size = len(blob)
        else:
            size = _memory_size(value, exact=self.max_bytes is not None)
        if size > self.cap_bytes:
            raise EntryTooLargeError(self.name, key, size, self.cap_bytes)
        entry = (value, expires, refresh_at, size, ttl)
        with self.lock:
            if self.closed:
                raise Closed
            data = self.data
            heap = self.heap  # read under the lock: _compact_heap replaces the list
            try:
                old = data.get(key)
            except TypeError:
                raise InvalidKeyError(key, "unhashable") from None
            if self.access:
                self._drain_access()
            expired = self._pop_expired(now, REAP_PER_WRITE, exclude=key) \
                if heap and heap[0][0] <= now else _NONE
            victims = _NONE
            if self.track and (expired or len(data) + (old is None) > self.cap_entries
                               or self.bytes + size - (old[3] if old else 0) > self.cap_bytes):
                victims = self._plan_evictions(key, size, expired)
            if kb is not None:
                self._commit_put(kb, blob, expired, victims, key)
            data[key] = entry
            if old is not None:
                self.bytes += size - old[3]
                data.move_to_end(key)
            else:
                self.bytes += size
            if expires != INF:
                heapq.heappush(heap, (expires, next(self.seq), key))
                if len(heap) > 2 * len(data) + 1024:
                    self._compact_heap()
            for k in expired:
                self._forget(k)
                self.expirations += 1
            for k in victims:
                self._forget(k)
                self.evictions += 1
            if kb is not None or self._timer is None:
                self._after_write()

    def _commit_put(self, kb: bytes, blob: bytes | None, expired: list[Hashable],
                    victims: list[Hashable], key: Hashable) -> None:
        dels = [key_bytes(k) for k in itertools.chain(expired, victims)]
        db = self.db
        journal = self.journal

        def write(txn: Any) -> None:
            txn.put(kb, blob, db=db)
            for d in dels:
                txn.delete(d, db=db)
            if journal is not None:
                journal.record(txn, PUT, key)

        try:
            self.env.write(write, durable=self.options.durable)  # type: ignore[union-attr]
        except BaseException:
            for k in expired:
                e = self.data[k]
                heapq.heappush(self.heap, (e[1], next(self.seq), k))
            raise

    def delete(self, key: Hashable) -> bool:
        kb = key_bytes(key) if self.persist else None
        with self.lock:
            if self.closed:
                raise Closed
            try:
                e = self.data.get(key)
            except TypeError:
                raise InvalidKeyError(key, "unhashable") from None
            if e is None:
                return False
            if self.persist:
                db, journal = self.db, self.journal

                def write(txn: Any) -> None:
                    txn.delete(kb, db=db)
                    if journal is not None:
                        journal.record(txn, DELETE, key)

                self.env.write(write, durable=self.options.durable)  # type: ignore[union-attr]
            self._forget(key)
            self._after_write()
            return e[1] == INF or self.now() < e[1]

    def clear(self) -> int:
        with self.lock:
            if self.closed:
                raise Closed
            if self.persist:
                db, journal = self.db, self.journal

                def drop(txn: Any) -> None:
                    txn.drop(db, delete=False)
                    if journal is not None:
                        journal.record(txn, CLEAR)

                self.env.write(drop, durable=self.options.durable)  # type: ignore[union-attr]
            count = len(self.data)
            self.data.clear()
            self.heap.clear()
            self.access.clear()
            self.loaders.clear()
            self.bytes = 0
            self._after_write()
            return count

    def register_loader(self, key: Hashable, loader: Loader) -> None:
        """Remember how to reload `key`, for refresh-ahead (only kept when it is on)."""
        if self.ratio is not None and loader is not self.default_loader:
            self.loaders[key] = loader

    def sweep(self, limit: int = REAP_PER_TICK) -> int:
        """Reclaim up to `limit` expired entries; returns how many."""
        with self.lock:
            if self.closed:
                return 0
            expired = self._pop_expired(self.now(), limit, exclude=_MISSING)
            if expired and self.persist:
                dels = [key_bytes(k) for k in expired]
                db = self.db

                def write(txn: Any) -> None:
                    for d in dels:
                        txn.delete(d, db=db)

                self.env.write(write)  # type: ignore[union-attr]
                self._after_write()
            for k in expired:
                self._forget(k)
                self.expirations += 1
            if len(self.heap) > 2 * len(self.data) + 1024:
                self._compact_heap()
            return len(expired)

    # -- other processes' writes ---------------------------------------------

    def _read_through(self, key: Hashable) -> tuple[Any, float, float, int, float | None] | None:
        """A memory miss of a persistent cache: the entry another process may have stored."""
        env = self.env
        try:
            kb = key_bytes(key)
            with env.read() as txn:  # type: ignore[union-attr]
                blob = txn.get(kb, db=self.db)
        except Exception:  # a closed or failing store: a plain miss
            return None
        if blob is None:
            return None
        self.apply_remote(PUT, key, blob)
        return self.data.get(key)

    def apply_remote(self, op: bytes, key: Hashable, blob: bytes | None) -> None:
        """Apply a write another process committed (see `zixir_actors.cache._shared`)."""
        with self.lock:
            if self.closed:
                return
            if op == CLEAR:
                self.data.clear()
                self.heap.clear()
                self.access.clear()
                self.bytes = 0
                return
            if op == DELETE or blob is None:
                self._forget(key)
                return
            try:
                _, value, expires, ttl = _codec.decode(blob, key=key_bytes(key))
            except (CorruptBlobError, ValueError, TypeError):
                return
            if expires <= self.now():
                self._forget(key)
                return
            refresh_at = expires - ttl * self.ratio if self.ratio and ttl else INF
            old = self.data.get(key)
            self.data[key] = (value, expires, refresh_at, len(blob), ttl)
            self.bytes += len(blob) - (old[3] if old else 0)
            if expires != INF:
                heapq.heappush(self.heap, (expires, next(self.seq), key))
            if self.track and (len(self.data) > self.cap_entries or self.bytes > self.cap_bytes):
                for victim in self._plan_evictions(_MISSING, 0, []):
                    self._forget(victim)
                    self.evictions += 1

    # -- internals -----------------------------------------------------------

    def _compact_heap(self) -> None:
        # Overwrites leave stale items behind; rebuilding once the heap is
        # twice the live size keeps it O(entries) at O(1) amortized cost.
        self.heap = [(e[1], next(self.seq), k) for k, e in self.data.items() if e[1] != INF]
        heapq.heapify(self.heap)

    def _drain_access(self) -> None:
        log = self.access
        move = self.data.move_to_end
        while log:
            try:  # noqa: SIM105 - contextlib.suppress costs more on this loop
                move(log.popleft())
            except KeyError:
                pass

    def _pop_expired(self, now: float, limit: int, *, exclude: Any) -> list[Hashable]:
        heap, data = self.heap, self.data
        out: list[Hashable] = []
        seen: set[Hashable] = set()
        while heap and heap[0][0] <= now and len(out) < limit:
            exp, _, k = heapq.heappop(heap)
            e = data.get(k)
            # A stale heap item: the key was overwritten, deleted or evicted
            # (or pushed twice with the same expiry).
            if e is None or e[1] != exp or k in seen or k == exclude:
                continue
            seen.add(k)
            out.append(k)
        return out

    def _plan_evictions(self, key: Hashable, size: int, expired: list[Hashable]) -> list[Hashable]:
        if not self.track:
            return []
        data = self.data
        old = data.get(key)
        new = 0 if old is not None or key is _MISSING else 1
        count = len(data) - len(expired) + new
        total = self.bytes + size - (old[3] if old is not None else 0) \
            - sum(data[k][3] for k in expired)
        max_entries = self.cap_entries
        max_bytes = self.cap_bytes
        victims: list[Hashable] = []
        if count <= max_entries and total <= max_bytes:
            return victims
        skip = set(expired)
        skip.add(key)
        for k in data:
            if count <= max_entries and total <= max_bytes:
                break
            if k in skip:
                continue
            victims.append(k)
            count -= 1
            total -= data[k][3]
        return victims

    def _forget(self, key: Hashable) -> None:
        e = self.data.pop(key, None)
        if e is not None:
            self.bytes -= e[3]
        self.loaders.pop(key, None)

    def _after_write(self) -> None:
        if self.persist and not self.options.durable:
            self._dirty = True
        if self._timer is None and (self._dirty or self.heap):
            self._arm()

    def _arm(self) -> None:
        if self._dirty:
            delay = self.options.sync_interval
        else:
            delay = min(max(self.heap[0][0] - self.now(), self.options.sync_interval),
                        MAX_TICK_DELAY)
        timer = threading.Timer(delay, self._tick)
        timer.name = f"zixir-cache-{self.name}-tick"
        timer.daemon = True
        self._timer = self._last_timer = timer
        timer.start()

    def _tick(self) -> None:
        """Group fsync and expiry reclamation, on a timer armed by writes."""
        with self.lock:
            if self.closed:
                return
            self._timer = None
            dirty, self._dirty = self._dirty, False
        try:
            if dirty and self.env is not None:
                self.env.sync()
            self.sweep()
        except Exception:  # maintenance must not kill the timer chain
            logger.opt(exception=True).warning("cache {} maintenance failed", self.name)
            with self.lock:
                self._dirty = self._dirty or dirty
        with self.lock:
            if not self.closed and self._timer is None and (self._dirty or self.heap):
                self._arm()

    def _refresh(self, key: Hashable, entry: tuple[Any, float, float, int, float | None]) -> None:
        loader = self.loaders.get(key, self.default_loader)
        if loader is None or key in self.refreshing or self.closed:
            return
        self.refreshing.add(key)
        try:
            context = contextvars.copy_context()   # the reader's span parents the refresh
            self.background().submit(context.run, self._run_refresh, key, loader, entry)
        except RuntimeError:
            self.refreshing.discard(key)

    def _run_refresh(self, key: Hashable, loader: Loader,
                     entry: tuple[Any, float, float, int, float | None]) -> None:
        try:
            with span("cache.refresh", cache=self.name):
                value = loader(key)
            self.put(key, value, entry[4])
            self.refreshes += 1
        except Closed:
            pass
        except Exception as exc:  # the old value stays until it expires
            self.refresh_errors += 1
            logger.bind(cache=self.name).warning("refresh of {!r} failed: {!r}", key, exc)
            # One attempt per entry: a failing upstream is not hammered by every read.
            with self.lock:
                if self.data.get(key) is entry:
                    self.data[key] = (entry[0], entry[1], INF, entry[3], entry[4])
        finally:
            self.refreshing.discard(key)

    def background(self) -> ThreadPoolExecutor:
        """The executor for refresh-ahead and background warming, created on first use."""
        with self._pool_lock:
            if self.closed:
                raise RuntimeError("cache state is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(BACKGROUND_WORKERS,
                                                thread_name_prefix=f"zixir-cache-{self.name}")
            return self._pool

    def _inherit(self, old: CacheState) -> None:
        self.hits, self.misses = old.hits, old.misses
        self.evictions, self.expirations = old.evictions, old.expirations
        self.refreshes, self.refresh_errors = old.refreshes, old.refresh_errors
        self.warm_loaded, self.warm_errors = old.warm_loaded, old.warm_errors
        self._saved_hits, self._saved_misses = old._saved_hits, old._saved_misses

    def _load_counters(self) -> None:
        """Continue the hit and miss counts that earlier processes stored."""
        assert self.env is not None
        db = self.env.db(STATS_DB)
        with self.env.read() as txn:
            blob = txn.get(self.name.encode(), db=db)
        if blob is None:
            return
        try:
            stored = _codec.decode(blob, key=self.name.encode())
        except (CorruptBlobError, ValueError, TypeError) as exc:
            logger.bind(cache=self.name).warning("ignoring unreadable cache counters: {}", exc)
            return
        self.hits += int(stored.get("hits", 0))
        self.misses += int(stored.get("misses", 0))
        self._saved_hits, self._saved_misses = self.hits, self.misses

    def _save_record(self, env: SharedEnv) -> None:
        """Store this cache's record for `zixir cache list/stats`.

        A persistent cache adds the hits and misses counted since the last
        save to the stored ones, so the counts of several processes (and of
        processes one after another) add up; a memory-only cache records its
        own counts.
        """
        hits, misses = self.hits, self.misses
        db = env.db(STATS_DB)
        key = self.name.encode()
        persist = self.persist

        def write(txn: Any) -> None:
            stored: dict[str, Any] = {}
            blob = txn.get(key, db=db)
            if blob is not None and persist:
                with contextlib.suppress(CorruptBlobError, ValueError, TypeError):
                    stored = dict(_codec.decode(blob, key=key))
            record = {
                "persistent": persist, "entries": len(self.data), "bytes": self.bytes,
                "hits": int(stored.get("hits", 0)) + hits - self._saved_hits if persist else hits,
                "misses": int(stored.get("misses", 0)) + misses - self._saved_misses
                if persist else misses,
                "updated_at": self.clock.time(),
            }
            txn.put(key, _codec.encode(record), db=db)

        env.write(write)
        self._saved_hits, self._saved_misses = hits, misses

    def _load(self) -> None:
        now = self.now()
        live: list[tuple[float, Hashable, tuple[Any, float, float, int, float | None]]] = []
        stale: list[bytes] = []
        assert self.env is not None
        with self.env.read() as txn:
            for kb, blob in txn.cursor(db=self.db):
                try:
                    key, value, expires, ttl = _codec.decode(blob, key=kb)
                except (CorruptBlobError, ValueError, TypeError) as exc:
                    # Kept on disk: a process that can import its classes may read it.
                    logger.bind(cache=self.name).warning("skipping unreadable entry: {}", exc)
                    continue
                if expires <= now:
                    stale.append(kb)
                    self.expirations += 1
                    continue
                refresh_at = expires - ttl * self.ratio if self.ratio and ttl else INF
                live.append((expires, key, (value, expires, refresh_at, len(blob), ttl)))
        # Entries closest to expiry count as least recently used.
        live.sort(key=lambda item: item[0])
        for expires, key, entry in live:
            self.data[key] = entry
            self.bytes += entry[3]
            if expires != INF:
                self.heap.append((expires, next(self.seq), key))
        heapq.heapify(self.heap)
        victims = self._plan_evictions(_MISSING, 0, []) if self.track else []
        for k in victims:
            stale.append(key_bytes(k))
            self._forget(k)
            self.evictions += 1
        if stale:
            db = self.db

            def write(txn: Any) -> None:
                for kb in stale:
                    txn.delete(kb, db=db)

            self.env.write(write)
            self._dirty = True
        if self._dirty or self.heap:
            self._arm()

    def close(self, *, timeout: float | None = 5.0) -> None:
        """Stop background work, flush to disk and release LMDB. Idempotent."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            timer, self._timer = self._last_timer, None
        if self.journal is not None:
            unfollow(self.journal)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join(timeout)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if self.env is not None:
            env, self.env = self.env, None
            try:
                self._save_record_logged(env)
                env.sync()
            finally:
                release(env)
        elif self.options.data_dir is not None:
            # A memory-only cache under a runtime: recorded in the runtime's directory.
            env = open_env(self.options.data_dir)
            try:
                self._save_record_logged(env)
            finally:
                release(env)

    def _save_record_logged(self, env: SharedEnv) -> None:
        try:
            self._save_record(env)
        except Exception as exc:  # the entries are safe; only the counters are lost
            logger.bind(cache=self.name).warning("cannot store the cache's counters: {}", exc)


def _memory_size(value: Any, *, exact: bool) -> int:
    if exact:
        try:
            return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # unpicklable values get a shallow estimate
            pass
    return sys.getsizeof(value)
