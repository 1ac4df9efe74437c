"""TTL/LRU cache actors with LMDB persistence, tables, warming and memoize.

Example:
    >>> from supervisors import DynamicSupervisor
    >>> from zixir_actors.cache import Cache
    >>> caches = DynamicSupervisor.start_link(name="zixir.caches")  # zixir_actors.start() does this
    >>> answers = Cache.start("doc-answers", ttl=3600, max_entries=1000)
    >>> answers.get_or_compute("What is 6 x 7?", lambda: "42")
    '42'
    >>> answers.get("What is 6 x 7?")
    '42'
    >>> caches.stop()

How it works. Each cache is a `CacheActor` (``zixir.cache.<name>``) under the
``zixir.caches`` DynamicSupervisor. The actor owns the cache's data and
publishes it; like an ETS table beside its owner process, readers read the
published dict directly (a `get` costs a dict lookup and an expiry check, no
message), and writers serialize on the owner's lock in their own thread, so a
write costs no actor round-trip either. The actor builds the data on start
(loading LMDB), closes it on stop or crash, and its next incarnation takes
over: a handle keeps working across restarts, and writers caught by a
restart retry on the new incarnation.

Expiry: every entry has its own TTL, measured on the injectable clock's wall
time (`Clock.time()`) so persisted entries expire correctly in a later
process. Expired entries are never served; they are reclaimed from a heap of
expiry times, a bounded number per write and by a background timer, never by
a full scan. LRU eviction enforces `max_entries` and `max_bytes`; reads are
recorded in a lossy access log that the writer drains, so the order is exact
unless more than 65,536 reads happen between two writes.

Persistence (``persist=True``): entries live in the LMDB sub-database
``cache:<name>`` and tables in ``cache-tables:<name>`` of the runtime's one
shared environment (`zixir_actors._lmdb.open_env(data_dir)`), blobs encoded by
`zixir_actors._codec` (pickle, dill fallback). A restarted actor or a new
process loads every unexpired entry and deletes those that expired while it
was down. Durability of a confirmed write: committed to LMDB before the call
returns, so it survives an actor crash and the death of the process (kill -9);
fsynced in groups at most `sync_interval` (1 s) later, so a power cut or
kernel crash can lose the last interval; ``durable=True`` fsyncs every write.

Where things are found: `Cache.start` finds the supervisor by its registered
name ``zixir.caches`` (`supervisors.whereis`) and raises `NotStartedError`
without it. A persistent cache's data directory is `data_dir=` if given, else
the one passed to `child_spec(data_dir=...)` by the runtime, else
``$ZIXIR_DATA_DIR``, else ``./.zixir``.

Metrics: ``zixir_cache_{hits,misses,evictions,expirations,refreshes,
refresh_errors,warm_loaded,warm_errors}_total`` and the gauges
``zixir_cache_entries`` and ``zixir_cache_bytes``, labelled ``cache``, read
from the live caches when the observability registry is scraped.
"""

from __future__ import annotations

from zixir_actors.cache._actor import CACHES, CacheActor, child_spec
from zixir_actors.cache._cache import Cache
from zixir_actors.cache._catalog import StoredCache, stored_caches
from zixir_actors.cache._options import DEFAULT_SYNC_INTERVAL, DEFAULT_TIMEOUT, CacheStats
from zixir_actors.cache._table_api import Table
from zixir_actors.cache._tables import DEFAULT_KEY_FIELD
from zixir_actors.cache._warm import DEFAULT_WARM_CONCURRENCY, WarmProgress, WarmReport

__all__ = [
    "CACHES",
    "DEFAULT_KEY_FIELD",
    "DEFAULT_SYNC_INTERVAL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WARM_CONCURRENCY",
    "Cache",
    "CacheActor",
    "CacheStats",
    "StoredCache",
    "Table",
    "WarmProgress",
    "WarmReport",
    "child_spec",
    "stored_caches",
]
